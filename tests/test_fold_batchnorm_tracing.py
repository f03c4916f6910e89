"""Which parts of a model BatchNorm folding can see: forwards with defaulted arguments (a detector's
``mode="tensor"``), and models fx cannot trace as a whole; and the ONNX graph of a shared conv."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import torch
from torch import nn

from rfdeploy.backends.onnx_export import bypass_identities, op_counts
from rfdeploy.compiler.passes.fold_batchnorm import fold_batchnorm


def conv_bn() -> nn.Sequential:
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    block[1].running_mean.uniform_(-0.5, 0.5)
    block[1].running_var.uniform_(0.5, 2.0)
    return block


class DetectorLike(nn.Module):
    """mmdet's ``BaseDetector.forward(inputs, data_samples=None, mode="tensor")``: Python control flow on
    arguments that rfdeploy never passes."""

    def __init__(self):
        super().__init__()
        self.backbone = conv_bn()

    def forward(self, x, data_samples=None, mode="tensor"):
        if mode == "loss":
            raise AssertionError("not traced")
        return self.backbone(x)


class DataDependent(nn.Module):
    """A top-level forward fx cannot follow (control flow on a tensor value) around a traceable child."""

    def __init__(self):
        super().__init__()
        self.backbone = conv_bn()

    def forward(self, x):
        y = self.backbone(x)
        return y if y.sum() > -1e9 else -y


def assert_folds_and_keeps_outputs(model: nn.Module) -> None:
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        folded, names, note = fold_batchnorm(model)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    assert names == ["backbone.1"] and note is None


def test_fold_batchnorm_traces_a_forward_with_its_defaulted_arguments_fixed():
    assert_folds_and_keeps_outputs(DetectorLike())


def test_fold_batchnorm_traces_the_children_of_a_model_fx_cannot_follow():
    assert_folds_and_keeps_outputs(DataDependent())


def test_fold_batchnorm_says_why_when_no_part_traces():
    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    _, names, note = fold_batchnorm(Untraceable().eval())
    assert names == [] and note is not None and note.startswith("not traceable by torch.fx")


def test_identity_copies_of_a_weight_are_bypassed_and_outputs_kept():
    """What the exporter writes for a detector head's convs shared by every pyramid level: each extra use
    of the weight reads an ``Identity`` of the initializer."""
    weight = gs.Constant("weight", np.random.default_rng(0).standard_normal((3, 3, 3, 3)).astype(np.float32))
    x = gs.Variable("input", np.float32, (1, 3, 8, 8))
    copy = gs.Variable("weight_copy", np.float32)
    first, second = gs.Variable("output0", np.float32), gs.Variable("output1", np.float32)
    nodes = [gs.Node("Identity", inputs=[weight], outputs=[copy]),
             gs.Node("Conv", inputs=[x, weight], outputs=[first], attrs={"pads": [1, 1, 1, 1]}),
             gs.Node("Conv", inputs=[x, copy], outputs=[second], attrs={"pads": [1, 1, 1, 1]})]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[first, second], opset=17)
    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    before = ort.InferenceSession(gs.export_onnx(graph).SerializeToString()).run(None, feed)

    bypass_identities(graph)
    graph.cleanup()

    cleaned = gs.export_onnx(graph)
    assert op_counts(cleaned) == {"Conv": 2}
    after = ort.InferenceSession(cleaned.SerializeToString()).run(None, feed)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
