"""Least-error activation ranges (``--calib-method mse``) and where each int8 format puts its QDQ pairs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from cli_util import MODEL, Files
from onnx import numpy_helper

from rfdeploy import api
from rfdeploy.quantize.calibration import calibration_data
from rfdeploy.quantize.deploy import PrecisionRequest
from rfdeploy.quantize.ranges import least_error_range


@pytest.fixture()
def files(tmp_path, monkeypatch) -> Files:
    monkeypatch.syspath_prepend(str(tmp_path))
    return Files(tmp_path)


def stored(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` after an 8-bit quantize-dequantize on [lo, hi], as QuantizeLinear/DequantizeLinear compute it."""
    scale = (hi - lo) / 255
    zero_point = np.round(-lo / scale)
    return (np.clip(np.round(values / scale) + zero_point, 0, 255) - zero_point) * scale


def squared_error(values: np.ndarray, lo: float, hi: float) -> float:
    return float(np.mean((stored(values, lo, hi) - values) ** 2))


def histogram_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """As onnxruntime's percentile calibrator keeps it: 2048 bins over [-max|x|, max|x|]."""
    bound = float(np.abs(values).max())
    counts, edges = np.histogram(values, 2048, range=(-bound, bound))
    return counts, edges.astype(np.float32), float(values.min()), float(values.max())


@pytest.mark.parametrize("activations", ["uint8", "zero-point-free", "int8"])
def test_a_heavy_tailed_tensor_gets_a_range_of_less_error_than_min_max_or_the_percentile(activations):
    values = np.random.default_rng(0).laplace(size=200_000).astype(np.float32)
    lo, hi = least_error_range(*histogram_of(values), activations)
    assert values.min() < lo < 0 < hi < values.max()  # the tails clipped
    percentile = np.percentile(values, [0.0005, 99.9995])
    assert squared_error(values, lo, hi) < squared_error(values, values.min(), values.max())
    assert squared_error(values, lo, hi) < squared_error(values, *percentile)


def test_values_spread_evenly_keep_their_whole_range():
    values = np.random.default_rng(1).uniform(0, 1, 100_000).astype(np.float32)
    lo, hi = least_error_range(*histogram_of(values), "uint8")
    assert lo == 0 and hi > 0.97


def test_each_format_gets_a_range_it_can_store():
    gelu_like = np.maximum(np.random.default_rng(2).standard_normal(100_000), -0.17).astype(np.float32)
    uint8 = least_error_range(*histogram_of(gelu_like), "uint8")
    assert -0.18 < uint8[0] < 0 < uint8[1]  # any zero point: the range hugs the short negative side
    for symmetric_format in ("zero-point-free", "int8"):
        lo, hi = least_error_range(*histogram_of(gelu_like), symmetric_format)
        assert lo == -hi and hi > 2
    never_negative = np.abs(gelu_like)
    assert least_error_range(*histogram_of(never_negative), "zero-point-free")[0] == 0  # uint8 from 0
    lo, hi = least_error_range(*histogram_of(never_negative), "int8")
    assert lo == -hi  # TensorRT's int8 is symmetric even here


def dequantized_readers(model: onnx.ModelProto) -> list[set[str]]:
    """For each activation's DequantizeLinear, the op types that read it."""
    constants = {init.name for init in model.graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    return [readers.get(node.output[0], set()) for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] not in constants]


def test_only_onnxruntimes_format_quantizes_conv_outputs(files):
    from rfdeploy.quantize.int8 import QUANTIZED_OPS, quantize_int8

    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False).onnx_model
    sets = calibration_data("random", [(1, 3, 12, 12)], 4).calibration
    for activations in ("zero-point-free", "int8"):  # OpenVINO's and TensorRT's: inputs of convs only
        readers = dequantized_readers(quantize_int8(fp32, sets, ops="conv-matmul", activations=activations))
        assert readers and all(types & set(QUANTIZED_OPS) for types in readers)
    readers = dequantized_readers(quantize_int8(fp32, sets, ops="conv-matmul", activations="uint8"))
    assert any(not types & set(QUANTIZED_OPS) for types in readers)  # a Q after each conv, for QLinearConv
    for target, outputs in (("openvino", False), ("onnxruntime", True)):
        result = api.export(MODEL, files.ckpt, files.structure, input_shapes=[(1, 3, 12, 12)], write=False,
                            target=target, precision=PrecisionRequest("int8", calib="random", calib_count=4,
                                                                      int8_ops="conv-matmul"))
        assert result.report["precision"]["quantized_ops"]["conv_outputs"] is outputs
        readers = dequantized_readers(result.precision.model)
        assert all(types & set(QUANTIZED_OPS) for types in readers) is not outputs


def input_rounding(model: onnx.ModelProto, values: np.ndarray) -> float:
    """The mean squared error with which the quantized model rounds its graph input ``values``."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    scale, zero_point = float(constants[node.input[1]]), constants[node.input[2]]
    info = np.iinfo(zero_point.dtype)
    levels = np.clip(np.round(values / scale) + int(zero_point), info.min, info.max)
    return float(np.mean(((levels - int(zero_point)) * scale - values) ** 2))


@pytest.mark.parametrize("activations", ["uint8", "zero-point-free"])
def test_mse_ranges_round_the_calibration_data_closer_than_percentile_ranges(files, activations):
    from rfdeploy.measure.verify import InputSet
    from rfdeploy.quantize.int8 import quantize_int8

    shape = (1, 3, 64, 64)
    fp32 = api.export(MODEL, files.ckpt, files.structure, input_shapes=[shape], write=False).onnx_model
    generator = torch.Generator().manual_seed(0)  # heavy tails: Student's t with 3 degrees of freedom
    sets = [InputSet(f"t{index}", (torch.randn(shape, generator=generator) /
                                   (torch.randn((3, *shape), generator=generator) ** 2).mean(0).sqrt(),))
            for index in range(16)]
    values = np.concatenate([s.tensors[0].numpy().ravel() for s in sets])
    error = {method: input_rounding(quantize_int8(fp32, sets, method, activations=activations), values)
             for method in ("minmax", "percentile", "mse")}
    assert error["mse"] < min(error["percentile"], error["minmax"])


def test_groups_that_share_a_tensor_share_one_range():
    from rfdeploy.quantize.ranges import shared_ranges

    ranges = {"a": (-1.0, 2.0), "b": (0.0, 5.0), "c": (-3.0, 1.0), "d": (0.0, 0.5), "alone": (0.0, 9.0)}
    shared = shared_ranges(ranges, [["a", "b", "constant"], ["b", "c"], ["d"]])
    assert shared["a"] == shared["b"] == shared["c"] == (-3.0, 5.0)
    assert shared["d"] == (0.0, 0.5) and shared["alone"] == (0.0, 9.0)


def concatenating_model() -> onnx.ModelProto:
    """input -> two convs -> Concat -> conv: the Concat's inputs have ranges of their own."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["input", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["input", "wb"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Conv", ["ab", "wc"], ["output"])]
    graph = helper.make_graph(nodes, "concat", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [weight("wa", (4, 3, 3, 3), 0.1), weight("wb", (4, 3, 3, 3), 3.0),
                               weight("wc", (2, 8, 1, 1), 1.0)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activations", ["uint8", "zero-point-free"])
def test_a_concatenation_reads_and_writes_one_grid(activations):
    from rfdeploy.quantize.int8 import quantize_int8

    sets = calibration_data("random", [(1, 3, 8, 8)], 4).calibration
    model = quantize_int8(concatenating_model(), sets, ops="all", activations=activations)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}
    concat = next(node for node in model.graph.node if node.op_type == "Concat")
    readers = [node for node in model.graph.node if concat.output[0] in node.input]
    grids = {(float(constants[node.input[1]]), int(constants[node.input[2]]))
             for node in [producer[name] for name in concat.input] + readers}
    assert {producer[name].op_type for name in concat.input} == {"DequantizeLinear"}
    assert len(grids) == 1  # the two convs' outputs differ 30-fold in scale, yet one grid


def test_where_the_concatenation_stays_float_each_input_keeps_its_own_grid():
    from rfdeploy.quantize.int8 import quantize_int8

    sets = calibration_data("random", [(1, 3, 8, 8)], 4).calibration
    model = quantize_int8(concatenating_model(), sets, ops="conv-matmul", activations="uint8")
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    scale = {node.input[0]: float(constants[node.input[1]]) for node in model.graph.node
             if node.op_type == "QuantizeLinear" and node.input[0] in ("a", "b")}
    assert scale["b"] > 10 * scale["a"]  # conv b's weights are 30 times conv a's


@pytest.mark.parametrize("backend, zero_point_types", [("onnxruntime", {"uint8"}), ("openvino", {"uint8", "int8"}),
                                                       ("tensorrt", {"int8"})])
def test_int8_tuning_quantizes_each_lowering_in_the_format_of_the_backend_that_times_it(backend, zero_point_types):
    from rfdeploy.tuning.tune import prepared

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
    calibration = [torch.randn(1, 4, 8, 8) for _ in range(3)]
    model = prepared({"layer": module.eval()}, calibration[:1], "int8", calibration, backend)["layer"].onnx_model
    assert model is not None
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    zero_points = [constants[node.input[2]] for node in model.graph.node
                   if node.op_type == "QuantizeLinear" and node.input[0] not in constants]
    assert {str(z.dtype) for z in zero_points} == zero_point_types
    if backend != "onnxruntime":
        assert all(z == 0 for z in zero_points)
