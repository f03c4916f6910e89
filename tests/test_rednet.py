"""RedNet in the zoo, end to end as its user runs it: names and sizes of d-li14/involution's RedNet, a
classifier's checkpoint recognised, exported exactly without a Gather, analysed, tuned and benchmarked.

Parameter counts are the published classifiers' (RedNet-26/38/50: 9.23M, 12.39M, 15.54M) less the 2048x1000 fc
(2,049,000).
"""

from __future__ import annotations

import json

import pytest
import torch
from involution_reference import involution as reference

from rfdeploy import api, models
from rfdeploy.cli import main
from rfdeploy.compiler.involution_ir import LoweredInvolution
from rfdeploy.compiler.passes.choose_aggregation import CANDIDATES
from rfdeploy.compiler.pipeline import compile_model
from rfdeploy.loader.recognise import zoo_model_of
from rfdeploy.stages.bench import bench
from rfdeploy.tuning.tune import tune_lowerings

PUBLISHED_PARAMETERS = {"rednet26": 9.23e6, "rednet38": 12.39e6, "rednet50": 15.54e6}
SMALL = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def rednet26():
    return models.build("rednet26")


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_are_the_published_ones(name):
    with torch.device("meta"):
        model = models.get(name).builder()
    count = sum(p.numel() for p in model.parameters()) + 2048 * 1000 + 1000
    assert abs(count - PUBLISHED_PARAMETERS[name]) < 0.005e6


def test_names_are_the_original_ones(rednet26):
    names = set(rednet26.state_dict())
    for key in ("stem.0.conv.weight", "stem.0.bn.running_var", "stem.1.conv1.conv.weight", "stem.1.conv1.bn.weight",
                "stem.1.conv2.conv.weight", "stem.1.conv2.conv.bias", "stem.2.weight", "stem.4.conv.weight",
                "layer1.0.conv2.conv1.conv.weight", "layer1.0.conv2.conv2.conv.bias", "layer1.0.bn2.weight",
                "layer1.0.downsample.0.weight", "layer4.0.conv3.weight"):
        assert key in names, key
    assert tuple(rednet26.state_dict()["layer2.0.conv2.conv2.conv.weight"].shape) == (49 * 8, 32, 1, 1)


def test_four_stage_outputs_and_the_papers_involution_inside(rednet26):
    x = torch.randn(SMALL)
    with torch.no_grad():
        outputs = rednet26(x)
        stem = rednet26.stem[0](x)
        involution = rednet26.stem[1]
        assert torch.allclose(involution(stem), reference(stem, involution), atol=1e-5)
    assert [tuple(o.shape) for o in outputs] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    assert all(0.1 < float(o.std()) < 10 for o in outputs)  # deterministic init keeps activations sane


def test_a_classifiers_checkpoint_is_recognised(rednet26):
    state = {f"backbone.{k}": v for k, v in rednet26.state_dict().items()}
    state["head.fc.weight"] = torch.zeros(1000, 2048)
    assert zoo_model_of(state, "rednet.pth") == "rednet26"


def test_export_from_a_checkpoint_without_model(tmp_path, rednet26, capsys):
    checkpoint = tmp_path / "rednet26.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in rednet26.state_dict().items()}}, checkpoint)
    code = main(["export", "--ckpt", str(checkpoint), "--input-shape", "1,3,32,32", "--out", str(tmp_path / "out"),
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["model"] == "rednet26" and report["verification"]["passed"]
    assert report["verification"]["max_rel_err"] < 1e-4
    assert "Gather" not in report["onnx_ops"] and report["search_ops_left"] == {}
    assert [inv["name"] for inv in report["involutions"]][:2] == ["stem.1", "layer1.0.conv2"]
    assert len(report["involutions"]) == 9
    for inv in report["involutions"]:
        assert inv["lowering"] in CANDIDATES and inv["chosen_by"] == "cost model" and inv["folded_batchnorm"]
        assert inv["notes"] and inv["notes"][-1].startswith("cost model")
    assert report["layers"] == []
    assert not any("searched layers" in w for w in report["load"]["warnings"])
    assert "0 searched layers: 9 involution(s) are lowered instead" in report["load"]["notes"]


def test_analyze_reads_an_involution_as_a_k_by_k_window(capsys):
    assert main(["analyze", "--model", "rednet26", "--input-size", "64", "--json"]) == 0
    layers = {layer["name"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    # stem.0: 3x3/2 -> RF 3, jump 2; stem.1: 3x3 -> 3 + 2*2 = 7; stem.4 3x3 -> 11; maxpool 3x3/2 -> 15, jump 4;
    # layer1.0.conv2: 7x7 -> 15 + 6*4 = 39; layer2.0.conv2: 7x7/2 -> 39 + 6*4 = 63, jump 8
    assert layers["stem.1"]["op"] == "involution" and layers["stem.1"]["rf"] == [7, 7]
    assert layers["layer1.0.conv2"]["rf"] == [39, 39]
    assert layers["layer2.0.conv2"]["rf"] == [63, 63] and layers["layer2.0.conv2"]["stride"] == [2, 2]


def test_the_compiled_models_analysis_is_the_same(rednet26):
    compiled = compile_model(rednet26, input_shapes=[SMALL]).model
    assert sum(isinstance(m, LoweredInvolution) for m in compiled.modules()) == 9
    report = api.receptive_field_report(compiled, SMALL)
    fields = {layer["name"]: layer["rf"] for layer in report["layers"]}
    assert fields["layer1.0.conv2"] == [39, 39]


def test_tune_chooses_each_involutions_aggregation_by_measurement(rednet26):
    tuning = tune_lowerings(rednet26.layer4, [(1, 1024, 8, 8)], "onnxruntime", warmup=1, iters=3, threads=1,
                            sessions=1)
    (layer,) = tuning.layers
    assert layer.op == "involution" and layer.name == "0.conv2" and layer.input_shape == [1, 512, 8, 8]
    assert set(layer.median_ms) == {*CANDIDATES, "searched"} and layer.chosen in CANDIDATES
    assert tuning.choices == {"0.conv2": layer.chosen}
    compiled = compile_model(rednet26.layer4, choices=tuning.choices, input_shapes=[(1, 1024, 8, 8)])
    assert compiled.involutions[0].lowering == layer.chosen and compiled.involutions[0].chosen_by == "measurement"


def test_bench_times_the_naive_export_against_the_lowering(rednet26):
    report = bench(rednet26, [(1, 3, 32, 32)], ["onnxruntime"], warmup=1, iters=2, model_name="rednet26")
    assert report.involutions == 9 and report.searched_layers == 0
    compiled = next(r for r in report.results if r.variant == "compiled")
    assert compiled.max_rel_err is not None and compiled.max_rel_err < 1e-4
    assert report.compile["lowerings"]["layer1.0.conv2"] in CANDIDATES
