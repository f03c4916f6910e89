"""fold_channel_scales: a Mul by a per-channel constant folds into the Conv / MatMul / Gemm before it.

Hand-built ONNX graphs for each accepted and each refused pattern, run in onnxruntime before and after;
ConvNeXt as ``torch.onnx.export`` writes it (its layer scale, at every opset rfdeploy exports); and
``rfdeploy optimize`` on a searched conv followed by a layer scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from test_formats import one_thread  # noqa: F401  # the autouse fixture: one thread for tiny models
from test_optimize import rfdeploy, save, to_onnx, with_custom_nms
from torch import nn

from rfdeploy import api
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.compiler.passes.fold_channel_scales import fold_channel_scales
from rfdeploy.compiler.pipeline import run_graph_passes
from rfdeploy.models import build
from rfdeploy.stages.bench import variants

RNG = np.random.default_rng(0)


def values(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def model_of(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], constants: dict[str, np.ndarray],
             outputs: tuple[str, ...] = ("out",), elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, elem_type, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, elem_type, None) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def feeds_for(model: onnx.ModelProto, dtype=np.float32) -> dict[str, np.ndarray]:
    initializers = {init.name for init in model.graph.initializer}
    return {value.name: values(*[d.dim_value for d in value.type.tensor_type.shape.dim], dtype=dtype)
            for value in model.graph.input if value.name not in initializers}


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    feeds = feeds_for(before)
    for expected, actual in zip(run(before, feeds), run(after, feeds), strict=True):
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def assert_folds(model: onnx.ModelProto, count: int = 1) -> onnx.ModelProto:
    folded, changed, note = fold_channel_scales(model)
    assert len(changed) == count and note is None
    assert ops(folded).count("Mul") == ops(model).count("Mul") - count
    assert_same_outputs(model, folded)
    assert [o.name for o in folded.graph.output] == [o.name for o in model.graph.output]
    return folded


def assert_left_alone(model: onnx.ModelProto) -> None:
    folded, changed, note = fold_channel_scales(model)
    assert changed == [] and note is not None
    assert folded is model
    passed, results = run_graph_passes(model)
    assert passed.SerializeToString() == model.SerializeToString() and results["fold_channel_scales"][0] == []


def conv_then_mul(scale: np.ndarray, *, constant_node: bool = False, scale_first: bool = False,
                  bias: bool = True) -> onnx.ModelProto:
    scale_name = "s"
    nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], pads=[1, 1, 1, 1])]
    constants = {"w": values(4, 3, 3, 3), **({"b": values(4)} if bias else {})}
    if constant_node:
        nodes.append(helper.make_node("Constant", [], [scale_name], value=numpy_helper.from_array(scale)))
    else:
        constants[scale_name] = scale
    nodes.append(helper.make_node("Mul", [scale_name, "y"] if scale_first else ["y", scale_name], ["out"]))
    return model_of(nodes, {"x": [2, 3, 5, 5]}, constants)


def positive(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.5).astype(np.float32)


# ---------------------------------------------------------------- what folds

@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1), (1,), ()], ids=["1C11", "C11", "one", "scalar"])
@pytest.mark.parametrize("scale_first", [False, True], ids=["y*s", "s*y"])
def test_a_per_channel_or_scalar_scale_after_a_conv_folds_into_its_weight_and_bias(shape, scale_first):
    model = conv_then_mul(positive(*shape), scale_first=scale_first)
    folded = assert_folds(model)
    assert ops(folded) == ["Conv"]


def test_a_scale_from_a_constant_node_folds_and_the_constant_node_goes():
    folded = assert_folds(conv_then_mul(positive(4, 1, 1), constant_node=True, bias=False))
    assert ops(folded) == ["Conv"]


def convnext_layer_scale(bias_first: bool = True, **extra_constants: np.ndarray) -> onnx.ModelProto:
    """What torch.onnx writes for ConvNeXt: ``MatMul`` on NHWC, bias ``Add``, ``Transpose`` to NCHW, ``Mul``."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["b", "mm"] if bias_first else ["mm", "b"], ["added"]),
             helper.make_node("Transpose", ["added"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["nchw", "gamma"], ["out"])]
    constants = {"w": values(8, 4), "b": values(4), "gamma": positive(1, 4, 1, 1), **extra_constants}
    return model_of(nodes, {"x": [2, 3, 5, 8]}, constants)


@pytest.mark.parametrize("bias_first", [True, False])
def test_convnext_layer_scale_folds_through_the_bias_add_and_the_transpose(bias_first):
    folded = assert_folds(convnext_layer_scale(bias_first))
    assert ops(folded) == ["MatMul", "Add", "Transpose"]
    assert folded.graph.node[-1].output == ["out"]


def test_a_scale_directly_after_a_matmul_folds_into_its_columns():
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])],
                     {"x": [2, 5, 8]}, {"w": values(8, 6), "s": positive(6)})
    assert_folds(model)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(6,), (1, 6), (2, 1), ()], ids=["N", "1N", "M1", "scalar"])
def test_gemm_folds_into_b_and_c(trans_b, c_shape):
    model = model_of([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=0.7, beta=1.3),
                      helper.make_node("Mul", ["y", "s"], ["out"])],
                     {"x": [2, 8]}, {"w": values(6, 8) if trans_b else values(8, 6), "c": values(*c_shape),
                                     "s": positive(1, 6)})
    assert_folds(model)


def test_a_reshape_that_keeps_the_channel_last_is_followed():
    # tokens [B, H*W, C] -> [B, H, W, C] (the channel stays the last axis), then to NCHW
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["added"]),
             helper.make_node("Reshape", ["added", "hwc"], ["grid"]),
             helper.make_node("Transpose", ["grid"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["nchw", "gamma"], ["out"])]
    model = model_of(nodes, {"x": [2, 12, 8]}, {"w": values(8, 4), "b": values(4), "gamma": positive(1, 4, 1, 1),
                                                "hwc": np.array([0, 3, -1, 4], dtype=np.int64)})
    assert_folds(model)


@pytest.mark.parametrize("flat", [[2, 4, 25], [0, 0, -1]], ids=["literal", "copy-and-infer"])
def test_a_reshape_that_keeps_a_middle_channel_axis_is_followed_by_its_inferred_dims(flat):
    # NCHW -> [N, C, H*W]: what follows the channel axis (H*W = 25) has the same size before and after
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "flat"], ["tokens"]),
             helper.make_node("Mul", ["tokens", "s"], ["out"])]
    model = model_of(nodes, {"x": [2, 3, 5, 5]}, {"w": values(4, 3, 3, 3), "s": positive(4, 1),
                                                  "flat": np.array(flat, dtype=np.int64)})
    assert_folds(model)


def test_a_transpose_without_perm_reverses_the_axes():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]),
             helper.make_node("Transpose", ["y"], ["reversed"]),
             helper.make_node("Mul", ["reversed", "s"], ["out"])]
    model = model_of(nodes, {"x": [2, 3, 4, 5]}, {"w": values(4, 3, 1, 1), "s": positive(1, 1, 4, 1)})
    assert_folds(model)


@pytest.mark.parametrize("x_shape, scale_shape, folds", [
    ([2, 5, 8], (1, 1, 6), True),  # the MatMul's rank, from shape inference, takes a rank-3 scale
    ([8], (6,), True),
    ([8], (1, 6), False),  # a 1-D product: the scale would add a dim
], ids=["rank-3", "1-D", "1-D-adds-a-dim"])
def test_a_scale_of_higher_rank_after_a_matmul_needs_the_products_rank(x_shape, scale_shape, folds):
    model = model_of([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])],
                     {"x": x_shape}, {"w": values(8, 6), "s": positive(*scale_shape)})
    if folds:
        assert_folds(model)
    else:
        assert_left_alone(model)


def test_a_scale_whose_mul_writes_a_graph_output_and_two_in_a_row_fold():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"]),
             helper.make_node("Mul", ["y", "s1"], ["z"]),
             helper.make_node("Mul", ["s2", "z"], ["out"])]
    model = model_of(nodes, {"x": [1, 3, 4, 4]}, {"w": values(4, 3, 1, 1), "b": values(4),
                                                  "s1": positive(4, 1, 1), "s2": positive(1, 4, 1, 1)})
    folded = assert_folds(model, count=2)
    assert ops(folded) == ["Conv"] and folded.graph.node[0].output == ["out"]


def test_a_bias_shared_with_another_node_gets_a_scaled_copy_and_the_other_reader_keeps_its_values():
    # the exporter writes equal initializers once: ConvNeXt's blocks share one bias tensor
    model = convnext_layer_scale()
    model.graph.node.append(helper.make_node("Add", ["x2", "b"], ["other"]))
    model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3, 4]))
    model.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    folded = assert_folds(model)
    initializers = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
    original = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert np.array_equal(initializers["b"], original["b"]) and "b/scaled" in initializers


# ---------------------------------------------------------------- what is left alone

def test_a_weight_read_by_two_nodes_is_left_alone():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"]),
             helper.make_node("MatMul", ["x", "w"], ["other"])]
    assert_left_alone(model_of(nodes, {"x": [2, 8]}, {"w": values(8, 6), "s": positive(6)},
                               outputs=("out", "other")))


def test_a_scale_that_is_a_graph_input_is_left_alone():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])]
    assert_left_alone(model_of(nodes, {"x": [1, 3, 4, 4], "s": [1, 4, 1, 1]}, {"w": values(4, 3, 1, 1)}))


@pytest.mark.parametrize("shape", [(1, 1, 5, 1), (1, 4, 5, 1), (2, 4, 1, 1), (1, 1, 4, 1, 1)],
                         ids=["height", "channel-and-height", "batch", "adds-a-dim"])
def test_a_scale_along_another_axis_is_left_alone(shape):
    assert_left_alone(conv_then_mul(positive(*shape)))


def test_a_scale_on_the_axis_a_transpose_moved_the_channels_away_from_is_left_alone():
    # NCHW with C = H = 4, transposed to NHWC: a [1, 4, 1, 1] scale now scales the height, not the channels
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["y"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["nhwc", "s"], ["out"])]
    model = model_of(nodes, {"x": [1, 3, 4, 4]}, {"w": values(4, 3, 3, 3), "s": positive(1, 4, 1, 1)})
    assert_left_alone(model)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(positive(1, 1, 1, 4), "s"))
    assert_folds(model)  # the control: on the axis the channels moved to, it folds


def test_a_reshape_that_regroups_the_channels_is_left_alone():
    # [4, 6] -> [6, 4]: axis 0 has the channel count, but it does not index the channels
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Reshape", ["y", "shape"], ["regrouped"]),
             helper.make_node("Mul", ["regrouped", "s"], ["out"])]
    assert_left_alone(model_of(nodes, {"x": [4, 8]}, {"w": values(8, 6), "s": positive(6, 1),
                                                     "shape": np.array([6, 4], dtype=np.int64)}))


@pytest.mark.parametrize("between", ["Relu", "residual-Add", "second-reader", "graph-output"])
def test_anything_else_between_the_weighted_node_and_the_mul_is_left_alone(between):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    outputs: tuple[str, ...] = ("out",)
    if between == "Relu":
        nodes.append(helper.make_node("Relu", ["y"], ["z"]))
    elif between == "residual-Add":
        nodes.append(helper.make_node("Add", ["y", "x"], ["z"]))
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["z"]))
        if between == "second-reader":
            nodes.append(helper.make_node("Relu", ["y"], ["other"]))
            outputs = ("out", "other")
        else:
            outputs = ("out", "y")
    nodes.append(helper.make_node("Mul", ["z", "s"], ["out"]))
    assert_left_alone(model_of(nodes, {"x": [1, 4, 4, 4]}, {"w": values(4, 4, 1, 1), "s": positive(1, 4, 1, 1)},
                               outputs=outputs))


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_a_bias_computed_in_the_graph_is_left_alone(op):
    nodes = [helper.make_node("Relu", ["c"], ["bias"]), helper.make_node(op, ["x", "w", "bias"], ["y"]),
             helper.make_node("Mul", ["y", "s"], ["out"])]
    shapes = {"Conv": ([1, 3, 4, 4], (4, 3, 1, 1), (1, 4, 1, 1)), "Gemm": ([2, 3], (3, 4), (1, 4))}[op]
    assert_left_alone(model_of(nodes, {"x": shapes[0], "c": [4]}, {"w": values(*shapes[1]), "s": positive(*shapes[2])}))


def test_a_scale_with_an_initializer_a_caller_may_override_is_left_alone():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])]
    model = model_of(nodes, {"x": [1, 3, 4, 4], "s": [1, 4, 1, 1]}, {"w": values(4, 3, 1, 1), "s": positive(1, 4, 1, 1)})
    assert {"s"} <= {i.name for i in model.graph.input} & {i.name for i in model.graph.initializer}
    assert_left_alone(model)


def test_a_weight_that_is_a_graph_input_is_left_alone():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])]
    assert_left_alone(model_of(nodes, {"x": [2, 8], "w": [8, 6]}, {"s": positive(6)}))


def test_a_graph_older_than_opset_7_is_left_alone():
    model = conv_then_mul(positive(1, 4, 1, 1))
    model.opset_import[0].version = 6  # Mul broadcast by its axis attribute then
    assert_left_alone(model)


def test_an_fp16_graph_is_left_alone():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"]), helper.make_node("Mul", ["y", "s"], ["out"])]
    constants = {"w": values(4, 3, 1, 1, dtype=np.float16), "b": values(4, dtype=np.float16),
                 "s": positive(1, 4, 1, 1).astype(np.float16)}
    model = model_of(nodes, {"x": [1, 3, 4, 4]}, constants, elem_type=TensorProto.FLOAT16)
    assert_left_alone(model)
    assert run(model, feeds_for(model, np.float16))[0].dtype == np.float16  # a graph that runs


# ---------------------------------------------------------------- ConvNeXt as torch.onnx exports it

def convnext_with_trained_layer_scales() -> nn.Module:
    """The zoo's ConvNeXt-T with layer scales and biases away from their initial 1 and 0."""
    model = build("convnext_tiny")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.1)
            elif name.endswith("bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def per_channel_muls(model: onnx.ModelProto) -> list[str]:
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "Mul" and any(sizes.get(name, 0) > 1 for name in node.input)]


@pytest.fixture(scope="module")
def convnext() -> nn.Module:
    return convnext_with_trained_layer_scales()


def test_convnext_export_folds_every_layer_scale_and_verifies(convnext):
    result = api.export(convnext, input_shapes=[(1, 3, 64, 64)], write=False)
    folds = result.report["graph_passes"]["fold_channel_scales"]
    assert len(folds) == 18  # one per block: depths 3, 3, 9, 3
    assert {fold["through"][0].rsplit("/", 1)[-1] for fold in folds} == {"Add"}
    assert all(fold["into"].endswith("pointwise_conv2/MatMul") for fold in folds)
    assert per_channel_muls(result.onnx_model) == []
    assert result.report["onnx_ops"] == {op: ops(result.onnx_model).count(op) for op in result.report["onnx_ops"]}
    assert result.passed, result.report["verification"]


@pytest.mark.parametrize("opset", [9, 13, 23])
def test_convnext_layer_scales_fold_at_other_opsets(convnext, opset):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    exported = export_onnx(convnext, [x], opset)
    folded, results = run_graph_passes(exported)
    assert len(results["fold_channel_scales"][0]) == 18
    # before opset 17, LayerNorm is decomposed: its own per-channel Mul stays, after a Div (no weight)
    producers = {output: node.op_type for node in folded.graph.node for output in node.output}
    nodes = {node.name: node for node in folded.graph.node}
    assert all(producers.get(nodes[name].input[0]) == "Div" for name in per_channel_muls(folded))
    assert len(per_channel_muls(folded)) == (0 if opset >= 17 else 26)  # 18 blocks, 4 downsamplers, 4 outputs
    session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = [t.numpy() for t in convnext(x)]
    for want, got in zip(expected, session.run(None, {"input": x.numpy()}), strict=True):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---------------------------------------------------------------- rfdeploy optimize

class SearchedConvThenLayerScale(nn.Module):
    """A searched conv as a generic exporter writes it (one weight at two dilations, scalar alphas, summed),
    then a layer scale: right after it (``direct``) or after a channels-last Linear, as in ConvNeXt."""

    def __init__(self, direct: bool):
        super().__init__()
        torch.manual_seed(0)
        self.direct = direct
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.bias = nn.Parameter(torch.randn(4))
        self.register_buffer("alpha", torch.tensor(0.3))
        self.linear = nn.Linear(4, 4)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x):
        y = (F.conv2d(x, self.weight, self.bias, padding=1, dilation=1) * self.alpha
             + F.conv2d(x, self.weight, self.bias, padding=2, dilation=2) * 0.7)
        if self.direct:
            return y * self.gamma.view(1, -1, 1, 1)
        return y + self.linear(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * self.gamma.view(1, -1, 1, 1)


def assert_equals_torch(model: onnx.ModelProto | Path, reference: nn.Module, shape=(2, 3, 10, 10)) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(x).numpy()
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def test_rfdeploy_optimize_lowers_the_searched_conv_and_folds_the_layer_scale(tmp_path, capsys):
    reference = SearchedConvThenLayerScale(direct=False).eval()
    save(to_onnx(reference, (1, 3, 10, 10), fold=True), tmp_path / "in.onnx")
    code, out, err = rfdeploy("optimize", "in.onnx", "--out", "out", "--json", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    assert len(report["layers"]) == 1 and report["verification"]["passed"]
    (fold,) = report["graph_passes"]["fold_channel_scales"]
    assert fold["into"].endswith("linear/MatMul") and "Mul" not in report["onnx_ops"]["after"]
    assert_equals_torch(tmp_path / "out" / "model.onnx", reference, (1, 3, 10, 10))


def test_a_scale_right_after_a_lowered_searched_conv_folds_into_it_and_is_verified_per_subgraph(tmp_path):
    # onnxruntime cannot run the whole graph (a custom node): the lowered conv's check ends where the fold does
    reference = SearchedConvThenLayerScale(direct=True).eval()
    graph = to_onnx(reference, (2, 3, 10, 10), fold=True)
    result = api.optimize(save(with_custom_nms(graph), tmp_path / "in.onnx"), out=tmp_path / "out", mode="single")
    (layer,) = result.report["layers"]
    (fold,) = result.report["graph_passes"]["fold_channel_scales"]
    assert "/rfdeploy/" in fold["into"]  # the conv the searched conv was lowered to
    check = result.report["verification"]
    assert check["scope"] == "each rewritten subgraph" and check["passed"], check
    assert [(s["layer"], s["output"]) for s in check["subgraphs"]] == [(layer["name"], fold["output"]),
                                                                       (fold["mul"], fold["output"])]
    assert ops(result.onnx_model)[:1] == ["Conv"] and "Mul" not in ops(result.onnx_model)
    backbone = onnx.utils.Extractor(result.onnx_model).extract_model(["input"], [fold["output"]])
    assert_equals_torch(backbone, reference)


def test_optimize_leaves_a_graph_without_a_searched_conv_as_it_was(tmp_path):
    graph = conv_then_mul(positive(1, 4, 1, 1))
    result = api.optimize(save(graph, tmp_path / "in.onnx"), out=tmp_path / "out")
    assert result.report["graph_passes"] == {} and "no searched conv" in result.report["note"]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "in.onnx").read_bytes()


def test_bench_times_the_compiled_graph_as_export_writes_it_and_the_searched_one_as_exported():
    class ConvThenScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gamma = nn.Parameter(torch.rand(4) + 0.5)

        def forward(self, x):
            return self.conv(x) * self.gamma.view(1, -1, 1, 1)

    model = ConvThenScale().eval()
    searched, compiled = variants(model, model)
    example = [torch.randn(1, 3, 8, 8)]
    assert ops(searched.onnx_for(example)) == ["Conv", "Mul"] and ops(compiled.onnx_for(example)) == ["Conv"]
