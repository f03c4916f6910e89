"""``rfdeploy bench``: timing statistics, interleaving, and searched vs compiled on real backends.

The searched model is a real mmcv-lite ``RFSearchHook`` (fixed_multi_branch) model with random branch
weights, saved as a checkpoint and loaded back by rfdeploy.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook

from rfdeploy import api, cli
from rfdeploy.backends import check_backends, make_runner, parse_backends
from rfdeploy.compiler.pipeline import searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.measure.timing import device_name, summarize, time_interleaved, torch_settings
from rfdeploy.measure.verify import random_inputs, reference_outputs
from rfdeploy.stages.bench import bench, plain_model, randomize_alphas

MODULE = "rfdeploy_bench_tiny_net"  # a module name no other test uses
SHAPE = (1, 3, 16, 16)
SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
          "mmax": 24, "num_branches": 3, "skip_layer": ["stem"]}
STRUCTURE = {"module.dense": [1, 1], "module.depthwise": [2, 2]}  # rates 1,2 / 1,2,3

TINY_NET = textwrap.dedent("""
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.dense = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.depthwise = nn.Conv2d(16, 16, 5, padding=2, groups=16)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            x = torch.relu(self.bn(self.dense(torch.relu(self.stem(x)))))
            return self.head(x + self.depthwise(x))


    def build():
        torch.manual_seed(0)
        return Tiny().eval()
""")


def tiny_module(directory: Path):
    """The tiny net's module, written to ``directory`` (importable as ``rfdeploy_bench_tiny_net:build``)."""
    (directory / f"{MODULE}.py").write_text(TINY_NET)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(MODULE, None)
    import importlib

    return importlib.import_module(MODULE)


def searched_files(directory: Path) -> tuple[Path, Path]:
    """A structure file and the checkpoint of mmcv-lite's fixed_multi_branch model with random alphas."""
    structure = directory / "structure.json"
    structure.write_text(json.dumps({"search": SEARCH, "structure": STRUCTURE}))
    model = tiny_module(directory).build()
    hook = RFSearchHook("fixed_multi_branch", {"search": dict(SEARCH)}, rfstructure_file=str(structure),
                        verbose=False)
    hook.init_model(model)
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, Conv2dRFSearchOp):
            module.branch_weights.data = torch.rand(3, generator=generator) + 0.05
    checkpoint = directory / "searched.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return checkpoint, structure


@pytest.fixture(scope="module")
def searched_tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    checkpoint, structure = searched_files(directory)
    loaded = api.load(tiny_module(directory).build(), checkpoint, structure)
    assert len(searched_layers(loaded.searched)) == 2
    return loaded, directory, checkpoint, structure


# --- statistics and timing ----------------------------------------------------------------------------

def test_percentiles_of_known_samples():
    stats = summarize([float(v) for v in range(1, 101)])  # 1..100 ms
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == 1.0 and stats.iters == 100


def test_interleaving_rotates_the_order_every_round_after_warmup():
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = time_interleaved(runs, warmup=2, iters=3)
    assert calls[:6] == list("abcabc")  # warm-up
    assert calls[6:] == list("abc") + list("bca") + list("cab")
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(v >= 0 for values in samples.values() for v in values)


def test_interleaved_timing_tells_a_slow_run_from_a_fast_one():
    work = np.random.default_rng(0).standard_normal((160, 160))
    samples = time_interleaved({"slow": lambda: [work @ work for _ in range(8)], "fast": lambda: work @ work},
                               warmup=1, iters=7)
    assert summarize(samples["slow"]).p50_ms > summarize(samples["fast"]).p50_ms


def test_device_name_names_the_cpu():
    assert device_name("cpu").strip()


def test_backend_list_is_checked():
    assert parse_backends("torch, onnxruntime,torch") == ["torch", "onnxruntime"]
    with pytest.raises(RFDeployError, match="unknown backend 'tvm'"):
        parse_backends("torch,tvm")


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-trt"])
def test_gpu_only_backends_ask_for_cuda(backend):
    with pytest.raises(RFDeployError, match=f"the {backend} backend runs on a GPU: give --device cuda"):
        check_backends(["torch", backend], "cpu")


# --- the benchmark ------------------------------------------------------------------------------------

def test_bench_times_searched_and_compiled_on_each_backend_with_errors_against_pytorch(searched_tiny):
    loaded, *_ = searched_tiny
    report = bench(loaded.searched, [SHAPE], ["torch", "onnxruntime"], warmup=1, iters=4, threads=1,
                   model_name="tiny")
    rows = {(r.backend, r.variant): r for r in report.results}
    assert set(rows) == {(b, v) for b in ("torch", "onnxruntime") for v in ("searched", "compiled")}
    assert rows[("torch", "searched")].max_abs_err == 0.0  # the reference itself
    for row in rows.values():
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.throughput == pytest.approx(1e3 / row.p50_ms)
        assert row.max_abs_err < 1e-4 and row.max_rel_err < 1e-4
        assert row.iters == 4
    assert set(report.speedups()) == {"torch", "onnxruntime"}
    speedup = rows[("onnxruntime", "searched")].p50_ms / rows[("onnxruntime", "compiled")].p50_ms
    assert report.speedups()["onnxruntime"] == pytest.approx(speedup)
    assert report.device_name and report.threads == 1
    assert set(report.compile["lowerings"]) == {"dense", "depthwise"}
    json.dumps(report.to_json())


def test_torch_compile_backend_runs_both_variants_through_inductor(searched_tiny):
    from torch._dynamo.utils import counters

    loaded, *_ = searched_tiny
    graphs_before = counters["stats"]["unique_graphs"]
    report = bench(loaded.searched, [SHAPE], ["torch-compile"], warmup=1, iters=3, threads=1)
    assert counters["stats"]["unique_graphs"] >= graphs_before + 2  # each variant compiled: not run eagerly
    rows = {r.variant: r for r in report.results}
    assert set(rows) == {"searched", "compiled"} and set(report.speedups()) == {"torch-compile"}
    for row in rows.values():
        assert row.backend == "torch-compile" and row.p50_ms > 0
        assert row.max_abs_err < 1e-4 and row.max_rel_err < 1e-4


def test_naive_onnx_export_of_the_searched_model_keeps_the_alpha_arithmetic(searched_tiny):
    loaded, *_ = searched_tiny
    from rfdeploy.backends.onnx_export import op_counts
    from rfdeploy.compiler.pipeline import compile_model
    from rfdeploy.stages.bench import variants

    chosen = variants(loaded.searched, compile_model(loaded.searched).model)
    example = random_inputs([SHAPE], 0)
    naive, compiled = (op_counts(v.onnx_for(example)) for v in chosen)
    assert naive["Abs"] == 2 and naive["ReduceSum"] == 2 and naive["Conv"] == 1 + 2 + 3 + 1
    assert "Abs" not in compiled and "ReduceSum" not in compiled


def test_plain_reference_keeps_one_branch_per_searched_conv(searched_tiny):
    loaded, *_ = searched_tiny
    plain = plain_model(loaded.searched)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and not searched_layers(plain)
    out = plain(*random_inputs([SHAPE], 0))
    assert out.shape == loaded.searched(*random_inputs([SHAPE], 0)).shape


def test_random_alphas_change_the_searched_function(searched_tiny):
    loaded, *_ = searched_tiny
    import copy

    model = copy.deepcopy(loaded.searched)
    inputs = random_inputs([SHAPE], 0)
    before = reference_outputs(model, inputs)[0]
    assert randomize_alphas(model, seed=5) == 2
    assert np.abs(reference_outputs(model, inputs)[0] - before).max() > 1e-6


def test_timing_settings_keep_fp32_exact_and_are_undone_afterwards():
    cudnn = torch.backends.cudnn
    before = (torch.get_num_threads(), cudnn.allow_tf32, cudnn.benchmark, torch.get_float32_matmul_precision())
    assert cudnn.allow_tf32, "PyTorch's default is TF32 convs: the setting below must change it"
    with torch_settings(1):
        assert torch.get_num_threads() == 1
        assert not cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
    assert (torch.get_num_threads(), cudnn.allow_tf32, cudnn.benchmark,
            torch.get_float32_matmul_precision()) == before


def test_runners_agree_with_pytorch(searched_tiny):
    loaded, *_ = searched_tiny
    inputs = random_inputs([SHAPE], 1)
    expected = reference_outputs(loaded.searched, inputs)[0]
    with torch_settings(1):
        for backend in ("torch", "onnxruntime"):
            runner = make_runner(backend, loaded.searched, inputs)
            runner.load(inputs)
            runner.run()
            assert np.abs(runner.fetch()[0] - expected).max() < 1e-4, backend


def test_verification_against_another_runner_tells_equal_from_different(searched_tiny):
    from rfdeploy.backends.onnx_export import export_onnx
    from rfdeploy.compiler.pipeline import compile_model
    from rfdeploy.measure.verify import verify

    loaded, *_ = searched_tiny
    compiled = compile_model(loaded.searched).model
    onnx_runner = make_runner("onnxruntime", compiled, random_inputs([SHAPE], 0))
    assert verify(onnx_runner, make_runner("torch", loaded.searched, []), [SHAPE]).passed
    with torch.no_grad():
        compiled.head.bias.add_(1e-2)
    changed = make_runner("onnxruntime", compiled, [], onnx_model=export_onnx(compiled, random_inputs([SHAPE], 0)))
    check = verify(changed, make_runner("torch", loaded.searched, []), [SHAPE])
    assert not check.passed and check.max_abs_err == pytest.approx(1e-2, rel=1e-3)


def test_runners_carry_their_name_and_close(searched_tiny):
    loaded, *_ = searched_tiny
    inputs = random_inputs([SHAPE], 0)
    for backend, name in (("torch", "torch"), ("torch-compile", "torch-compile"), ("onnxruntime", "onnxruntime-cpu")):
        with make_runner(backend, loaded.searched, inputs) as runner:
            assert runner.name == name
            if backend != "torch-compile":  # compiling takes seconds; closing is the same code as torch's
                runner.load(inputs)
                runner.run()
        if backend != "torch-compile":
            with pytest.raises(RuntimeError, match=f"the {name} runner is closed"):
                runner.run()


def test_verification_is_reported_under_the_runner_name(searched_tiny):
    from rfdeploy.measure.verify import verify

    loaded, *_ = searched_tiny
    with make_runner("onnxruntime", loaded.searched, random_inputs([SHAPE], 0)) as runner:
        check = verify(runner, loaded.searched, [SHAPE])
    assert check.backend == "onnxruntime-cpu" and check.passed


# --- the command --------------------------------------------------------------------------------------

def test_bench_command_prints_json_results(searched_tiny, capsys, monkeypatch):
    _, directory, checkpoint, structure = searched_tiny
    monkeypatch.chdir(directory)
    code = cli.main(["bench", "--model", f"{MODULE}:build", "--ckpt", str(checkpoint), "--structure",
                     str(structure), "--input-shape", "1,3,16,16", "--backends", "onnxruntime", "--warmup", "1",
                     "--iters", "3", "--threads", "1", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["variant"]) for r in data["results"]] == [("onnxruntime", "searched"),
                                                                        ("onnxruntime", "compiled")]
    for row in data["results"]:
        assert {"p50_ms", "p90_ms", "p99_ms", "throughput", "max_abs_err", "max_rel_err"} <= set(row)
    assert set(data["speedups"]) == {"onnxruntime"}
    assert data["threads"] == 1 and data["device"] == "cpu"


def test_bench_command_table_shows_speedups(searched_tiny, capsys, monkeypatch):
    _, directory, _, structure = searched_tiny
    monkeypatch.chdir(directory)
    code = cli.main(["bench", "--model", f"{MODULE}:build", "--structure", str(structure), "--random-alphas", "1",
                     "--input-shape", "1,3,16,16", "--backends", "torch", "--warmup", "1", "--iters", "2",
                     "--threads", "1", "--with-plain"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # human output goes to stderr, table and footnotes alike
    rows = {line.split("│")[2].strip(): line for line in captured.err.splitlines() if line.startswith("│ torch")}
    assert set(rows) == {"searched", "compiled", "plain"}
    assert "n/a" in rows["plain"] and "n/a" not in rows["compiled"]  # a cost reference: no errors to show
    cells = [cell.strip() for cell in rows["compiled"].split("│")]
    assert cells[-3].endswith("x") and float(cells[-2]) > 0  # the speedup, and the ratio to searched fp32
    assert "(2 searched layer(s)" in captured.err
    assert "plain = each searched conv with only its largest-alpha branch" in captured.err


def test_bench_json_has_no_errors_for_the_plain_cost_reference(searched_tiny, capsys, monkeypatch):
    _, directory, _, structure = searched_tiny
    monkeypatch.chdir(directory)
    assert cli.main(["bench", "--model", f"{MODULE}:build", "--structure", str(structure), "--random-alphas", "1",
                     "--input-shape", "1,3,16,16", "--backends", "torch", "--warmup", "1", "--iters", "1",
                     "--threads", "1", "--with-plain", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["variant"]: row for row in data["results"]}
    assert rows["plain"]["max_abs_err"] is None and rows["plain"]["max_rel_err"] is None
    assert rows["compiled"]["max_abs_err"] < 1e-4
    assert data["searched_layers"] == 2


def test_bench_warns_when_threads_exceed_the_free_cores(searched_tiny, capsys, monkeypatch):
    _, directory, _, structure = searched_tiny
    monkeypatch.chdir(directory)
    usable = len(os.sched_getaffinity(0))
    assert cli.main(["bench", "--model", f"{MODULE}:build", "--structure", str(structure), "--random-alphas", "1",
                     "--input-shape", "1,3,16,16", "--backends", "torch", "--warmup", "1", "--iters", "1",
                     "--threads", str(usable + 1), "--json"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--threads" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"rfdeploy: warning: --threads {usable + 1}, but about ")
    assert f"of the {usable} cores this process may use are free" in warnings[0]


def test_bench_command_refuses_bad_input_in_one_line(searched_tiny, capsys, monkeypatch):
    _, directory, checkpoint, structure = searched_tiny
    monkeypatch.chdir(directory)
    assert cli.main(["bench", "--model", f"{MODULE}:build", "--ckpt", str(checkpoint), "--structure",
                     str(structure), "--random-alphas", "1"]) == 2
    assert "--random-alphas" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["bench", "--model", f"{MODULE}:build", "--ckpt", str(checkpoint), "--structure",
                         str(structure), "--input-shape", "1,3,16,16", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA GPU" in err


# --- CUDA (skipped where there is none) -----------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@needs_cuda
@pytest.mark.gpu
def test_bench_on_cuda_times_with_cuda_events(searched_tiny):
    loaded, *_ = searched_tiny
    backends = ["torch", "torch-compile"] + (["onnxruntime"] if "CUDAExecutionProvider" in ort.get_available_providers()
                                             else [])
    report = bench(loaded.searched, [SHAPE], backends, device="cuda", warmup=2, iters=5)
    assert report.device_name == torch.cuda.get_device_name()
    for row in report.results:  # fp32 without TF32: TF32 alone would miss 1e-4
        assert row.device == "cuda" and row.p50_ms > 0 and row.max_abs_err < 1e-4, (row.backend, row.variant)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="onnxruntime-gpu is installed: its CUDA provider exists")
def test_onnxruntime_on_cuda_without_onnxruntime_gpu_says_how_to_install_it():
    from rfdeploy.backends.onnxruntime_backend import providers

    with pytest.raises(RFDeployError, match=r"pip install 'rfdeploy\[gpu\]'"):
        providers("cuda")


def test_onnxruntime_tensorrt_provider_caches_engines_under_the_user_cache(tmp_path, monkeypatch):
    from rfdeploy.backends.onnxruntime_backend import tensorrt_provider_options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    options = tensorrt_provider_options()
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == str(tmp_path / "rfdeploy" / "onnxruntime-trt")
