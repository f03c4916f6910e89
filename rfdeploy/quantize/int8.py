"""int8 quantization of the compiled ONNX model: QDQ format, calibrated, after every fp32 pass.

It runs on the compiled graph, where the alphas are folded into the weights and the BatchNorms into the
convs: the naive export of a searched model keeps BatchNorm islands that stay in fp32 between
quantized convs, and alpha multiplies that quantize for nothing (Res2Net-50 on onnxruntime: 1.11x the
compiled int8 model's time; OpenVINO 2026.4 cannot compile it; docs/benchmarks.md).

Formats, chosen by measurement on x86 (Res2Net-50, 224x224, onnxruntime 1.32, 2 threads; the script is in
docs/benchmarks.md): uint8
activations with per-channel int8 weights run at 0.33x of fp32; int8 activations (onnxruntime's
default) at 0.93x, as its int8 x int8 convolutions do not reach the VNNI kernels that uint8 x int8 ones
use. The QDQ file runs as it is on onnxruntime and OpenVINO, and is what TensorRT's explicit
quantization builds int8 engines from.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import onnx
from typing_extensions import Self  # a dependency of torch's

from rfdeploy.backends.onnx_export import graph_inputs
from rfdeploy.compiler.graph_edit import kept_in_fp32
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.measure.verify import InputSet

METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Which ops get QDQ: every op onnxruntime's quantizer supports (so that int8 flows from op to op through
# adds, pools and activations), or the convs and matmuls alone (the rest stays fp32, with a QDQ pair on
# each side of every quantized op). Neither is always faster: on onnxruntime (docs/benchmarks.md) "all"
# took 22.9 ms against 29.8 ms on Res2Net-50 and 44.2 ms against 36.7 ms on ConvNeXt-T, so each export
# times both (``--int8-ops measure``).
OP_SETS: dict[str, tuple[str, ...] | None] = {"all": None, "conv-matmul": QUANTIZED_OPS}


class Int8Quantizer:
    """Quantizes one float model, with any set of nodes kept in fp32: calibration runs once, its tensor
    ranges are cached for every later call (mixed precision tries several sets). The nodes a graph pass
    marked (``graph_edit.keep_in_fp32``: a LayerNormalization spelled out channels-first) always stay fp32."""

    def __init__(self, model: onnx.ModelProto, calibration: Sequence[InputSet], method: str = "minmax"):
        if method not in METHODS:
            raise RFDeployError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
        self.method = method
        self.calibration = list(calibration)
        self.input_names = [value.name for value in graph_inputs(model)]
        self.workdir = tempfile.TemporaryDirectory(prefix="rfdeploy-int8-")
        self.float_path = Path(self.workdir.name) / "float.onnx"
        onnx.save(model, self.float_path)
        self.cache_path = Path(self.workdir.name) / "ranges.json"
        self.quantizable = [node.name for node in model.graph.node if node.op_type in QUANTIZED_OPS]
        self.always_fp32 = kept_in_fp32(model)

    def quantize(self, keep_fp32: Sequence[str] = (), ops: str = "all") -> onnx.ModelProto:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        if ops not in OP_SETS:
            raise RFDeployError(f"unknown set of quantized ops '{ops}' (known: {', '.join(OP_SETS)})")
        op_types = OP_SETS[ops]
        output = Path(self.workdir.name) / "int8.onnx"
        with quiet_onnxruntime_logging():
            try:
                quantize_static(self.float_path, output, InputReader(self.input_names, self.calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=methods[self.method],
                                nodes_to_exclude=list(dict.fromkeys([*self.always_fp32, *keep_fp32])),
                                calibration_cache_path=self.cache_path,
                                op_types_to_quantize=list(op_types) if op_types else None)
            except Exception as error:  # noqa: BLE001  # onnxruntime's quantizer raises many types
                raise RFDeployError(f"int8 quantization failed: {type(error).__name__}: {first_line(error)}") from None
        return onnx.load(output)

    def close(self) -> None:
        self.workdir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def quantize_int8(model: onnx.ModelProto, calibration: Sequence[InputSet], method: str = "minmax",
                  keep_fp32: Sequence[str] = (), ops: str = "all") -> onnx.ModelProto:
    """``model`` in QDQ int8 (uint8 activations, per-channel int8 weights), calibrated on ``calibration``."""
    with Int8Quantizer(model, calibration, method) as quantizer:
        return quantizer.quantize(keep_fp32, ops)


def quantized_nodes(model: onnx.ModelProto) -> int:
    """How many QuantizeLinear nodes a model holds (0: not quantized)."""
    return sum(node.op_type == "QuantizeLinear" for node in model.graph.node)


def int8_compute(model: onnx.ModelProto) -> tuple[int, int]:
    """How many of the model's Conv/MatMul/Gemm nodes compute in int8 (read a DequantizeLinear's output), and
    how many there are: mixed precision can keep every one in fp32, leaving QDQ pairs that quantize nothing."""
    dequantized = {name for node in model.graph.node if node.op_type == "DequantizeLinear" for name in node.output}
    compute = [node for node in model.graph.node if node.op_type in QUANTIZED_OPS]
    return sum(any(name in dequantized for name in node.input) for node in compute), len(compute)


class InputReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over input sets; ``rewind`` lets it read them again."""

    def __init__(self, names: list[str], sets: list[InputSet]):
        self.names, self.sets = names, sets
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.sets):
            return None
        tensors = self.sets[self.position].tensors
        self.position += 1
        return {name: tensor.numpy() for name, tensor in zip(self.names, tensors)}

    def rewind(self) -> None:
        self.position = 0

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
