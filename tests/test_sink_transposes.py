"""sink_transposes: channels-last stretches between layout transposes run channels-first, outputs kept;
and the layout chosen by timing on the target backend."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rfdeploy import api
from rfdeploy.backends.onnx_export import export_onnx, op_counts
from rfdeploy.compiler.passes.sink_transposes import sink_transposes
from rfdeploy.tuning.layout import AS_EXPORTED, CHANNELS_FIRST, choose_layout


class ChannelsLastMLP(nn.Module):
    """ConvNeXt's block shape: permute, LayerNorm, Linear, GELU, Linear, scale, permute back."""

    def __init__(self, channels: int = 8, tail=None, extra_output: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.up, self.down = nn.Linear(channels, 2 * channels), nn.Linear(2 * channels, channels)
        self.tail, self.extra_output = tail, extra_output

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        hidden = nn.functional.gelu(self.up(self.norm(y))) * 0.5
        z = self.down(hidden) + 1.0
        if self.tail is not None:
            z = self.tail(z)
        out = x + z.permute(0, 3, 1, 2)
        return (out, hidden) if self.extra_output else out


def exported(model: nn.Module, shape=(2, 8, 5, 7)) -> onnx.ModelProto:
    return export_onnx(model.eval(), [torch.randn(*shape)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_a_channels_last_stretch_runs_channels_first_with_the_same_outputs(opset):
    model = export_onnx(ChannelsLastMLP().eval(), [torch.randn(2, 8, 5, 7)], opset=opset)
    rewritten, sunk, note = sink_transposes(model)
    assert note is None and len(sunk) == 1 and len(sunk[0].exits) == 1
    counts = op_counts(rewritten)
    assert "Transpose" not in counts and "MatMul" not in counts and "LayerNormalization" not in counts
    assert counts["Conv"] == 3  # the 3x3 conv and the two linears as 1x1 convs
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 7)).astype(np.float32)
    (before,), (after,) = run(model, x), run(rewritten, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    assert [o.name for o in rewritten.graph.output] == [o.name for o in model.graph.output]


@pytest.mark.parametrize("variant", [
    ChannelsLastMLP(tail=lambda z: z.softmax(-1)),  # an op without a channels-first form here
    ChannelsLastMLP(extra_output=True),  # a channels-last tensor is a graph output
    ChannelsLastMLP(tail=lambda z: z + torch.arange(7.0).view(7, 1)),  # a constant over another axis
])
def test_a_stretch_that_cannot_convert_leaves_the_graph_as_it_was(variant):
    model = exported(variant)
    rewritten, sunk, note = sink_transposes(model)
    assert rewritten is model and not sunk and note
    assert rewritten.SerializeToString() == exported(variant).SerializeToString()


def test_convnext_exports_without_a_transpose_where_channels_first_is_kept():
    result = api.export("convnext_tiny", input_shapes=[(1, 3, 64, 64)], write=False)
    layout = result.report["layout"]
    assert layout["backend"] == "onnxruntime" and set(layout["median_ms"]) == {AS_EXPORTED, CHANNELS_FIRST}
    transposes = result.report["onnx_ops"].get("Transpose", 0)
    assert (transposes == 0) == (layout["kept"] == CHANNELS_FIRST)
    assert result.passed  # whichever was kept, verified against the searched forward
    # every one of its 18 blocks and 8 LayerNorm2d permutes to channels-last and back; each such stretch went
    channels_first = sink_transposes(result.onnx_model)[0] if transposes else result.onnx_model
    assert "Transpose" not in op_counts(channels_first) and len(layout["stretches"]) >= 18


def test_choose_layout_keeps_what_ran_faster_and_returns_it():
    model = exported(ChannelsLastMLP())
    kept, record = choose_layout(model, "onnxruntime", [torch.randn(2, 8, 5, 7)], iters=5)
    faster = min(record["median_ms"], key=record["median_ms"].__getitem__)
    # the clearly faster, else (within the spread of the rounds) the graph as exported
    assert (record["kept"], record["decided_by"]) in ((faster, "speed"), (AS_EXPORTED, "simplicity"))
    assert ("Transpose" in op_counts(kept)) == (record["kept"] == AS_EXPORTED)
    plain = exported(nn.Conv2d(8, 8, 3))
    same, record = choose_layout(plain, "onnxruntime", [torch.randn(2, 8, 5, 7)])
    assert same is plain and record["kept"] == AS_EXPORTED and "median_ms" not in record


def test_a_weight_a_caller_may_feed_is_no_constant_and_its_stretch_stays():
    model = exported(ChannelsLastMLP())
    matmul = next(node for node in model.graph.node if node.op_type == "MatMul")
    weight = next(init for init in model.graph.initializer if init.name == matmul.input[1])
    model.graph.input.append(onnx.helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
    rewritten, sunk, note = sink_transposes(model)
    assert rewritten is model and not sunk and note


class LayerNormBetweenConvs(nn.Module):
    """ConvNeXt's LayerNorm2d: a conv, LayerNorm over channels (channels-last), a conv."""

    def __init__(self, channels: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 1)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.second(self.norm(self.first(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_layer_norm_spelled_out_channels_first_stays_out_of_int8():
    from rfdeploy.measure.verify import InputSet
    from rfdeploy.quantize.int8 import int8_compute, quantize_int8

    rewritten, sunk, _ = sink_transposes(exported(LayerNormBetweenConvs()))
    assert len(sunk) == 1 and "LayerNormalization" not in op_counts(rewritten)
    norm = [node for node in rewritten.graph.node if node.op_type != "Conv"]
    assert {"ReduceMean", "Sub", "Sqrt", "Div", "Mul", "Add"} <= {node.op_type for node in norm}
    # the tensors inside the normalisation: its ops' outputs that only its ops read (not its result, which the
    # second conv reads, quantized as that conv's input as LayerNormalization's output would be)
    conv_inputs = {name for node in rewritten.graph.node if node.op_type == "Conv" for name in node.input}
    inside = {name for node in norm for name in node.output} - conv_inputs
    assert len(inside) >= 6
    sets = [InputSet(f"seed {seed}", (torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(seed)),))
            for seed in range(4)]
    quantized = quantize_int8(rewritten, sets, ops="all")  # every op onnxruntime's quantizer supports
    quantized_tensors = {node.input[0] for node in quantized.graph.node if node.op_type == "QuantizeLinear"}
    assert not quantized_tensors & inside  # the mean, variance, deviation, division all stay fp32
    assert sorted(n.op_type for n in quantized.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")) \
        == sorted(n.op_type for n in rewritten.graph.node)
    assert int8_compute(quantized) == (2, 2)  # both convs still compute in int8
