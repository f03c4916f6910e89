"""``rfdeploy export --tune``: each searched layer's exact lowerings timed alone, the fastest kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_bench import MODULE, SHAPE, searched_files, tiny_module
from test_tensorrt import has_tensorrt

from rfdeploy import api, cli
from rfdeploy.compiler.pipeline import compile_model, searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.measure.verify import random_inputs, reference_outputs
from rfdeploy.tuning.tune import candidates, layer_input_shapes, parse_target, tune_lowerings


@pytest.fixture(scope="module")
def searched_tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tune")
    checkpoint, structure = searched_files(directory)
    loaded = api.load(tiny_module(directory).build(), checkpoint, structure)
    return loaded, directory, checkpoint, structure


def test_layer_inputs_are_captured_at_their_real_shapes(searched_tiny):
    loaded, *_ = searched_tiny
    assert layer_input_shapes(loaded.searched, [SHAPE]) == {"dense": (1, 8, 16, 16), "depthwise": (1, 16, 8, 8)}
    # the hooks are gone afterwards
    assert all(not layer._forward_pre_hooks for _, layer in searched_layers(loaded.searched))


def test_candidates_are_the_distinct_exact_lowerings(searched_tiny):
    loaded, *_ = searched_tiny
    layer = dict(searched_layers(loaded.searched))["depthwise"]
    options = candidates("depthwise", layer)
    assert set(options) == {"single", "multi"}
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        for module in options.values():
            assert torch.allclose(module(x), layer(x), atol=1e-5)
    relu = SearchedConv(torch.randn(4, 4, 3), None, torch.ones(3), [(1,), (2,), (3,)], [(1,), (2,), (3,)], (1,), 1,
                        branch_relu=True)
    assert set(candidates("relu", relu)) == {"multi"}  # a ReLU per branch: nothing to merge, nothing to time


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_tuning_keeps_the_fastest_lowering_of_each_layer(searched_tiny, backend):
    loaded, *_ = searched_tiny
    result = tune_lowerings(loaded.searched, [SHAPE], backend, warmup=1, iters=5, threads=1, sessions=2)
    assert [layer.name for layer in result.layers] == ["dense", "depthwise"]
    for layer in result.layers:
        assert set(layer.median_ms) == {"single", "multi", "searched"}
        assert all(value > 0 for value in layer.median_ms.values())
        assert layer.median_ms == {label: min(values) for label, values in layer.session_medians_ms.items()}
        assert all(len(values) == 2 for values in layer.session_medians_ms.values())
        assert set(layer.ratio_to_searched) == {"single", "multi"}
        fastest = min(("single", "multi"), key=layer.median_ms.__getitem__)
        # fp32: both exact, so the clearly faster, else (tied within the spread of the rounds) the simpler
        assert (layer.chosen, layer.decided_by) in ((fastest, "speed"), ("single", "simplicity"))
        assert set(layer.spread_ms) == {"single", "multi"}
    assert result.choices == {layer.name: layer.chosen for layer in result.layers}
    assert result.backend == backend and result.device == "cpu" and result.threads == 1
    data = json.loads(json.dumps(result.to_json()))
    assert data["layers"][0]["input_shape"] == [1, 8, 16, 16]

    compiled = compile_model(loaded.searched, choices=result.choices)
    assert {row.name: row.lowering for row in compiled.layers} == result.choices
    inputs = random_inputs([SHAPE], 0)
    with torch.no_grad():
        got = compiled.model(*inputs).numpy()
    assert np.abs(got - reference_outputs(loaded.searched, inputs)[0]).max() < 1e-4


def test_tune_targets_are_checked():
    assert parse_target("onnxruntime") == ("onnxruntime", "cpu")
    assert parse_target("torch:cpu") == ("torch", "cpu")
    with pytest.raises(RFDeployError, match="unknown backend 'tvm'"):
        parse_target("tvm")
    with pytest.raises(RFDeployError, match="--tune torch-compile: not supported: .* tune on torch"):
        parse_target("torch-compile")
    if not torch.cuda.is_available():
        with pytest.raises(RFDeployError, match="--tune torch:cuda: it runs on a CUDA GPU, and PyTorch sees none"):
            parse_target("torch:cuda")
    with pytest.raises(RFDeployError, match=r"^--tune tensorrt:cpu: the tensorrt backend runs on cuda only: give "
                                            r"--tune tensorrt:cuda$"):
        parse_target("tensorrt:cpu")
    with pytest.raises(RFDeployError, match="--tune onnxruntime:tpu: the onnxruntime backend runs on cpu, cuda only"):
        parse_target("onnxruntime:tpu")
    if not has_tensorrt():  # the missing package is named first, as `rfdeploy build` names it
        with pytest.raises(RFDeployError, match="--tune tensorrt: TensorRT is not installed"):
            parse_target("tensorrt")


def test_export_tune_records_the_timings_in_the_report(searched_tiny, tmp_path, monkeypatch):
    _, directory, checkpoint, structure = searched_tiny
    monkeypatch.chdir(directory)
    out = tmp_path / "out"
    assert cli.main(["export", "--model", f"{MODULE}:build", "--ckpt", str(checkpoint), "--structure",
                     str(structure), "--input-shape", "1,3,16,16", "--out", str(out), "--tune", "onnxruntime"]) == 0
    report = json.loads((out / "report.json").read_text())
    tuning = report["tuning"]
    assert tuning["backend"] == "onnxruntime" and len(tuning["layers"]) == 2
    assert {row["name"]: row["lowering"] for row in report["layers"]} == \
        {row["name"]: row["chosen"] for row in tuning["layers"]}
    assert report["verification"]["passed"]


def test_export_tune_reports_progress_per_layer(searched_tiny, tmp_path):
    loaded, *_ = searched_tiny
    steps: list[str] = []
    result = api.export(loaded.searched, input_shapes=[SHAPE], out=tmp_path, write=False, tune="onnxruntime",
                        progress=steps.append)
    tuned = [step for step in steps if step.startswith("tuned ")]
    assert len(tuned) == 2
    assert [step.split()[1].rstrip(":") for step in tuned] == [row["name"] for row in result.report["tuning"]["layers"]]


def test_export_tune_with_an_unknown_backend_fails_in_one_line(searched_tiny, tmp_path, capsys, monkeypatch):
    _, directory, checkpoint, structure = searched_tiny
    monkeypatch.chdir(directory)
    assert cli.main(["export", "--model", f"{MODULE}:build", "--ckpt", str(checkpoint), "--structure",
                     str(structure), "--input-shape", "1,3,16,16", "--out", str(tmp_path / "o"), "--tune", "tvm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("rfdeploy: error: --tune: unknown backend 'tvm' (known: torch, torch-compile, "
                       "onnxruntime, openvino, onnxruntime-trt, tensorrt)")
    assert not (tmp_path / "o").exists()
