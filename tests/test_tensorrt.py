"""TensorRT engines: everything that needs no GPU (profile shapes, sidecars, the install hint, types),
and, where TensorRT and a GPU exist, a real build and run."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rfdeploy import cli
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.backends.tensorrt import (
    InputProfile,
    NamedShape,
    Setup,
    parse_named_shape,
    resolve_profile,
)
from rfdeploy.errors import RFDeployError

REPO = Path(__file__).resolve().parents[1]


def has_tensorrt() -> bool:
    try:
        trt_backend.require_tensorrt()
    except RFDeployError:
        return False
    return True


def tiny_onnx(path: Path, dynamic_batch: bool) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU()).eval()
    path.write_bytes(export_onnx(model, [torch.randn(1, 3, 8, 8)], dynamic_batch=dynamic_batch).SerializeToString())
    return path


# --- optimization profile -----------------------------------------------------------------------------

def test_profile_shapes_parse_with_or_without_a_name():
    assert parse_named_shape("input:1x3x224x224") == NamedShape("input", (1, 3, 224, 224))
    assert parse_named_shape("8,3,32,32") == NamedShape(None, (8, 3, 32, 32))
    assert parse_named_shape("images.0:2x3x4x4") == NamedShape("images.0", (2, 3, 4, 4))
    for bad in ("input:1xax3", "input:", "1,0,3,3"):
        with pytest.raises(RFDeployError):
            parse_named_shape(bad)


def test_profile_of_a_dynamic_batch_onnx_model(tmp_path):
    inputs = trt_backend.onnx_inputs(onnx.load(tiny_onnx(tmp_path / "m.onnx", dynamic_batch=True)))
    assert inputs == {"input": ("batch", 3, 8, 8)}
    profile = resolve_profile(inputs, [parse_named_shape("1x3x8x8")], [parse_named_shape("input:4x3x8x8")],
                              [parse_named_shape("16,3,8,8")])
    assert profile == [InputProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))]
    # --opt-shape alone fixes the profile at that shape
    assert resolve_profile(inputs, [], [parse_named_shape("2x3x8x8")], []) == \
        [InputProfile("input", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))]


def test_export_input_shapes_are_the_default_opt_shapes(tmp_path):
    model = onnx.load(tiny_onnx(tmp_path / "m.onnx", dynamic_batch=True))
    request = trt_backend.with_export_shapes(trt_backend.EngineRequest(), model, [(2, 3, 8, 8)])
    (profile,) = resolve_profile(trt_backend.onnx_inputs(model), request.mins, request.opts, request.maxs)
    assert profile.min == profile.opt == profile.max == (2, 3, 8, 8)
    given = trt_backend.EngineRequest(opts=[parse_named_shape("4x3x8x8")])
    assert trt_backend.with_export_shapes(given, model, [(2, 3, 8, 8)]) == given


def test_a_dynamic_export_profile_spans_the_export_and_its_second_verified_shape(tmp_path):
    model = onnx.load(tiny_onnx(tmp_path / "m.onnx", dynamic_batch=True))
    request = trt_backend.with_export_shapes(trt_backend.EngineRequest(), model, [(2, 3, 8, 8)], [(3, 3, 8, 8)])
    (profile,) = resolve_profile(trt_backend.onnx_inputs(model), request.mins, request.opts, request.maxs)
    assert (profile.min, profile.opt, profile.max) == ((2, 3, 8, 8), (2, 3, 8, 8), (3, 3, 8, 8))
    given = trt_backend.EngineRequest(maxs=[parse_named_shape("16x3x8x8")])
    request = trt_backend.with_export_shapes(given, model, [(2, 3, 8, 8)], [(3, 3, 8, 8)])
    assert request.maxs == given.maxs and request.mins[0].shape == (2, 3, 8, 8)


def test_static_inputs_need_no_profile_flags():
    static = (1, 3, 8, 8)
    assert resolve_profile({"input": static}, [], [], []) == [InputProfile("input", static, static, static)]


@pytest.mark.parametrize("inputs, mins, opts, maxs, message", [
    ({"input": ("batch", 3, 8, 8)}, [], [], [], r"input 'input' has dynamic dims \['batch', 3, 8, 8\]"),
    ({"input": ("batch", 3, 8, 8)}, ["4x3x8x8"], ["2x3x8x8"], [], "need min <= opt <= max"),
    ({"input": ("batch", 3, 8, 8)}, [], ["2x3x9x8"], [], "dim 2 is fixed at 8 in the model, not 9"),
    ({"input": ("batch", 3, 8, 8)}, [], ["2x3x8"], [], "has 3 dims, the model's input has 4"),
    ({"input": (1, 3, 8, 8)}, [], ["image:1x3x8x8"], [], "names input 'image'; the model's inputs are input"),
    ({"a": (1, 3), "b": (1, 3)}, [], ["1x3"], [], "the model has 2 inputs: write profile shapes as NAME:DIMS"),
    ({"input": ("batch", 3)}, [], ["input:1x3", "input:2x3"], [], "--opt-shape given twice for input 'input'"),
])
def test_bad_profiles_are_refused_naming_the_input(inputs, mins, opts, maxs, message):
    parse = lambda texts: [parse_named_shape(t) for t in texts]
    with pytest.raises(RFDeployError, match=message):
        resolve_profile(inputs, parse(mins), parse(opts), parse(maxs))


# --- sidecar ------------------------------------------------------------------------------------------

BUILT_FOR = Setup("10.3.0.26", "NVIDIA A100-SXM4-80GB")


def write_sidecar(engine: Path, setup: Setup = BUILT_FOR) -> trt_backend.Sidecar:
    profile = [InputProfile("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))]
    sidecar = trt_backend.make_sidecar(setup, "fp16", 2048, profile, b"onnx bytes")
    engine.write_bytes(b"not a real engine")
    trt_backend.sidecar_path(engine).write_text(json.dumps(sidecar.to_json()))
    return sidecar


def test_sidecar_records_version_gpu_precision_and_shapes(tmp_path):
    engine = tmp_path / "model.engine"
    write_sidecar(engine)
    assert trt_backend.sidecar_path(engine) == tmp_path / "model.engine.json"
    data = json.loads((tmp_path / "model.engine.json").read_text())
    assert data["tensorrt_version"] == "10.3.0.26" and data["gpu_name"] == "NVIDIA A100-SXM4-80GB"
    assert data["precision"] == "fp16" and data["workspace_mb"] == 2048
    assert data["inputs"] == [{"name": "input", "min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}]
    assert len(data["onnx_sha256"]) == 64
    assert trt_backend.read_sidecar(engine) == trt_backend.Sidecar(**data)


def test_engine_for_the_same_setup_is_accepted(tmp_path):
    engine = tmp_path / "model.engine"
    write_sidecar(engine)
    trt_backend.check_setup(trt_backend.read_sidecar(engine), BUILT_FOR, engine)


@pytest.mark.parametrize("current", [Setup("10.13.0.35", BUILT_FOR.gpu_name), Setup(BUILT_FOR.tensorrt_version,
                                                                                     "NVIDIA H100 80GB HBM3")])
def test_engine_for_another_tensorrt_or_gpu_is_refused_naming_both(tmp_path, current):
    engine = tmp_path / "model.engine"
    write_sidecar(engine)
    with pytest.raises(RFDeployError) as error:
        trt_backend.check_setup(trt_backend.read_sidecar(engine), current, engine)
    message = str(error.value)
    assert "\n" not in message and str(engine) in message and "rebuild it with `rfdeploy build`" in message
    assert "TensorRT 10.3.0.26 for NVIDIA A100-SXM4-80GB" in message
    assert f"TensorRT {current.tensorrt_version} on {current.gpu_name}" in message


def test_missing_or_foreign_sidecar_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(RFDeployError, match="no sidecar model.engine.json next to the engine"):
        trt_backend.read_sidecar(engine)
    trt_backend.sidecar_path(engine).write_text(json.dumps({"something": "else"}))
    with pytest.raises(RFDeployError, match="not an rfdeploy engine sidecar"):
        trt_backend.read_sidecar(engine)


def test_built_engine_files_are_the_engine_and_its_sidecar():
    sidecar = trt_backend.make_sidecar(Setup("10.3.0", "GPU"), "fp32", 64, [], b"onnx")
    files = trt_backend.BuiltEngine(b"plan", sidecar, []).files("model.engine")
    assert files["model.engine"] == b"plan"
    assert json.loads(files["model.engine.json"])["onnx_sha256"] == sidecar.onnx_sha256


def test_default_timing_cache_is_per_tensorrt_version_and_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = trt_backend.default_timing_cache(Setup("10.13.0.35", "NVIDIA H100 80GB HBM3"))
    assert path == tmp_path / "rfdeploy" / "tensorrt" / "timing-trt10.13.0.35-NVIDIA-H100-80GB-HBM3.cache"


# --- without TensorRT ---------------------------------------------------------------------------------

without_tensorrt = pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")


def test_the_backend_imports_without_tensorrt():
    code = textwrap.dedent("""
        import sys
        import rfdeploy.backends.tensorrt, rfdeploy.commands.build, rfdeploy.commands.export
        assert "tensorrt" not in sys.modules, "tensorrt imported eagerly"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@without_tensorrt
def test_missing_tensorrt_says_how_to_install_it():
    with pytest.raises(RFDeployError) as error:
        trt_backend.require_tensorrt()
    assert str(error.value) == INSTALL_LINE


INSTALL_LINE = "TensorRT is not installed: pip install 'rfdeploy[trt]' (it needs an NVIDIA GPU with CUDA)"


@without_tensorrt
def test_build_command_without_tensorrt_fails_in_one_line(tmp_path, capsys):
    onnx_path = tiny_onnx(tmp_path / "m.onnx", dynamic_batch=True)
    assert cli.main(["build", str(onnx_path), "--opt-shape", "input:2x3x8x8"]) == 2
    assert capsys.readouterr().err == f"rfdeploy: error: {INSTALL_LINE}\n"
    assert not (tmp_path / "m.engine").exists()


@without_tensorrt
def test_export_trt_without_tensorrt_fails_before_exporting(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export", "--model", "resnet50", "--out", str(out), "--trt", "--fp16"]) == 2
    assert capsys.readouterr().err == f"rfdeploy: error: {INSTALL_LINE}\n"
    assert not out.exists()


@pytest.mark.parametrize("content", [b"not a protobuf at all \xff\xfe", b""])
def test_build_command_refuses_a_file_that_is_no_onnx_graph_before_any_build(tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    assert cli.main(["build", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rfdeploy: error: cannot read ONNX model '{bad}': ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == [bad]


def test_build_command_names_a_missing_onnx_file(tmp_path, capsys):
    assert cli.main(["build", str(tmp_path / "nope.onnx")]) == 2
    assert capsys.readouterr().err == f"rfdeploy: error: {tmp_path / 'nope.onnx'}: no such ONNX file\n"


# --- types: the TensorRT code checked against tensorrt-stubs ------------------------------------------

def patched_stubs(directory: Path) -> Path:
    """tensorrt-stubs as mypy can read them.

    The package ships ``tensorrt/`` and ``tensorrt_bindings/`` without ``py.typed`` (so mypy skips them)
    and with a few lines that are not valid Python (parameters named ``in``, a required parameter after
    defaulted ones). A copy with those lines fixed goes on MYPYPATH.
    """
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs is not installed")
    bindings = Path(next(iter(spec.submodule_search_locations)))
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(bindings.parent / package, directory / package)
    stub = directory / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"\bin: ", "in_: ", stub.read_text())
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    stub.write_text(text)
    return directory


def test_tensorrt_backend_type_checks_against_tensorrt_stubs(tmp_path):
    pytest.importorskip("mypy", reason="mypy is a dev dependency")
    stubs = patched_stubs(tmp_path / "stubs")
    probe = tmp_path / "probe.py"  # proves the stubs are in effect: an unknown method must be an error
    probe.write_text("import tensorrt as trt\n\ntrt.Builder(trt.Logger()).no_such_method()\n")
    run = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
                          "--cache-dir", str(tmp_path / "cache"), "rfdeploy/backends/tensorrt", str(probe)],
                         cwd=REPO, env={"MYPYPATH": str(stubs), "PATH": ""}, capture_output=True, text=True,
                         check=False)
    ours = [line for line in run.stdout.splitlines() if not line.startswith(str(stubs)) and ": error:" in line]
    assert ours == [f'{probe}:3: error: "Builder" has no attribute "no_such_method"  [attr-defined]'], run.stdout[-2000:]


# --- with TensorRT and a GPU --------------------------------------------------------------------------

needs_tensorrt = pytest.mark.skipif(not (has_tensorrt() and torch.cuda.is_available()),
                                    reason="needs TensorRT and an NVIDIA GPU (pip install 'rfdeploy[trt]')")


@needs_tensorrt
@pytest.mark.gpu
def test_engine_builds_runs_and_is_refused_elsewhere(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx", dynamic_batch=True)
    engine = tmp_path / "m.engine"
    request = trt_backend.EngineRequest(trt_backend.BuildOptions("fp32", 256, tmp_path / "timing.cache"),
                                        [parse_named_shape("1x3x8x8")], [parse_named_shape("2x3x8x8")],
                                        [parse_named_shape("4x3x8x8")])
    built = trt_backend.build_engine(onnx_path, engine, request)
    assert engine.stat().st_size > 0 and (tmp_path / "timing.cache").stat().st_size > 0
    assert built.sidecar.gpu_name == torch.cuda.get_device_name()

    import onnxruntime as ort

    runner = trt_backend.TrtRunner(trt_backend.load_engine_bytes(engine))
    x = torch.randn(3, 3, 8, 8)
    runner.load([x])
    runner.run()
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert np.abs(runner.fetch()[0] - expected[0]).max() < 1e-3

    data = json.loads(trt_backend.sidecar_path(engine).read_text())
    trt_backend.sidecar_path(engine).write_text(json.dumps(data | {"tensorrt_version": "0.0.0"}))
    with pytest.raises(RFDeployError, match="built with TensorRT 0.0.0"):
        trt_backend.load_engine_bytes(engine)


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_trt_verifies_the_engine_against_the_searched_forward(tmp_path, precision):
    from rfdeploy import api
    from rfdeploy.loader.searched_conv import SearchedConv

    torch.manual_seed(0)
    searched = nn.Sequential(SearchedConv(torch.randn(4, 3, 3, 3), torch.randn(4), torch.tensor([0.3, 0.7]),
                                          [(1, 1), (2, 2)], [(1, 1), (2, 2)], (1, 1), 1), nn.ReLU()).eval()
    request = trt_backend.EngineRequest(trt_backend.BuildOptions(precision, 256, tmp_path / "timing.cache"))
    result = api.export(searched, input_shapes=[(1, 3, 16, 16)], out=tmp_path / "out", engine=request)
    check = result.report["tensorrt"]["verification"]
    assert check["passed"] and check["backend"] == f"tensorrt-{precision}" and result.passed
    assert (tmp_path / "out" / "model.engine").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "model.engine.json").read_text())["precision"] == precision
