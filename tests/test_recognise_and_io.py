"""Leaving out --model for zoo checkpoints; models with several inputs; a dynamic batch dimension."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rfdeploy import api, models
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.recognise import zoo_model_of


def detector_checkpoint(zoo_name: str) -> dict:
    """A detector's state dict as mmdet saves it: the backbone under ``backbone.``, a neck beside it."""
    state = {f"backbone.{k}": v for k, v in models.build(zoo_name).state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    return state


@pytest.mark.parametrize("zoo_name", ["pvt_v2_b0", "hrnet_w18", "res2net50"])
def test_a_detector_checkpoint_names_its_backbone(zoo_name):
    assert zoo_model_of(detector_checkpoint(zoo_name), "ckpt.pth") == zoo_name


def test_searched_keys_still_name_the_architecture():
    state = models.build("mstcn").state_dict()
    layer = "stages.0.layers.3.conv_dilated"
    state[f"{layer}.op_layer.weight"] = state.pop(f"{layer}.weight")
    state[f"{layer}.op_layer.bias"] = state.pop(f"{layer}.bias")
    state[f"{layer}.weights"] = torch.ones(3)
    assert zoo_model_of(state, "g2l.pth") == "mstcn"


def test_an_unknown_architecture_asks_for_model():
    with pytest.raises(RFDeployError, match="--model"):
        zoo_model_of(nn.Conv2d(3, 3, 3).state_dict(), "tiny.pth")


def test_export_without_model_reports_the_recognised_architecture(tmp_path):
    checkpoint = tmp_path / "pvt.pth"
    torch.save({"state_dict": detector_checkpoint("pvt_v2_b0")}, checkpoint)
    result = api.export(None, checkpoint, input_shapes=[(1, 3, 64, 64)], out=tmp_path / "out")
    assert result.report["model"] == "pvt_v2_b0" and result.report["model_recognised"]
    assert result.passed


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Conv2d(3, 4, 3, padding=1)
        self.depth = nn.Conv2d(1, 4, 5, padding=2)

    def forward(self, image, depth):
        return self.image(image) + self.depth(depth), self.depth(depth).mean(dim=(2, 3))


def test_several_inputs_and_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    structure = tmp_path / "rf.json"
    structure.write_text('{"search": {"exp_rate": 0.5, "mmin": 1, "mmax": 8, "num_branches": 3}, '
                         '"structure": {"image": 2, "depth": [1, 3]}}')
    result = api.export(model, None, structure, input_shapes=[(2, 3, 16, 16), (2, 1, 16, 16)],
                        dynamic_batch=True, out=tmp_path / "out")
    assert result.passed
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input0", "input1"]
    image, depth = torch.randn(5, 3, 16, 16), torch.randn(5, 1, 16, 16)  # a batch the export never saw
    searched = api.load(model, None, structure).searched
    with torch.no_grad():
        expected = [t.numpy() for t in searched(image, depth)]
    actual = session.run(None, {"input0": image.numpy(), "input1": depth.numpy()})
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-5)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.searched = nn.Conv2d(3, 4, 3, padding=1)
        self.plain = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.plain(torch.relu(self.searched(x)))


def test_export_report_carries_the_receptive_field_analysis(tmp_path):
    structure = tmp_path / "rf.json"
    structure.write_text('{"search": {"exp_rate": 0.5, "mmin": 1, "mmax": 8, "num_branches": 3}, '
                         '"structure": {"searched": 2}}')
    report = api.export(TwoConvs(), None, structure, input_shapes=[(1, 3, 8, 8)], out=tmp_path / "out").report
    field = report["receptive_field"]
    # centre 2, exp_rate 0.5: rates 1, 2, 3; the widest reaches 3 * (3 - 1) + 1 = 7; the plain 3x3 adds 2: 9
    assert [(layer["name"], layer["rf"]) for layer in field["layers"]] == [("searched", [7, 7]), ("plain", [9, 9])]
    assert field["receptive_field"] == [9, 9]
    assert field["border_layer"] == "plain"  # the first to see more than 8x8; its input (7) does not
    assert field["unproductive_layers"] == 0
