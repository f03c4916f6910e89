"""int8 quantization of the compiled ONNX model: QDQ format, calibrated, after every fp32 pass.

It runs on the compiled graph, where the alphas are folded into the weights and the BatchNorms into the
convs: the naive export of a searched model keeps BatchNorm islands that stay in fp32 between
quantized convs, and alpha multiplies that quantize for nothing (Res2Net-50 on onnxruntime: 1.11x the
compiled int8 model's time; OpenVINO 2026.4 cannot compile it; docs/benchmarks.md).

Weights are per-channel symmetric int8. Activations take the format of the backend the model is made for
(``precision.ACTIVATION_FORMATS``, named by the backend registry): uint8 for onnxruntime, whose x86 int8
convolutions reach the VNNI kernels with uint8 x int8 operands only; zero points 0 for OpenVINO; symmetric
int8 for TensorRT, the only int8 it builds from QDQ. Every format runs on onnxruntime and OpenVINO as it is.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from typing_extensions import Self  # a dependency of torch's

from rfdeploy.backends.onnx_export import graph_inputs
from rfdeploy.compiler.graph_edit import kept_in_fp32
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.measure.verify import InputSet
from rfdeploy.precision import (
    ACTIVATION_FORMATS,
    INT8_ACTIVATIONS,
    UINT8_ACTIVATIONS,
    ZERO_POINT_FREE_ACTIVATIONS,
)
from rfdeploy.quantize.ranges import least_error_range, shared_ranges

# Activation ranges (--calib-method), each named by the onnxruntime calibrator that reads the tensors. "mse" by
# default: onnxruntime's percentile histograms, each range then set to the least squared error in the activation
# format (``ranges.py``). On natural-image crops it was 0.3-1.0 dB more accurate than the percentile ranges (the
# values between a tensor's 0.0005% and 99.9995% points) in OpenVINO's format and on Res2Net-50, as accurate (within
# 0.2 dB) on ConvNeXt-T in onnxruntime's; percentile was 1.4 dB (Res2Net-50) and 0.7 dB (ConvNeXt-T) more accurate
# than min-max, which lets one outlier value set a tensor's scale (docs/benchmarks.md, "int8 against NNCF").
CALIBRATION_METHODS = {"mse": "Percentile", "percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}
METHODS = tuple(CALIBRATION_METHODS)
DEFAULT_METHOD = "mse"
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# ops that only move values: where they are quantized (the "all" sets), their inputs and outputs share one range
ONE_GRID_OPS = ("Concat", "Split")
# onnxruntime's calibrators keep every tensor of the batches they have read until they reduce them to ranges: fed
# one batch at a time, calibration holds one batch's tensors at any input size (Res2Net-50 on 32 crops at 224x224:
# 0.87 GB and 20 s, against 6.1 GB and 27 s read at once; the same SNR within 0.1 dB; docs/benchmarks.md).
CALIBRATION_CHUNK = 1


@dataclass(frozen=True)
class OpSet:
    """Which nodes get QDQ. ``op_types``: every op onnxruntime's quantizer supports (None: int8 flows from op to
    op through adds, pools and activations, each conv's output quantized), or the convs and matmuls alone (the
    rest stays fp32: their inputs quantized, their outputs only where the activation format needs it,
    ``Int8Activations.conv_outputs``). ``float_input``: the nodes that read a graph input stay fp32, so the
    input itself is never rounded to 8 bits (an image normalised per channel is not on one 8-bit grid)."""

    op_types: tuple[str, ...] | None
    float_input: bool = False

    @property
    def int8_flows(self) -> bool:
        """Whether int8 flows from op to op (every op the quantizer supports is quantized)."""
        return self.op_types is None

    def quantizes_conv_outputs(self, activations: str) -> bool:
        return self.int8_flows or ACTIVATION_FORMATS[activations].conv_outputs


# No one set is always fastest. On onnxruntime (docs/benchmarks.md) "all" took 22.9 ms against 29.8 ms on
# Res2Net-50 and 44.2 ms against 36.7 ms on ConvNeXt-T; a float input layer cost ConvNeXt-T no time and gained it
# 1.2-1.5 dB, and gained Res2Net-50 nothing. Each export times them all where the model will run
# (``--int8-ops measure``).
OP_SETS: dict[str, OpSet] = {
    "all": OpSet(None), "conv-matmul": OpSet(QUANTIZED_OPS),
    "all-float-input": OpSet(None, float_input=True), "conv-matmul-float-input": OpSet(QUANTIZED_OPS, float_input=True),
}


@dataclass(frozen=True)
class CachedRanges:
    """One set of calibrated ranges: the file onnxruntime's quantizer reads them from, and the tensors in it that go
    below 0."""

    path: Path
    signed: tuple[str, ...]


class Int8Quantizer:
    """Quantizes one float model, with any set of nodes kept in fp32: calibration runs once, its tensor
    ranges are cached for every later call (mixed precision tries several sets). The nodes a graph pass
    marked (``graph_edit.keep_in_fp32``: a LayerNormalization spelled out channels-first) always stay fp32."""

    def __init__(self, model: onnx.ModelProto, calibration: Sequence[InputSet], method: str = DEFAULT_METHOD,
                 activations: str = UINT8_ACTIVATIONS.name):
        if method not in METHODS:
            raise RFDeployError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
        if activations not in ACTIVATION_FORMATS:
            raise RFDeployError(f"unknown int8 activation format '{activations}' "
                                f"(known: {', '.join(ACTIVATION_FORMATS)})")
        self.method, self.activations = method, activations
        self.calibration = list(calibration)
        self.input_names = [value.name for value in graph_inputs(model)]
        self.workdir = tempfile.TemporaryDirectory(prefix="rfdeploy-int8-")
        self.float_path = Path(self.workdir.name) / "float.onnx"
        onnx.save(model, self.float_path)
        self.always_fp32 = kept_in_fp32(model)
        self.input_readers = [node.name for node in model.graph.node if set(node.input) & set(self.input_names)]
        # per Concat or Split, the tensors that share one grid where it is quantized
        self.one_grid = [[*node.input, *node.output] for node in model.graph.node if node.op_type in ONE_GRID_OPS]
        self.ranges: dict[bool, CachedRanges] | None = None  # by OpSet.int8_flows, once calibrated

    def quantize(self, keep_fp32: Sequence[str] = (), ops: str = "all") -> onnx.ModelProto:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        if ops not in OP_SETS:
            raise RFDeployError(f"unknown set of quantized ops '{ops}' (known: {', '.join(OP_SETS)})")
        op_set = OP_SETS[ops]
        ranges = self.calibrated()[op_set.int8_flows]
        excluded = [*self.always_fp32, *keep_fp32, *(self.input_readers if op_set.float_input else ())]
        options: dict = {}
        activation_type = QuantType.QUInt8
        if self.activations == INT8_ACTIVATIONS.name:
            activation_type, options["ActivationSymmetric"] = QuantType.QInt8, True
        elif self.activations == ZERO_POINT_FREE_ACTIVATIONS.name:  # the others stay uint8, from 0: zero point 0
            options["TensorQuantOverrides"] = {name: [{"quant_type": QuantType.QInt8, "symmetric": True}]
                                               for name in ranges.signed}
        if not op_set.quantizes_conv_outputs(self.activations):
            options["OpTypesToExcludeOutputQuantization"] = list(QUANTIZED_OPS)
        output = Path(self.workdir.name) / "int8.onnx"
        with quiet_onnxruntime_logging():
            try:  # the ranges come from the cache: quantize_static calibrates nothing here
                quantize_static(self.float_path, output, InputReader(self.input_names, self.calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation_type,
                                weight_type=QuantType.QInt8, calibrate_method=self.calibration_method,
                                nodes_to_exclude=list(dict.fromkeys(excluded)),
                                calibration_cache_path=ranges.path,
                                op_types_to_quantize=list(op_set.op_types) if op_set.op_types else None,
                                extra_options=options)
            except Exception as error:  # noqa: BLE001  # onnxruntime's quantizer raises many types
                raise RFDeployError(f"int8 quantization failed: {type(error).__name__}: {first_line(error)}") from None
        return onnx.load(output)

    @property
    def calibration_method(self) -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return CalibrationMethod[CALIBRATION_METHODS[self.method]]

    def calibrated(self) -> dict[bool, CachedRanges]:
        """Every tensor's range, in the files every quantization reads (calibrated on the first call), by
        ``OpSet.int8_flows``: each tensor's own, and for the sets that quantize ONE_GRID_OPS their inputs and outputs
        on one range.
        onnxruntime's calibrator runs on the float model, all ops, fed one batch at a time; its histograms are of
        values, not of magnitudes (onnxruntime's default for percentile ranges makes them symmetric), so that a
        tensor that is never negative has a range from 0: its uint8 zero point is 0 and it takes no sign bit.
        "mse" then sets each range from its histogram."""
        if self.ranges is not None:
            return self.ranges
        from onnxruntime.quantization import create_calibrator

        reader = InputReader(self.input_names, self.calibration)
        with quiet_onnxruntime_logging():
            try:
                calibrator = create_calibrator(self.float_path, None, str(Path(self.workdir.name) / "augmented.onnx"),
                                               self.calibration_method, extra_options={"symmetric": False})
                for start in range(0, len(self.calibration), CALIBRATION_CHUNK):
                    reader.set_range(start, start + CALIBRATION_CHUNK)
                    calibrator.collect_data(reader)
                ranges = calibrator.compute_data()
            except Exception as error:  # noqa: BLE001  # onnxruntime's calibrators raise many types
                raise RFDeployError(f"int8 calibration failed: {type(error).__name__}: {first_line(error)}") from None
        if self.method == "mse":
            ranges = self.least_error_ranges(ranges, calibrator.collector.histogram_dict)
        self.ranges = {False: self.cached(ranges, "ranges.json"),
                       True: self.cached(self.one_grid_ranges(ranges), "one-grid-ranges.json")}
        return self.ranges

    def cached(self, ranges: Any, file_name: str) -> CachedRanges:
        from onnxruntime.quantization.calibrate import save_tensors_data

        path = Path(self.workdir.name) / file_name
        save_tensors_data(ranges, path)
        return CachedRanges(path, tuple(name for name, data in ranges.data.items()
                                        if float(np.min(data.range_value[0])) < 0))

    def least_error_ranges(self, ranges: Any, histograms: dict) -> Any:
        """``ranges`` with each histogram's range replaced by its least-error one for this quantizer's format."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        data = dict(ranges.data)
        for name, (counts, edges, low, high, *_) in histograms.items():
            lo, hi = least_error_range(counts, edges, float(low), float(high), self.activations)
            data[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        return TensorsData(ranges.calibration_method, data)

    def one_grid_ranges(self, ranges: Any) -> Any:
        """``ranges`` with the inputs and outputs of each Concat and Split on one range (``ranges.shared_ranges``)."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        bounds = {name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
                  for name, data in ranges.data.items()}
        shared = shared_ranges(bounds, self.one_grid)
        return TensorsData(ranges.calibration_method, {
            name: data if shared[name] == bounds[name] else
            TensorData(lowest=np.array(shared[name][0], np.float32), highest=np.array(shared[name][1], np.float32))
            for name, data in ranges.data.items()})

    def close(self) -> None:
        self.workdir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def quantize_int8(model: onnx.ModelProto, calibration: Sequence[InputSet], method: str = DEFAULT_METHOD,
                  keep_fp32: Sequence[str] = (), ops: str = "all", activations: str = UINT8_ACTIVATIONS.name
                  ) -> onnx.ModelProto:
    """``model`` in QDQ int8 (activations as ``activations`` says, per-channel int8 weights), calibrated on
    ``calibration``."""
    with Int8Quantizer(model, calibration, method, activations) as quantizer:
        return quantizer.quantize(keep_fp32, ops)


def quantized_nodes(model: onnx.ModelProto) -> int:
    """How many QuantizeLinear nodes a model holds (0: not quantized)."""
    return sum(node.op_type == "QuantizeLinear" for node in model.graph.node)


def int8_compute(model: onnx.ModelProto) -> tuple[int, int]:
    """How many of the model's Conv/MatMul/Gemm nodes compute in int8 (read their data or weight from a
    DequantizeLinear), and how many there are: mixed precision can keep every one in fp32, leaving QDQ pairs that
    quantize nothing. A bias does not count: a float conv can read a bias quantized for another conv that shares it
    (equal constants are stored once)."""
    dequantized = {name for node in model.graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    compute = [node for node in model.graph.node if node.op_type in QUANTIZED_OPS]
    return sum(any(name in dequantized for name in node.input[:2]) for node in compute), len(compute)


class InputReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over input sets; ``rewind`` lets it read them again."""

    def __init__(self, names: list[str], sets: list[InputSet]):
        self.names, self.sets = names, sets
        self.position = 0
        self.end = len(sets)  # where the current chunk ends

    def get_next(self) -> dict | None:
        if self.position >= min(len(self.sets), self.end):
            return None
        tensors = self.sets[self.position].tensors
        self.position += 1
        return {name: tensor.numpy() for name, tensor in zip(self.names, tensors)}

    def rewind(self) -> None:
        self.position, self.end = 0, len(self.sets)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read ``sets[start_index:end_index]`` next (calibration in chunks)."""
        self.end = end_index
        self.position = start_index

    def __iter__(self) -> Iterator[dict]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


@contextmanager
def quiet_onnxruntime_logging() -> Iterator[None]:
    """onnxruntime's quantizer logs a pre-processing hint on the root logger at every call; rfdeploy's
    graph is already shape-complete and folded. Its calibrators print progress (``Collecting tensor data and
    making histogram ...``): to stderr, as stdout holds ``--json`` output alone."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        root.setLevel(level)
