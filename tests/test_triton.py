"""Triton model repositories: configs parsed with Triton's own schema and held against the ONNX graph, versions,
refusals that leave the repository as it was, and a real ``tritonserver`` (nvidia-pytriton's) reading them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_util import MODEL, Files, assert_one_line_error, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import rfdeploy
from rfdeploy import cli
from rfdeploy.backends.tensorrt import (
    Setup,
    make_sidecar,
    onnx_inputs,
    parse_named_shape,
    resolve_profile,
    sidecar_path,
)
from rfdeploy.errors import RFDeployError
from rfdeploy.serve import triton

tritonclient = pytest.importorskip("tritonclient", reason="pip install 'rfdeploy[dev]' (tritonclient)")


def model_config_pb2():
    """Triton's ``ModelConfig`` schema as tritonclient ships it, loaded from its file: the package around it
    would import grpc, which reading a config does not need."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCHEMA = model_config_pb2()
SERVED_NAME = "rfdeploy_cli_tiny_net_build"  # the tiny model's name (MODEL) as a Triton model name


def parse(config: str):
    from google.protobuf import text_format

    return text_format.Parse(config, SCHEMA.ModelConfig())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Files:
    """The tiny searched model exported through the CLI with a dynamic batch, a static one, and dynamic
    batch and spatial dims."""
    files = Files(tmp_path_factory.mktemp("triton"))
    sys.path.insert(0, str(files.root))
    try:
        for out, extra in (("dynamic", ["--dynamic-batch"]), ("static", []), ("shapes", ["--dynamic-shape"])):
            files.out = files.root / out
            assert cli.main(files.args() + extra) == 0
    finally:
        sys.path.remove(str(files.root))
    return files


@pytest.fixture
def in_root(exported, monkeypatch) -> Files:
    monkeypatch.syspath_prepend(str(exported.root))
    return exported


# ---------------------------------------------------------------- the config against the ONNX graph

def assert_config_matches_graph(config, onnx_path: Path, batched: bool) -> None:
    """Names, types and dims as onnxruntime reads the graph; symbolic dims -1; the batch dim left out when
    Triton batches."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [tensor.name for tensor in declared] == [arg.name for arg in actual]
        for tensor, arg in zip(declared, actual):
            assert SCHEMA.DataType.Name(tensor.data_type) == "TYPE_FP32" and arg.type == "tensor(float)"
            dims = [d if isinstance(d, int) else -1 for d in arg.shape]
            assert list(tensor.dims) == (dims[1:] if batched else dims)


def test_export_with_a_dynamic_batch_writes_a_batching_onnxruntime_model(in_root, tmp_path):
    repo = tmp_path / "repo"
    args = in_root.args() + ["--dynamic-batch", "--out", str(tmp_path / "out"), "--triton", str(repo),
                             "--triton-name", "tiny", "--max-batch", "4", "--instances", "2"]
    assert cli.main(args) == 0
    version = repo / "tiny" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert version.stat().st_mode & 0o777 == 0o777 & ~umask  # Triton may run as another user
    assert (version / "model.onnx").read_bytes() == (tmp_path / "out" / "model.onnx").read_bytes()
    config = parse((repo / "tiny" / "config.pbtxt").read_text())
    assert (config.name, config.platform, config.max_batch_size) == ("tiny", "onnxruntime_onnx", 4)
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    (group,) = config.instance_group
    assert (group.count, SCHEMA.ModelInstanceGroup.Kind.Name(group.kind)) == (2, "KIND_CPU")
    assert config.parameters["inter_op_thread_count"].string_value == "1"
    assert_config_matches_graph(config, version / "model.onnx", batched=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())["triton"]
    assert report["repository"] == str(repo) and report["version"] == 1
    assert report["config"] == (repo / "tiny" / "config.pbtxt").read_text()


def test_static_batch_gives_max_batch_size_0_with_full_dims(exported, tmp_path):
    model = exported.root / "static" / "model.onnx"
    assert cli.main(["triton", str(model), "--repo", str(tmp_path), "--threads", "3"]) == 0
    config = parse((tmp_path / SERVED_NAME / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and config.WhichOneof("scheduling_choice") is None
    assert config.parameters["intra_op_thread_count"].string_value == "3"
    assert_config_matches_graph(config, model, batched=False)
    assert (tmp_path / SERVED_NAME / "1" / "model.onnx").read_bytes() == model.read_bytes()


def test_symbolic_spatial_dims_are_minus_one(exported, tmp_path):
    model = exported.root / "shapes" / "model.onnx"
    assert cli.main(["triton", str(model), "--repo", str(tmp_path)]) == 0
    config = parse((tmp_path / SERVED_NAME / "config.pbtxt").read_text())
    assert config.max_batch_size == triton.DEFAULT_MAX_BATCH
    assert list(config.input[0].dims) == [3, -1, -1]
    assert_config_matches_graph(config, model, batched=True)


def test_threads_found_best_by_tuning_on_onnxruntime_go_into_the_config(in_root, tmp_path):
    args = in_root.args() + ["--out", str(tmp_path / "out"), "--tune", "onnxruntime", "--triton", str(tmp_path)]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (config_path,) = tmp_path.glob("*/config.pbtxt")
    config = parse(config_path.read_text())
    assert config.parameters["intra_op_thread_count"].string_value == str(report["tuning"]["threads"])


def test_default_name_is_the_model_name_made_valid(in_root, tmp_path):
    assert cli.main(in_root.args() + ["--out", str(tmp_path / "out"), "--triton", str(tmp_path)]) == 0
    assert (tmp_path / MODEL.replace(":", "_") / "config.pbtxt").is_file()


@pytest.mark.parametrize(("model", "expected"), [
    ("resnet50", "resnet50"), ("nets/mynet.py:build", "mynet_build"), ("mypkg.nets:build", "mypkg.nets_build")])
def test_default_names_come_from_the_model_not_its_file_path(model, expected):
    assert triton.default_name(model) == expected


def test_triton_on_an_export_names_the_model_after_its_report_and_says_so(exported, tmp_path, capsys):
    """Not 'model' after the file: every export's file is model.onnx, so every second one was refused."""
    for out, repo_name in (("dynamic", "a"), ("static", "b")):
        code, err = run_main(["triton", str(exported.root / out / "model.onnx"), "--repo", str(tmp_path / repo_name)],
                             capsys)
        assert code == 0, err
        assert (tmp_path / repo_name / SERVED_NAME / "config.pbtxt").is_file()
        assert f"'{SERVED_NAME}'" in err and "report.json" in err


ONNX_TYPES = [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
              TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8, TensorProto.UINT16,
              TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL]
DIM = st.one_of(st.integers(1, 64), st.sampled_from(["batch", "height", "width"]), st.none())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ONNX_TYPES), st.lists(DIM, min_size=1, max_size=4)),
                min_size=1, max_size=3),
       st.booleans(), st.integers(0, 16))
def test_any_signature_round_trips_through_tritons_schema(tensors, batch_first, max_batch):
    """Identity graphs of any types and dims: the config names each tensor, maps its type as tritonclient maps
    the numpy type, and gives its dims (-1 where symbolic), without the batch dim where Triton batches."""
    from tritonclient.utils import np_to_triton_dtype

    graph_inputs, graph_outputs, nodes = [], [], []
    for index, (elem_type, dims) in enumerate(tensors):
        shape = [("batch" if batch_first else 1), *dims]
        graph_inputs.append(helper.make_tensor_value_info(f"in{index}", elem_type, shape))
        graph_outputs.append(helper.make_tensor_value_info(f"out{index}", elem_type, shape))
        nodes.append(helper.make_node("Identity", [f"in{index}"], [f"out{index}"]))
    model = helper.make_model(helper.make_graph(nodes, "g", graph_inputs, graph_outputs))
    served = triton.served_onnx(model.SerializeToString(), "g.onnx")
    request = triton.TritonRequest(Path("."), "g", max_batch)
    if not batch_first and max_batch:
        with pytest.raises(RFDeployError, match="static batch"):
            triton.model_config(request, served)
        return
    config = parse(triton.model_config(request, served))
    batched = batch_first and max_batch > 0
    assert config.max_batch_size == (max_batch if batch_first else 0)
    for declared, values in ((config.input, graph_inputs), (config.output, graph_outputs)):
        for tensor, value in zip(declared, values, strict=True):
            elem_type = value.type.tensor_type.elem_type
            assert tensor.name == value.name
            expected_type = np_to_triton_dtype(helper.tensor_dtype_to_np_dtype(elem_type))
            assert SCHEMA.DataType.Name(tensor.data_type) == f"TYPE_{expected_type}"
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            assert list(tensor.dims) == (dims[1:] if batched else dims)


# ---------------------------------------------------------------- versions

def test_a_second_export_adds_a_version_and_keeps_the_first(exported, tmp_path):
    model = exported.root / "dynamic" / "model.onnx"
    command = ["triton", str(model), "--repo", str(tmp_path), "--name", "tiny"]
    assert cli.main(command) == 0
    first = snapshot(tmp_path)
    assert cli.main(command + ["--instances", "3"]) == 0
    after = snapshot(tmp_path)
    assert after["tiny/1/model.onnx"] == first["tiny/1/model.onnx"] == after["tiny/2/model.onnx"]
    assert parse(after["tiny/config.pbtxt"].decode()).instance_group[0].count == 3


# ---------------------------------------------------------------- TensorRT engines

def fake_engine(folder: Path, onnx_path: Path, max_batch: int = 4) -> Path:
    """Engine bytes with a real sidecar: the repository copies the engine, it never deserializes it."""
    low, high = parse_named_shape("1x3x12x12"), parse_named_shape(f"{max_batch}x3x12x12")
    profiles = resolve_profile(onnx_inputs(onnx.load(str(onnx_path))), [low], [low], [high])
    sidecar = make_sidecar(Setup("10.0", "Test GPU"), "fp32", 64, profiles, onnx_path.read_bytes())
    engine = folder / "model.engine"
    engine.write_bytes(b"not really an engine " + hashlib.sha256(onnx_path.read_bytes()).digest())
    sidecar_path(engine).write_text(json.dumps(sidecar.to_json()))
    (folder / "model.onnx").write_bytes(onnx_path.read_bytes())
    return engine


def test_an_engine_goes_in_as_a_plan_with_its_sidecar_limited_to_its_profile(exported, tmp_path):
    engine = fake_engine(tmp_path, exported.root / "dynamic" / "model.onnx", max_batch=4)
    repo = tmp_path / "repo"
    assert cli.main(["triton", str(engine), "--repo", str(repo)]) == 0
    version = repo / "model" / "1"
    assert (version / "model.plan").read_bytes() == engine.read_bytes()
    assert (version / "model.plan.json").read_bytes() == sidecar_path(engine).read_bytes()
    config = parse((repo / "model" / "config.pbtxt").read_text())
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 4)
    assert SCHEMA.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert not config.parameters  # onnxruntime's thread settings only for onnxruntime
    assert_config_matches_graph(config, engine.with_suffix(".onnx"), batched=True)


@pytest.mark.parametrize("extra, message", [
    (["--kind", "cpu"], "--kind cpu"),
    (["--max-batch", "5"], "up to 4"),
])
def test_engine_options_it_cannot_serve_are_refused(exported, tmp_path, capsys, extra, message):
    engine = fake_engine(tmp_path, exported.root / "dynamic" / "model.onnx", max_batch=4)
    code, err = run_main(["triton", str(engine), "--repo", str(tmp_path / "repo"), *extra], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "repo").exists()


def test_an_engine_with_another_onnx_model_is_refused(exported, tmp_path, capsys):
    engine = fake_engine(tmp_path, exported.root / "dynamic" / "model.onnx")
    other = exported.root / "static" / "model.onnx"
    code, err = run_main(["triton", str(engine), "--onnx", str(other), "--repo", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, str(other), "not built from this ONNX model")


# ---------------------------------------------------------------- bad input: one line, nothing half-written

def test_a_different_model_under_the_same_name_is_refused(exported, tmp_path, capsys):
    assert cli.main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(tmp_path),
                              "--name", "tiny"]) == 0
    before, _ = snapshot(tmp_path), capsys.readouterr()
    code, err = run_main(["triton", str(exported.root / "static" / "model.onnx"), "--repo", str(tmp_path),
                          "--name", "tiny"], capsys)
    assert_one_line_error(code, err, str(tmp_path / "tiny" / "config.pbtxt"), "different model")
    assert snapshot(tmp_path) == before


def test_a_folder_that_is_no_triton_model_is_refused(exported, tmp_path, capsys):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    code, err = run_main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(tmp_path),
                          "--name", "tiny"], capsys)
    assert_one_line_error(code, err, "not a Triton model folder")
    assert snapshot(tmp_path) == {"tiny/notes.txt": b"mine"}


def test_a_repository_that_cannot_be_written_is_refused(exported, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, err = run_main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo",
                          str(blocker / "repo")], capsys)
    assert_one_line_error(code, err, str(blocker), "not a folder")
    assert snapshot(tmp_path) == {"file": b"a file, not a folder"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_repository_is_refused(exported, tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir(mode=0o555)
    try:
        code, err = run_main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(repo)], capsys)
    finally:
        repo.chmod(0o755)
    assert_one_line_error(code, err, str(repo), "cannot write")
    assert not any(repo.iterdir())


def test_a_failed_write_leaves_nothing_behind(exported, tmp_path):
    """A model folder removed by the time its version is written: the error names the repository and no
    staging folder or version is left."""
    served = triton.served_onnx((exported.root / "dynamic" / "model.onnx").read_bytes(), "model.onnx")
    plan = triton.plan_repository(triton.TritonRequest(tmp_path, "tiny"), served)
    plan.files["sub/model.onnx"] = b"a name write_all cannot create"
    with pytest.raises(RFDeployError, match=re.escape(str(tmp_path))):
        triton.write_repository(plan)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["a b", ".hidden", "-x", "a/b", "..", "tiny:1", ""])
def test_names_triton_would_reject_are_refused_before_the_export(in_root, tmp_path, capsys, name):
    out = tmp_path / "out"
    code, err = run_main(in_root.args() + ["--out", str(out), "--triton", str(tmp_path / "repo"),
                                           f"--triton-name={name}"], capsys)
    assert_one_line_error(code, err, f"'{name}'")
    assert not out.exists() and not (tmp_path / "repo").exists()


@pytest.mark.parametrize("extra, message", [
    (["--max-batch", "4"], "--max-batch needs --triton"),
    (["--triton", "r", "--max-batch", "4"], "static batch"),
    (["--triton", "r", "--instances", "0"], "--instances"),
])
def test_bad_triton_options_of_export_are_one_line_errors(in_root, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, err = run_main(in_root.args() + ["--out", str(out), *extra], capsys)
    assert_one_line_error(code, err, message)
    assert not out.exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- hostile models and options (issue 23)

def renamed_input(onnx_path: Path, name: str, folder: Path) -> Path:
    model = onnx.load(str(onnx_path))
    old = model.graph.input[0].name
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if value == old else value for value in node.input]
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


INJECTION = 'in" data_type: TYPE_FP32 dims: [1] } input { name: "x'
GROUP_INJECTION = 'in" dims: [1] } instance_group { count: 64 kind: KIND_GPU } input { name: "x'


@pytest.mark.parametrize("name", [INJECTION, GROUP_INJECTION, "ends in a backslash\\", 'a "quoted" name'])
def test_tensor_names_cannot_inject_into_the_config(exported, tmp_path, name):
    path = renamed_input(exported.root / "static" / "model.onnx", name, tmp_path)
    code = cli.main(["triton", str(path), "--repo", str(tmp_path / "repo"), "--name", "tiny"])
    if code == 0:  # served: the config has exactly the graph's one input, under its real name
        config = parse((tmp_path / "repo" / "tiny" / "config.pbtxt").read_text())
        assert [tensor.name for tensor in config.input] == [name]
        assert [group.count for group in config.instance_group] == [1]
    else:
        assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["", "line\nbreak", "tab\there"])
def test_tensor_names_triton_cannot_serve_are_refused(exported, tmp_path, capsys, name):
    path = renamed_input(exported.root / "static" / "model.onnx", name, tmp_path)
    code, err = run_main(["triton", str(path), "--repo", str(tmp_path / "repo"), "--name", "tiny"], capsys)
    assert_one_line_error(code, err, str(path))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("option", ["--max-batch", "--instances"])
def test_counts_beyond_tritons_schema_are_refused(exported, tmp_path, capsys, option):
    code, err = run_main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(tmp_path / "repo"),
                          option, str(10**20)], capsys)
    assert_one_line_error(code, err, option)
    assert not (tmp_path / "repo").exists()


def test_a_name_too_long_for_a_folder_leaves_no_repository_behind(exported, tmp_path, capsys):
    code, err = run_main(["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(tmp_path / "repo"),
                          "--name", "n" * 300], capsys)
    assert_one_line_error(code, err, "at most 255")
    assert not (tmp_path / "repo").exists()


def test_a_corrupt_onnx_model_is_one_line(exported, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes((exported.root / "static" / "model.onnx").read_bytes()[:-50] + b"\xff" * 7)
    code, err = run_main(["triton", str(path), "--repo", str(tmp_path / "repo")], capsys)
    assert_one_line_error(code, err, str(path))
    assert not (tmp_path / "repo").exists()


def test_a_model_path_that_is_a_fifo_is_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    code, err = run_main(["triton", str(fifo), "--repo", str(tmp_path / "repo")], capsys)
    assert_one_line_error(code, err, str(fifo), "not a regular file")


def test_a_version_folder_with_a_non_ascii_digit_is_not_a_version(exported, tmp_path):
    command = ["triton", str(exported.root / "dynamic" / "model.onnx"), "--repo", str(tmp_path), "--name", "tiny"]
    assert cli.main(command) == 0
    (tmp_path / "tiny" / "\u00b2").mkdir()  # '²'.isdigit() is True, int('²') fails
    assert cli.main(command) == 0
    assert (tmp_path / "tiny" / "2" / "model.onnx").is_file()


# ---------------------------------------------------------------- a real Triton server (nvidia-pytriton's)

def pytriton_server() -> Path | None:
    """The folder of the ``tritonserver`` that nvidia-pytriton ships, found without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").is_file() else None


SERVER = pytriton_server()
needs_server = pytest.mark.skipif(SERVER is None, reason="no tritonserver: pip install nvidia-pytriton --no-deps")
WAIT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``tritonserver`` on loopback ports in its own process group, killed with all its children."""

    def __init__(self, repo: Path, backends: Path, log: Path, env: dict[str, str] | None = None):
        assert SERVER is not None
        self.http_port, self.log = free_port(), log
        command = [str(SERVER / "bin" / "tritonserver"), f"--model-repository={repo}",
                   f"--backend-directory={backends}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                   f"--http-port={self.http_port}", f"--grpc-port={free_port()}", "--allow-metrics=false"]
        with log.open("wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def start_server(request):
    def start(*args, **kwargs) -> Server:
        server = Server(*args, **kwargs)
        request.addfinalizer(server.stop)
        return server
    return start


@needs_server
def test_tritonserver_parses_every_config_only_the_backends_are_missing(exported, tmp_path, start_server):
    """nvidia-pytriton's server has only the Python backend: each model may fail to load for its missing
    onnxruntime / TensorRT backend library, and for nothing else (a config it cannot parse is another error)."""
    repo = tmp_path / "repo"
    for flavour in ("dynamic", "static", "shapes"):
        model = exported.root / flavour / "model.onnx"
        assert cli.main(["triton", str(model), "--repo", str(repo), "--name", flavour]) == 0
    engine = fake_engine(tmp_path, exported.root / "dynamic" / "model.onnx")
    assert cli.main(["triton", str(engine), "--repo", str(repo), "--name", "engine"]) == 0
    server = start_server(repo, SERVER / "backends", tmp_path / "server.log")
    server.process.wait(WAIT_S)  # it exits by itself: not every model loaded
    log = server.output()
    failures = dict(re.findall(r"failed to load '([^']+)' version 1: (.*)", log))
    assert set(failures) == {"dynamic", "static", "shapes", "engine"}, log
    for name, reason in failures.items():
        backend = "tensorrt" if name == "engine" else "onnxruntime"
        assert f"unable to find backend library for backend '{backend}'" in reason, log
    assert "Poll failed" not in log and "failed to read text proto" not in log, log


PYTHON_MODEL = '''
import sys
sys.path[:0] = {paths!r}

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """The exported model.onnx in onnxruntime. Tensors cross by DLPack: the stub's numpy C API is numpy 1's."""

    def initialize(self, args):
        folder = f"{{args['model_repository']}}/{{args['model_version']}}"
        self.session = onnxruntime.InferenceSession(f"{{folder}}/model.onnx", providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {{i.name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, i.name))
                     for i in self.session.get_inputs()}}
            outputs = self.session.run(None, feeds)
            tensors = [pb_utils.Tensor.from_dlpack(o.name, np.ascontiguousarray(value))
                       for o, value in zip(self.session.get_outputs(), outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def python_backend(folder: Path) -> tuple[Path, dict[str, str]]:
    """nvidia-pytriton's Python backend with the stub for this interpreter, and where the stub finds libpython."""
    assert SERVER is not None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = SERVER / "python_backend_stubs" / version / "triton_python_backend_stub"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if not stub.is_file() or not list(Path(libdir).glob(f"libpython{version}*.so*")):
        pytest.skip(f"no Python backend stub for Python {version} or no shared libpython{version} in {libdir}")
    backend = folder / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / name).symlink_to(SERVER / "backends" / "python" / name)
    (backend / stub.name).symlink_to(stub)  # a link: the stub finds its libraries relative to its real path
    return folder, {"LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}


@needs_server
def test_triton_serves_the_exported_model_at_two_batch_sizes(in_root, tmp_path, start_server):
    """rfdeploy's config and model.onnx, run by Triton's Python backend in onnxruntime (the config's platform
    swapped for that backend), queried with tritonclient: the answers are the searched model's."""
    from tritonclient import http

    repo = tmp_path / "repo"
    args = in_root.args() + ["--dynamic-batch", "--out", str(tmp_path / "out"), "--triton", str(repo),
                             "--triton-name", "tiny"]
    assert cli.main(args) == 0
    config = (repo / "tiny" / "config.pbtxt").read_text()
    served = tmp_path / "served" / "tiny"
    (served / "1").mkdir(parents=True)
    (served / "config.pbtxt").write_text(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    (served / "1" / "model.onnx").write_bytes((repo / "tiny" / "1" / "model.onnx").read_bytes())
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    (served / "1" / "model.py").write_text(PYTHON_MODEL.format(paths=paths))
    backends, env = python_backend(tmp_path / "backends")
    server = start_server(served.parent, backends, tmp_path / "server.log", env)

    client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    deadline = time.monotonic() + WAIT_S
    while not _ready(client, "tiny"):
        assert server.process.poll() is None, server.output()
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.5)
    searched = rfdeploy.load(MODEL, in_root.ckpt, in_root.structure).searched
    for batch in (1, 3):
        x = torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(batch))
        request = http.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x.numpy())
        answer = client.infer("tiny", [request]).as_numpy("output")
        with torch.no_grad():
            expected = searched(x).numpy()
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, atol=1e-4, rtol=1e-4)


def _ready(client, name: str) -> bool:
    try:
        return bool(client.is_model_ready(name))
    except Exception:  # noqa: BLE001  # not listening yet
        return False


@pytest.mark.parametrize("made_for", [["--target", "openvino"], ["--verify-backends", "openvino"]])
def test_an_int8_model_made_for_openvino_is_not_served_on_tritons_onnxruntime(in_root, tmp_path, capsys, made_for):
    out, repo = tmp_path / "out", tmp_path / "repo"
    code, err = run_main(in_root.args() + ["--out", str(out), "--triton", str(repo), "--precision", "int8",
                                           "--calib", "random", *made_for], capsys)
    assert_one_line_error(code, err, "--triton", "openvino", "--target onnxruntime")
    assert not out.exists() and not repo.exists()


def test_an_int8_model_made_for_onnxruntime_is_served(in_root, tmp_path, capsys):
    out, repo = tmp_path / "out", tmp_path / "repo"
    code, err = run_main(in_root.args() + ["--out", str(out), "--triton", str(repo), "--precision", "int8",
                                           "--calib", "random", "--target", "onnxruntime"], capsys)
    assert code == 0, err
    served = next(repo.glob("*/1/model.onnx")).read_bytes()
    assert served == (out / "model.int8.onnx").read_bytes()


def test_the_triton_command_refuses_an_int8_model_its_report_says_is_made_for_openvino(in_root, tmp_path, capsys):
    out, repo = tmp_path / "out", tmp_path / "repo"
    code, err = run_main(in_root.args() + ["--out", str(out), "--precision", "int8", "--calib", "random",
                                           "--target", "openvino"], capsys)
    assert code == 0, err
    model = out / "model.int8.onnx"
    code, err = run_main(["triton", str(model), "--repo", str(repo)], capsys)
    assert_one_line_error(code, err, str(model), "zero-point-free", "--target onnxruntime")
    assert not repo.exists()
    code, err = run_main(["triton", str(out / "model.onnx"), "--repo", str(repo)], capsys)  # its fp32 model
    assert code == 0, err
