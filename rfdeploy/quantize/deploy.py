"""The compiled model at a lower precision, verified against the searched fp32 model.

After the exact fp32 export is verified, ``deploy`` makes and checks the ``--precision`` artifact:

- int8: the compiled ONNX model quantized (QDQ, ``rfdeploy.quantize.int8``) on the calibration
  batches, written as ``model.int8.onnx``; with ``--min-snr`` and a miss, the costliest tensors are kept
  in fp32 until the target is met (``mixed_precision``);
- bf16: the fp32 ONNX model run by OpenVINO in bf16 (a runtime setting: no file of its own);
- fp16: TensorRT's fp16 engine (built by ``export --trt``; nothing to do here).

Each backend that runs it is checked on held-out inputs by SNR against the searched fp32 forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from rfdeploy.backends import backend, make_runner
from rfdeploy.backends.onnx_export import graph_inputs
from rfdeploy.errors import RFDeployError
from rfdeploy.measure.timing import Candidate, Tick, decide, opened_runners, timed_rounds
from rfdeploy.measure.verify import InputSet, Reference, Verification, compare_on, finite_db, verify_on
from rfdeploy.precision import ACTIVATION_FORMATS, INT8, check_precision, min_snr_for, precision_of
from rfdeploy.quantize.calibration import (
    CalibrationData,
    ImagePreprocess,
    calibration_data,
    require_calibration,
)
from rfdeploy.quantize.int8 import (
    DEFAULT_METHOD,
    OP_SETS,
    QUANTIZED_OPS,
    Int8Quantizer,
    int8_compute,
    quantized_nodes,
)
from rfdeploy.quantize.mixed_precision import RANKINGS, reach_snr

INT8_FILE = INT8.artifact
MEASURE = "measure"


@dataclass(frozen=True)
class PrecisionRequest:
    """``--precision`` and what goes with it: calibration (int8), the SNR to reach, where to verify."""

    precision: str = "fp32"
    calib: str | None = None  # a path, or "random"
    calib_count: int = 32
    calib_method: str = DEFAULT_METHOD
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    min_snr_db: float | None = None  # None: the precision's default, and no mixed precision
    backends: tuple[str, ...] = ()  # () : the precision's own ``verified_on``
    int8_ops: str = MEASURE  # one of OP_SETS, or MEASURE: each timed where the model will run, one kept
    ranking: str = "output"  # how mixed precision ranks tensors (``mixed_precision.RANKINGS``)
    target: str | None = None  # where the model will run (the export's ``--target``), None: not said
    builds_engine: bool = False  # a TensorRT engine is built from the int8 model (``--trt``)

    def __post_init__(self) -> None:
        check_precision(self.precision)

    @property
    def target_db(self) -> float | None:
        return min_snr_for(self.precision, self.min_snr_db)

    @property
    def verify_backends(self) -> tuple[str, ...]:
        """``--verify-backends``, else the target where it checks this precision's ONNX model, else the
        precision's own ``verified_on``."""
        return self.backends or self.target_checks or precision_of(self.precision).verified_on

    @property
    def target_checks(self) -> tuple[str, ...]:
        """The target, where it runs this precision's ONNX model on the CPU (TensorRT checks its own engine)."""
        runs = self.target is not None and "cpu" in backend(self.target).devices and \
            self.precision in backend(self.target).precisions
        return (self.target,) if runs and self.target is not None else ()

    @property
    def activations(self) -> str:
        """How the int8 model stores activations: as TensorRT needs where an engine is built from it, else as the
        backend it is made for (the one its op set is timed on) runs fastest."""
        return backend("tensorrt" if self.builds_engine else self.timed_on[0]).int8_activations

    @property
    def timed_on(self) -> tuple[str, str]:
        """Where the int8 op set is timed: ``(backend, device)``, the target's, else the first verification
        backend's."""
        if self.target is not None:
            return self.target, backend(self.target).devices[0]
        return self.verify_backends[0], "cpu"


@dataclass
class PrecisionResult:
    precision: str
    target_db: float | None
    checks: list[Verification]
    calibration: CalibrationData | None = None
    model: onnx.ModelProto | None = None  # the int8 model, to write as INT8_FILE
    mixed: dict | None = None
    ops: dict | None = None  # which ops were quantized, and (measured) why
    warnings: list[str] = field(default_factory=list)
    calib_method: str | None = None  # how activation ranges were set (int8)
    activations: str | None = None  # how the int8 model stores activations (``precision.ACTIVATION_FORMATS``)

    @property
    def passed(self) -> bool:
        """Every check passed; an int8 model must compute something in int8."""
        in_int8 = self.model is None or int8_compute(self.model)[0] > 0
        return in_int8 and all(check.passed for check in self.checks)

    def int8_share(self) -> dict | None:
        """How much of the int8 model computes in int8: its Conv/MatMul/Gemm nodes that do, of all."""
        if self.model is None:
            return None
        in_int8, compute = int8_compute(self.model)
        return {"int8_nodes": in_int8, "compute_nodes": compute, "op_types": list(QUANTIZED_OPS)}

    @property
    def held_out(self) -> list[InputSet] | None:
        return self.calibration.held_out if self.calibration else None

    def to_json(self) -> dict:
        return {"precision": self.precision, "min_snr_db": self.target_db,
                "file": INT8_FILE if self.model is not None else None,
                "quantized_nodes": quantized_nodes(self.model) if self.model is not None else None,
                "int8_share": self.int8_share(),
                "calibration": ({**self.calibration.to_json(), "method": self.calib_method} if self.calibration
                                else None),
                "activations": None if self.activations is None else
                {"format": self.activations, "why": ACTIVATION_FORMATS[self.activations].why},
                "quantized_ops": self.ops, "mixed_precision": self.mixed,
                "checks": [check.to_json() for check in self.checks],
                "passed": self.passed}


def check_request(request: PrecisionRequest, engine: bool) -> None:
    """Refuse, before any work, a precision nothing will run."""
    if request.precision == "fp16" and not engine:
        raise RFDeployError("--precision fp16 deploys a TensorRT engine: add --trt (onnxruntime runs fp32 and int8, "
                            "OpenVINO fp32, bf16 and int8)")
    if request.int8_ops not in (MEASURE, *OP_SETS):
        raise RFDeployError(f"--int8-ops {request.int8_ops}: one of {MEASURE}, {', '.join(OP_SETS)}")
    if request.ranking not in RANKINGS:
        raise RFDeployError(f"--rank-by {request.ranking}: one of {', '.join(RANKINGS)}")
    if request.precision == "fp32" and request.min_snr_db is not None:
        raise RFDeployError("--min-snr judges a lower --precision; fp32 is held to --atol and --rtol")
    if request.precision == "int8":
        require_calibration(request.calib)
    if request.precision != "int8" and request.calib is not None:
        raise RFDeployError(f"--calib calibrates int8; --precision is {request.precision}")
    for name in request.verify_backends:
        backend(name).require("cpu", request.precision)
        if not backend(name).runs_onnx:
            raise RFDeployError(f"--verify-backends {name}: it runs the torch module; the exported model is checked "
                                f"on ONNX backends")


def calibration_for(request: PrecisionRequest, shapes: list[tuple[int, ...]], seed: int,
                    input_names: list[str]) -> CalibrationData:
    return calibration_data(request.calib, shapes, request.calib_count, seed, request.preprocess, input_names)


def deploy(request: PrecisionRequest, compiled_onnx: onnx.ModelProto, reference: Reference,
           shapes: list[tuple[int, ...]], seed: int, fallback_sets: list[InputSet], tick: Tick | None = None,
           data: CalibrationData | None = None) -> PrecisionResult:
    """The ``request.precision`` artifact of ``compiled_onnx``, checked on every verification backend
    (int8: calibrated on ``data``, else on the data ``request`` names)."""
    step = tick or (lambda text: None)
    target = request.target_db
    if request.precision != "int8":
        checks = [_check(name, compiled_onnx, request.precision, reference, fallback_sets, seed, target)
                  for name in request.verify_backends]
        return PrecisionResult(request.precision, target, checks)
    if data is None:
        data = calibration_for(request, shapes, seed, [value.name for value in graph_inputs(compiled_onnx)])
    first = request.verify_backends[0]

    def snr_of(model: onnx.ModelProto) -> float:
        with make_runner(first, None, [], threads=0, onnx_model=model, precision="int8") as runner:
            return compare_on(runner, reference, data.held_out).snr_db

    step(f"calibrating on {len(data.calibration)} batch(es) ({request.calib_method}) and quantizing")
    with Int8Quantizer(compiled_onnx, data.calibration, request.calib_method, request.activations) as quantizer:
        if request.int8_ops == MEASURE:
            timed_on, device = request.timed_on
            step(f"timing the int8 model with each set of quantized ops on {timed_on}")
            model, ops = measured_op_set(quantizer, timed_on, reference, data.held_out, device=device)
        else:
            model, ops = quantizer.quantize(ops=request.int8_ops), {"kept": request.int8_ops, "why": "--int8-ops"}
        ops["conv_outputs"] = OP_SETS[ops["kept"]].quantizes_conv_outputs(request.activations)
        mixed = None
        if request.min_snr_db is not None:
            found = reach_snr(quantizer, compiled_onnx, snr_of, request.min_snr_db, data.held_out, step, ops["kept"],
                              request.ranking, model)
            model, mixed = found.model, found.to_json()
    checks = [_check(name, model, "int8", reference, data.held_out, seed, target) for name in request.verify_backends]
    return PrecisionResult("int8", target, checks, data, model, mixed, ops, list(data.warnings), request.calib_method,
                           request.activations)


def measured_op_set(quantizer: Int8Quantizer, backend_name: str, reference: Reference, held_out: list[InputSet],
                    warmup: int = 3, iters: int = 10, device: str = "cpu") -> tuple[onnx.ModelProto, dict]:
    """Each of ``OP_SETS`` quantized, scored and timed interleaved on ``backend_name``; the one
    ``measure.timing.decide`` keeps (the simpler graph: fewer nodes), and the record of the choice."""
    models = {name: quantizer.quantize(ops=name) for name in OP_SETS}
    example = list(held_out[0].tensors)
    timed = {name: Candidate(None, model) for name, model in models.items()}
    with opened_runners(timed, backend_name, example, device, precision="int8") as runners:
        snr = {name: finite_db(compare_on(runner, reference, held_out).snr_db) for name, runner in runners.items()}
        samples = timed_rounds(runners, example, warmup, iters, device)
    simplest_first = sorted(models, key=lambda name: len(models[name].graph.node))
    decision = decide(samples, simplest_first, snr)
    return models[decision.kept], {**decision.to_json(), "backend": backend_name, "device": device,
                                   "nodes": {name: len(model.graph.node) for name, model in models.items()}}


def _check(name: str, model: onnx.ModelProto, precision: str, reference: Reference, sets: list[InputSet], seed: int,
           target: float | None) -> Verification:
    with make_runner(name, None, [], threads=0, onnx_model=model, precision=precision) as runner:
        return verify_on(runner, reference, sets, seed=seed, precision=precision, min_snr_db=target)
