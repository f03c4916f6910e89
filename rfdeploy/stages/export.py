"""``export`` as declared stages: load, shapes, calibrate, tune, compile, verify, save-io, receptive field,
precision, TensorRT, Triton. Each owns its report keys and the files it writes; ``run_export`` runs them, checks
the output folder first from the files they declare, and writes everything only when every verification passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from rfdeploy.analysis import receptive_field_report
from rfdeploy.artifacts import check_output_file
from rfdeploy.backends import backend, cuda_available, make_runner
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.backends.onnx_export import OPSETS, export_onnx, io_names, op_counts, search_ops_left, signature
from rfdeploy.backends.onnxruntime_backend import OrtRunner
from rfdeploy.compiler.pipeline import LayerReport, LayoutChooser, compile_model, graph_pass_report
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.openmmlab import ConfigFile, read_config
from rfdeploy.loader.sources import Loaded, load, source_name
from rfdeploy.measure.io_files import io_bytes, load_inputs
from rfdeploy.measure.verify import InputSet, Reference, seeded_inputs, verify_on
from rfdeploy.measure.verify_engine import verify_engine
from rfdeploy.precision import precision_of
from rfdeploy.quantize.deploy import (
    INT8_FILE,
    PrecisionRequest,
    PrecisionResult,
    calibration_for,
    check_request,
    deploy,
)
from rfdeploy.serve import triton as triton_repository
from rfdeploy.serve.mmdeploy import END2END, SDK_FILES, MmdeployRequest, check_deploy_config, end2end
from rfdeploy.shapes import shapes_text
from rfdeploy.stages.base import Progress, Run, Stage, check_stages, declared_files, run_stages
from rfdeploy.stages.outputs import Outputs
from rfdeploy.tuning.layout import choose_layout, layout_target

Shape = tuple[int, ...]
MODEL_FILE, ENGINE_FILE = "model.onnx", backend("tensorrt").builds
TARGETS = ("onnxruntime", "openvino", "tensorrt")  # where an exported model runs (``--target``)


@dataclass(frozen=True)
class ExportRequest:
    """What ``export`` was asked for, its flags reconciled (``checked``)."""

    model: object = None  # a source (``loader.sources``), or None: recognised from the checkpoint
    ckpt: object = None
    structure: object = None
    mode: str = "auto"
    input_shapes: list[Shape] | None = None
    opset: int = 17
    dynamic_batch: bool = False
    dynamic_shape: bool = False
    out: Path = Path("rfdeploy-out")
    atol: float = 1e-4
    rtol: float = 1e-4
    seed: int = 0
    choices: dict[str, str] | None = None
    write: bool = True
    tune: str | None = None
    engine: trt_backend.EngineRequest | None = None
    inputs: Path | None = None
    save_io: Path | None = None
    triton: triton_repository.TritonRequest | None = None
    precision: PrecisionRequest | None = None
    mmdeploy: MmdeployRequest | None = None
    threads: int | None = None  # for timing (``--tune``); None: the backend's default
    target: str | None = None  # where the model will run (``--target``): one of TARGETS

    @property
    def lowered(self) -> PrecisionRequest | None:
        """The precision request where it asks for less than fp32."""
        return self.precision if self.precision is not None and self.precision.precision != "fp32" else None

    @property
    def lowered_to(self) -> str:
        return self.lowered.precision if self.lowered is not None else "fp32"

    @property
    def dynamic(self) -> bool:
        return self.dynamic_batch or self.dynamic_shape

    @property
    def tune_precision(self) -> str:
        return self.lowered_to

    def layout_chooser(self, example: list[torch.Tensor], progress: Progress) -> LayoutChooser | None:
        """The graph's layout, timed where the export will run (``tuning.layout``)."""
        lowered = self.lowered
        backend_name, device, precision = layout_target(self.tune, self.target,
                                                        lowered.verify_backends if lowered else (), self.lowered_to)
        return lambda graph: choose_layout(graph, backend_name, example, precision, device, tick=progress)


def check_save_io(path: Path) -> None:
    """``--save-io`` names a regular file that can be written in a folder that exists; the error names the option."""
    try:
        if path.name in ("", ".", ".."):
            raise RFDeployError("names no file")
        check_output_file(path)
    except RFDeployError as error:
        raise RFDeployError(f"--save-io '{path}': {error}") from None


def checked(request: ExportRequest) -> ExportRequest:
    """``request`` with its flags reconciled; what nothing can run fails here, before any work."""
    if request.opset not in OPSETS:
        raise RFDeployError(f"opset {request.opset} is not supported (from {OPSETS.start} to {OPSETS.stop - 1})")
    if request.save_io is not None:
        check_save_io(request.save_io)
    if request.tune:  # an unknown backend, or one that lacks the precision
        from rfdeploy.tuning.tune import parse_target

        parse_target(request.tune, request.lowered_to)
    if request.target is not None:
        check_target(request.target, request.lowered_to, request.engine is not None)
        request = replace(request, precision=replace(request.precision or PrecisionRequest(), target=request.target))
    if request.precision is not None:
        check_request(request.precision, request.engine is not None)
        precision = replace(request.precision, builds_engine=request.engine is not None)
        if request.triton is not None and request.mmdeploy is None and request.engine is None:
            check_served_int8(precision)
        request = replace(request, precision=precision)
    if request.mmdeploy is not None:
        if not isinstance(request.model, ConfigFile):
            raise RFDeployError("--mmdeploy needs --config: mmdeploy builds its inputs and post-processing from the "
                                "model's config")
        scope = read_config(request.model.path).get("default_scope")
        check_deploy_config(request.mmdeploy.deploy_config, scope)
    engine = request.engine
    if request.lowered is not None and engine is not None and request.lowered_to in backend("tensorrt").precisions:
        engine = replace(engine, options=replace(engine.options, precision=request.lowered_to))
    return replace(request, engine=engine)


def check_served_int8(precision: PrecisionRequest) -> None:
    """A Triton repository without an engine serves ``model.int8.onnx`` on Triton's onnxruntime backend."""
    if precision.precision == "int8":
        triton_repository.check_int8_servable(
            precision.activations, f"--triton: the int8 model this export makes for {precision.timed_on[0]}")


def layers_title(searched: list[str], single_branch: list[str], count: int) -> str:
    """What the ``count`` lowered layers are: searched, or (no alphas in the checkpoint) fixed single-branch convs,
    from the names loading found of each."""
    if single_branch and not searched:
        return f"{count} fixed_single_branch layer(s) at the structure's dilations (no alphas in the checkpoint)"
    return f"{count} searched layer(s)"


def check_target(target: str, precision: str, engine: bool) -> None:
    """``--target``: a backend that runs the export's precision and is installed where it runs; TensorRT runs an
    engine, which ``--trt`` builds."""
    if target not in TARGETS:
        raise RFDeployError(f"--target {target}: one of {', '.join(TARGETS)}")
    entry = backend(target)
    try:
        entry.require_precision(precision)
        if entry.builds and not engine:
            raise RFDeployError(f"it runs the {entry.builds} an export builds with --trt: add --trt")
        entry.require(entry.devices[0], precision)
    except RFDeployError as error:
        raise RFDeployError(f"--target {target}: {error}") from None
    if entry.cuda_only and not cuda_available():
        raise RFDeployError(f"--target {target}: it runs on a CUDA GPU, and PyTorch sees none on this machine")


# --- the stages -------------------------------------------------------------------------------------------

def load_stage(run: Run) -> dict:
    request = run.request
    loaded = load(request.model, request.ckpt, request.structure)
    return {"loaded": loaded, "model": loaded.model_name, "model_recognised": loaded.recognised,
            "checkpoint": None if request.ckpt is None else source_name(request.ckpt, "state dict"),
            "structure": loaded.structure_name,
            "load": asdict(loaded.info)}


def shapes_stage(run: Run) -> dict:
    """The export's input shapes (given, the user's inputs', else the model's default), the user's own inputs,
    and a dynamic export's second verification shape; the searched model must run on each. It runs on the first
    verification input at each shape, kept in ``reference`` for verification (a detector's forward takes seconds)."""
    request, loaded = run.request, run["loaded"]
    reference = Reference(loaded.searched)
    count = len(request.input_shapes or loaded.input_shapes or [()])
    own = load_inputs(request.inputs, io_names(count, "input")) if request.inputs else None
    shapes = input_shapes_for(loaded, request.input_shapes or (own.shapes if own else None),
                              reference=reference, seed=request.seed)
    if own is not None:
        check_fits_export(own, shapes, request.dynamic_batch, request.dynamic_shape, str(request.inputs))
    other = other_shapes(shapes, request.dynamic_shape) if request.dynamic else None
    if other is not None:
        input_shapes_for(loaded, other, what="the second verification shape of a dynamic export",
                         reference=reference, seed=request.seed)
    return {"shapes": shapes, "own_inputs": own, "other_shapes": other, "reference": reference}


def calibrate_stage(run: Run) -> dict:
    request, shapes = run.request, run["shapes"]
    calibration = None
    if request.lowered_to == "int8":
        calibration = calibration_for(request.lowered, shapes, request.seed, io_names(len(shapes), "input"))
    return {"calibration": calibration}


def tune_stage(run: Run) -> dict:
    request = run.request
    if not request.tune:
        return {"choices": request.choices, "tuning_result": None, "tuning": None}
    from rfdeploy.tuning.tune import tune_lowerings

    run.progress(f"timing each layer's lowerings on {request.tune} in {request.tune_precision}")
    calibration = run["calibration"] if request.tune_precision == "int8" else None
    tuning = tune_lowerings(run["loaded"].searched, run["shapes"], request.tune, threads=request.threads,
                            tick=lambda layer: run.progress(f"tuned {layer}"), precision=request.tune_precision,
                            calibration=calibration.calibration if calibration else None)
    return {"choices": {**tuning.choices, **(request.choices or {})}, "tuning_result": tuning, "tuning": tuning.to_json()}


def compile_stage(run: Run) -> dict:
    """The compiled model, exported and through the graph pipelines, its layout chosen for where it will run. The
    exporter traces the compiled model on the first verification input, a forward of the real ops: its outputs are
    kept for the compiled model's check (``compiled_forward``). The searched forward's return value names the
    outputs (the compiled model's forward code is the searched one's), so the compiled model runs once."""
    request, shapes = run.request, run["shapes"]
    first = seeded_inputs(shapes, request.seed, trials=1)[0]
    example, forwards = list(first.tensors), {}

    def export(model: nn.Module) -> onnx.ModelProto:
        forward = forwards["compiled"] = Reference(model, name="torch-compiled")
        with forward.watching(first):
            return export_onnx(model, example, request.opset, request.dynamic_batch, request.dynamic_shape,
                               returned=run["reference"].structure)

    result = compile_model(run["loaded"].searched, request.mode, choices=run["choices"], input_shapes=shapes,
                           export=export, layout=request.layout_chooser(example, run.progress))
    onnx_model = result.onnx_model
    assert onnx_model is not None
    if request.write:
        run.files[request.out / MODEL_FILE] = onnx_model.SerializeToString  # serialised when written
    return {"compiled": result, "onnx_model": onnx_model, "compiled_forward": forwards["compiled"],
            "mode": request.mode, "opset": request.opset,
            "layers": [layer.to_json() for layer in result.layers],
            "involutions": [asdict(involution) for involution in result.involutions],
            "folded_batchnorms": len(result.folded_batchnorms), "batchnorm_note": result.batchnorm_note,
            "graph_passes": graph_pass_report(result.graph_passes), "layout": result.layout,
            "onnx_ops": op_counts(onnx_model), "onnx": onnx_file_facts(onnx_model, result.layers, request.ckpt),
            "search_ops_left": search_ops_left(onnx_model)}


def verify_stage(run: Run) -> dict:
    """The ONNX model in onnxruntime and the compiled torch model, each against the searched forward; a dynamic
    ONNX model at its second shape too; the fp32 model on each ``--verify-backends`` backend. The compiled torch
    model is checked on the first input set only, on the outputs of the exporter's forward (``compile_stage``): the
    ONNX model, traced from it, is checked on every set, and a forward at a detector's size takes seconds."""
    request, shapes = run.request, run["shapes"]
    reference = run["reference"]  # each input's searched forward runs once, for every check
    own = run["own_inputs"]
    trials, note = seeded_trials(shapes)
    sets = seeded_inputs(shapes, request.seed, trials) + ([own] if own else [])
    other_sets = seeded_inputs(run["other_shapes"], request.seed, seeded_trials(run["other_shapes"])[0]
                               ) if run["other_shapes"] else []
    also_on = fp32_checks(request.precision) if request.lowered is None else ()
    onnx_model, tolerances = run["onnx_model"], (request.atol, request.rtol, request.seed)
    with OrtRunner(onnx_model, threads=0) as onnx_runner:
        ort_check = verify_on(onnx_runner, reference, sets, *tolerances)
        other_check = verify_at_second_shape(onnx_runner, reference, other_sets, tolerances)
    torch_check = verify_on(run["compiled_forward"], reference, sets[:1], *tolerances)
    elsewhere = []
    for name in also_on:
        with make_runner(name, None, [], threads=0, onnx_model=onnx_model) as runner:
            elsewhere.append(verify_on(runner, reference, sets, *tolerances))
    checks = [ort_check, torch_check, *elsewhere] + ([other_check] if other_check else [])
    run.passed = all(check.passed for check in checks) and not run.report["search_ops_left"]
    verification = ort_check.to_json() | {
        "note": note, "onnxruntime_passed": ort_check.passed, "torch": torch_check.to_json(),
        "other_shapes": other_check.to_json() if other_check else None,
        "backends": [check.to_json() for check in elsewhere], "passed": run.passed}
    return {"sets": sets, "other_sets": other_sets, "verification": verification}


ONE_TRIAL_FROM = 1_000_000  # input values per set from which one seeded set is verified on, not two


def seeded_trials(shapes: list[Shape]) -> tuple[int, str | None]:
    """How many seeded input sets to verify on, and why fewer than two: past a million input values, a set already
    compares every weight at that many positions, and a second one costs a searched forward and an ONNX run at a
    detector's size (tens of seconds). What it would add, another draw of a data-dependent branch, is lost."""
    values = sum(math.prod(shape) for shape in shapes)
    if values < ONE_TRIAL_FROM:
        return 2, None
    return 1, (f"one seeded input set: it holds {values} values, past {ONE_TRIAL_FROM}, where a second set costs "
               f"another searched forward and ONNX run")


def fp32_checks(precision: PrecisionRequest | None) -> tuple[str, ...]:
    """The backends an fp32 export is checked on besides onnxruntime: ``--verify-backends``, else the target."""
    if precision is None:
        return ()
    return precision.backends or tuple(name for name in precision.target_checks if name != "onnxruntime")


def verify_at_second_shape(runner: OrtRunner, reference: Reference, sets: list[InputSet], tolerances: tuple):
    """A dynamic export at its second shape: a graph that bakes a size in (a Reshape to the export's size) does not
    run there, which is the failure this check exists to catch."""
    if not sets:
        return None
    try:
        return verify_on(runner, reference, sets, *tolerances)
    except Exception as error:  # noqa: BLE001  # onnxruntime's own error, raised from inside its session
        raise RFDeployError(f"the dynamic export does not run at its second verification shape "
                            f"{shapes_text(sets[0].shapes)}: {first_line(error)} (a forward that turns a size into "
                            f"a constant, such as int(x.shape[2]), fixes the graph to the export shape)") from None


def joins_verification(run: Run, passed: bool) -> None:
    """A later check's verdict (precision, engine, mmdeploy) joins the export's: the run's and the report's."""
    run.passed = run.passed and passed
    run.report["verification"]["passed"] = run.passed


def save_io_stage(run: Run) -> dict:
    request, sets = run.request, run["sets"] + run["other_sets"]
    output_names = [value.name for value in run["onnx_model"].graph.output]
    input_names = io_names(len(run["shapes"]), "input")
    run.files[request.save_io] = io_bytes(sets, run["reference"], input_names, output_names)
    return {}


def receptive_field_stage(run: Run) -> dict:
    shapes = run["shapes"]
    field_report = (receptive_field_report(run["compiled"].model, shapes[0]) if len(shapes) == 1
                    else {"error": "receptive-field analysis takes single-input models"})
    return {"receptive_field": field_report}


def precision_stage(run: Run) -> dict:
    request = run.request
    result = deploy(request.lowered, run["onnx_model"], run["reference"], run["shapes"], request.seed, run["sets"],
                    run.progress, run["calibration"])
    if result.model is not None:
        run.files[request.out / INT8_FILE] = result.model.SerializeToString()
    joins_verification(run, result.passed)
    return {"deployed": result, "precision": result.to_json() | {"warnings": result.warnings}}


def tensorrt_stage(run: Run) -> dict:
    request = run.request
    deployed: PrecisionResult | None = run.values.get("deployed")
    source, source_file = run["onnx_model"], MODEL_FILE
    if deployed is not None and deployed.model is not None:
        source, source_file = deployed.model, INT8_FILE
    engine_request = trt_backend.with_export_shapes(request.engine, source, run["shapes"], run["other_shapes"])
    engine = trt_backend.build(source.SerializeToString(), engine_request, source_file)
    check = verify_engine(engine, run["reference"], request.atol, request.rtol, request.seed,
                          request.lowered.min_snr_db if request.lowered else None,
                          deployed.held_out if deployed is not None else None)
    run.files.update({request.out / name: data for name, data in engine.files(ENGINE_FILE).items()})
    joins_verification(run, check.passed)
    return {"engine": engine, "tensorrt": {"sidecar": engine.sidecar.to_json(), "verification": check.to_json()}}


def mmdeploy_stage(run: Run) -> dict:
    """mmdeploy's end2end model of the compiled model and its SDK files, verified against the searched model's
    post-processed output (``serve.mmdeploy``)."""
    request, loaded = run.request, run["loaded"]
    deploy_cfg = check_deploy_config(request.mmdeploy.deploy_config, loaded.config.get("default_scope"))
    files, check = end2end(run["compiled"].model, loaded.searched, loaded.config, deploy_cfg, run["shapes"][0],
                           request.seed, None if request.ckpt is None else str(request.ckpt))
    run.files.update({request.out / name: data for name, data in files.items()})
    joins_verification(run, check["passed"] is not False)
    return {"end2end": files[END2END], "mmdeploy": check}


def triton_stage(run: Run) -> dict:
    deployed: PrecisionResult | None = run.values.get("deployed")
    int8 = deployed.model if deployed is not None else None
    if "end2end" in run.values:  # the detector as mmdeploy serves it: its post-processing in the graph
        served = triton_repository.served_onnx(run["end2end"], f"mmdeploy's {END2END}")
    else:
        served = triton_repository.served_export(int8 if int8 is not None else run["onnx_model"],
                                                 run.values.get("engine"), run["tuning_result"])
    triton = run.request.triton
    if triton.name is None:  # named after the exported model
        triton = replace(triton, name=triton_repository.default_name(run["loaded"].model_name))
    plan = triton_repository.plan_repository(triton, served)
    return {"triton_plan": plan, "triton": plan.to_json()}


def _under_out(*names: str):
    return lambda request: tuple(request.out / name for name in names if name)


# The stages ``bench`` runs too.
LOAD = Stage("load", load_stage, adds=("loaded",), report=("model", "model_recognised", "checkpoint", "structure", "load"),
             progress="loading")
SHAPES = Stage("shapes", shapes_stage, needs=("loaded",), adds=("shapes", "own_inputs", "other_shapes", "reference"))
CALIBRATE = Stage("calibrate", calibrate_stage, needs=("shapes",), adds=("calibration",))
TUNE = Stage("tune", tune_stage, needs=("loaded", "shapes", "calibration"), adds=("choices", "tuning_result"),
             report=("tuning",))
COMPILE = Stage("compile", compile_stage, needs=("loaded", "shapes", "choices", "reference"),
                adds=("compiled", "onnx_model", "compiled_forward"),
                report=("mode", "opset", "layers", "involutions", "folded_batchnorms", "batchnorm_note",
                        "graph_passes", "layout", "onnx_ops", "onnx", "search_ops_left"),
                files=_under_out(MODEL_FILE),
                progress="compiling and exporting ONNX")
EXPORT_STAGES = check_stages((
    LOAD, SHAPES, CALIBRATE, TUNE, COMPILE,
    Stage("verify", verify_stage, needs=("reference", "compiled_forward", "onnx_model", "shapes", "own_inputs",
                                         "other_shapes"),
          adds=("sets", "other_sets"), report=("verification",), progress="verifying in onnxruntime"),
    Stage("save_io", save_io_stage, needs=("reference", "sets", "other_sets", "onnx_model"), verified=True,
          when=lambda request: request.save_io is not None, files=lambda request: () if request.save_io is None else (request.save_io,),
          progress="writing the verification inputs and outputs"),
    Stage("receptive_field", receptive_field_stage, needs=("compiled", "shapes"), report=("receptive_field",),
          progress="analysing receptive fields"),
    Stage("precision", precision_stage, needs=("onnx_model", "reference", "shapes", "sets", "calibration"),
          adds=("deployed",), report=("precision",), verified=True, when=lambda request: request.lowered is not None,
          files=lambda request: _under_out(precision_of(request.lowered_to).artifact)(request),
          progress="deploying at the lower precision"),
    Stage("tensorrt", tensorrt_stage, needs=("onnx_model", "reference", "shapes", "other_shapes"), adds=("engine",),
          report=("tensorrt",), verified=True, when=lambda request: request.engine is not None,
          files=_under_out(ENGINE_FILE, ENGINE_FILE + trt_backend.SIDECAR_SUFFIX),
          progress="building and verifying the TensorRT engine (minutes for a large model)"),
    Stage("mmdeploy", mmdeploy_stage, needs=("loaded", "compiled", "shapes"), adds=("end2end",),
          report=("mmdeploy",), verified=True,
          when=lambda request: request.mmdeploy is not None, files=_under_out(END2END, *SDK_FILES),
          progress="exporting the end2end model with mmdeploy and verifying it"),
    Stage("triton", triton_stage, needs=("loaded", "onnx_model", "tuning_result"), adds=("triton_plan",), report=("triton",), verified=True,
          when=lambda request: request.triton is not None, progress="planning the Triton repository"),
))
# Every artifact name an export can write in its folder, as its stages declare them for a request that asks for every
# artifact: it owns them, and removes those this run does not write.
_EVERYTHING = ExportRequest(out=Path("."), engine=trt_backend.EngineRequest(), precision=PrecisionRequest("int8"),
                            mmdeploy=MmdeployRequest(Path("deploy.py")))
OWNED_FILES = tuple(path.name for path in declared_files(EXPORT_STAGES, _EVERYTHING) if path.parent == Path("."))


@dataclass
class ExportResult:
    report: dict
    onnx_model: onnx.ModelProto
    compiled: nn.Module
    out_dir: Path
    engine: trt_backend.BuiltEngine | None = None
    triton: triton_repository.RepositoryPlan | None = None
    precision: PrecisionResult | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["verification"]["passed"])


def run_export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """Every export stage that applies to ``request``; the outputs written when every verification passed."""
    request = checked(request)
    outputs = Outputs(request.out, OWNED_FILES, EXPORT_STAGES, request) if request.write else None
    run = run_stages(EXPORT_STAGES, Run(request, progress or (lambda message: None)))
    run.report["stage_seconds"] = run.seconds
    result = ExportResult(run.report, run["onnx_model"], run["compiled"].model, Path(request.out),
                          run.values.get("engine"), run.values.get("triton_plan"), run.values.get("deployed"))
    if outputs is not None:
        served = triton_repository.write_repository(result.triton) if run.passed and result.triton else []
        result.written = outputs.write(run) + served
    return result


# --- shapes and facts -------------------------------------------------------------------------------------

def onnx_file_facts(onnx_model: onnx.ModelProto, layers: list[LayerReport], checkpoint: object = None) -> dict:
    """What a serving process needs to know of ``model.onnx``: its I/O signature and its size."""
    multi = sum(layer.lowering == "multi" for layer in layers)
    compared = "than the checkpoint" if checkpoint is not None else "than a single-branch model's"
    note = (f"{multi} layer(s) lowered to one conv per branch hold one weight copy per branch, so the file is "
            f"larger {compared}" if multi else None)
    return {**signature(onnx_model), "file_bytes": onnx_model.ByteSize(), "size_note": note}


def other_shapes(shapes: list[Shape], dynamic_shape: bool) -> list[Shape]:
    """The second shape a dynamic export is verified at: one more in the batch, and with ``dynamic_shape``
    every dim after the channels halved (rounded up: cheap at detector sizes, and still a different size)."""
    return [(shape[0] + 1, *shape[1:2], *((d + 1) // 2 if dynamic_shape else d for d in shape[2:]))
            for shape in shapes]


def check_fits_export(own: InputSet, shapes: list[Shape], dynamic_batch: bool, dynamic_shape: bool,
                      path: str) -> None:
    """The user's inputs must fit the exported graph: its shapes, up to what the export makes symbolic."""
    def fits(given: Shape, exported: Shape) -> bool:
        free = len(given) if dynamic_shape else 1 if dynamic_batch else 0
        return len(given) == len(exported) and given[1:2] == exported[1:2] and given[free:] == exported[free:]

    if len(own.shapes) != len(shapes) or not all(map(fits, own.shapes, shapes)):
        raise RFDeployError(f"{path}: inputs of shape {shapes_text(own.shapes)} do not fit the export at "
                            f"{shapes_text(shapes)}; export at their shape (--input-shape) or with --dynamic-shape")


def input_shapes_for(loaded: Loaded, given: list[Shape] | None, what: str = "input shape",
                     reference: Reference | None = None, seed: int = 0) -> list[Shape]:
    """The given input shapes, else the model's default; the searched model must run on them, on the first
    verification input of ``seed`` (its outputs kept in ``reference``, where given)."""
    shapes = given or loaded.input_shapes
    if not shapes:
        raise RFDeployError(f"model '{loaded.model_name}' has no default input shape; give --input-shape")
    try:
        (reference or Reference(loaded.searched)).outputs(seeded_inputs(shapes, seed, trials=1)[0])
    except Exception as error:  # noqa: BLE001  # any failure of the user's model on this shape
        raise RFDeployError(f"model '{loaded.model_name}' does not run on {what} {shapes_text(shapes)}: "
                            f"{first_line(error)}") from None
    return shapes
