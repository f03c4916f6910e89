"""The Python API, mirroring the CLI: ``load`` -> ``compile`` -> ``export``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from rfdeploy.analysis import receptive_field_report
from rfdeploy.artifacts import check_output_dir, write_all
from rfdeploy.backends import make_runner
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.backends.onnx_export import OPSETS, export_onnx, io_names, op_counts, search_ops_left, signature
from rfdeploy.backends.onnxruntime_backend import OrtRunner
from rfdeploy.backends.torch_backend import TorchRunner
from rfdeploy.compiler.passes.fold_channel_scales import boundaries_after
from rfdeploy.compiler.pipeline import LayerReport, compile_model, graph_pass_report, run_graph_passes
from rfdeploy.compiler.rewrite_onnx import compile_graph
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader import recognise
from rfdeploy.loader.checkpoint import (
    StateDict,
    TrainingProgress,
    progress_of,
    read_checkpoint,
    state_dict_of,
)
from rfdeploy.loader.in_memory import adopt_search_ops, search_ops
from rfdeploy.loader.involution import involution_layers
from rfdeploy.loader.onnx_graph import check_onnx, read_onnx
from rfdeploy.loader.provenance import note_provenance, weights_origin
from rfdeploy.loader.searched_model import LoadInfo, build_searched, load_model
from rfdeploy.loader.structure import Structure, load_structure, parse_structure
from rfdeploy.measure.io_files import load_inputs
from rfdeploy.measure.io_files import save_io as write_io
from rfdeploy.measure.verify import InputSet, Reference, random_inputs, seeded_inputs, verify_on
from rfdeploy.measure.verify_engine import verify_engine
from rfdeploy.measure.verify_onnx import input_shapes as graph_input_shapes
from rfdeploy.measure.verify_onnx import verify_graphs
from rfdeploy.quantize.deploy import (
    INT8_FILE,
    PrecisionRequest,
    PrecisionResult,
    calibration_for,
    check_request,
    deploy,
)
from rfdeploy.serve import triton as triton_repository
from rfdeploy.tuning.layout import choose_layout, layout_target

FAILED_REPORT = "failed-report.json"


@dataclass
class Loaded:
    """A searched model ready to compile: the model, where it came from, and its default input shape."""

    searched: nn.Module
    info: LoadInfo
    model_name: str
    input_shapes: list[tuple[int, ...]] | None
    recognised: bool = False


def load(model: str | nn.Module | None = None, ckpt: str | Path | Mapping | None = None,
         structure: str | Path | Mapping | None = None) -> Loaded:
    """The searched model from a zoo name / ``module:callable`` / module, a checkpoint and a structure file.

    ``model`` may also hold its search ops already (mmcv's ``RFSearchHook.init_model``, ``RFConv2d``, G2L):
    they are read in place and need no files. ``ckpt`` may be a state dict, ``structure`` the structure
    file's data (a dict), instead of paths.
    """
    state, progress = _checkpoint(ckpt)
    parsed = _structure(structure)
    ckpt_name = source_name(ckpt, "state dict")
    recognised = model is None
    if recognised:
        if state is None:
            raise RFDeployError("--model is needed when no checkpoint is given")
        model = recognise.zoo_model_of(state, ckpt_name)
    if isinstance(model, str):
        plain, default_shape = load_model(model)
        name = model
    elif isinstance(model, nn.Module):
        plain, default_shape, name = model.eval(), getattr(model, "default_input_shape", None), type(model).__name__
    else:
        raise RFDeployError(f"model must be a zoo name, 'package.module:callable' or an nn.Module, not {model!r}")
    shapes = [tuple(default_shape)] if default_shape else None
    if search_ops(plain):
        return Loaded(*_adopt(plain, name, state is not None or parsed is not None), name, shapes, recognised)
    searched, info = build_searched(plain, parsed, state, ckpt_name)
    note_provenance(info, weights_origin(model, state is not None), parsed, progress, ckpt_name,
                    len(involution_layers(searched)))
    return Loaded(searched, info, name, shapes, recognised)


def source_name(source, kind: str) -> str:
    """A file's path, or ``<KIND>`` for data handed over in memory."""
    return f"<{kind}>" if isinstance(source, Mapping) else str(source)


def _structure(structure: str | Path | Mapping | None) -> Structure | None:
    if structure is None:
        return None
    if isinstance(structure, Mapping):
        return parse_structure(dict(structure))
    if not isinstance(structure, (str, Path)):
        raise RFDeployError(f"structure must be a path or a structure dict, not {type(structure).__name__}")
    return load_structure(structure)


def _checkpoint(ckpt: str | Path | Mapping | None) -> tuple[StateDict | None, TrainingProgress]:
    if ckpt is None:
        return None, TrainingProgress()
    if isinstance(ckpt, Mapping):
        return state_dict_of(dict(ckpt), Path(source_name(ckpt, "state dict"))), progress_of(dict(ckpt))
    if not isinstance(ckpt, (str, Path)):
        raise RFDeployError(f"ckpt must be a path or a state dict, not {type(ckpt).__name__}")
    return read_checkpoint(ckpt)


def _adopt(model: nn.Module, name: str, files_given: bool) -> tuple[nn.Module, LoadInfo]:
    """A model that holds its search ops already: those ops, read in place."""
    if files_given:
        first = next(iter(search_ops(model)))
        raise RFDeployError(f"model '{name}' already holds search ops (e.g. '{first}') with their own rates and "
                            f"alphas; give it without a checkpoint or structure file")
    searched, formats = adopt_search_ops(model)
    kinds = sorted(set(formats.values()))
    info = LoadInfo(checkpoint_format="in-memory " + "+".join(kinds), searched=list(formats), weights="model")
    return searched, info


def compile(model: str | nn.Module | None = None, ckpt=None, structure=None, mode: str = "auto",
            fold_bn: bool = True, choices: dict[str, str] | None = None) -> nn.Module:
    """The compiled plain-conv model (no search op left), as a torch module."""
    return compile_model(load(model, ckpt, structure).searched, mode, fold_bn, choices).model


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


def export(model: str | nn.Module | None = None, ckpt=None, structure=None, mode: str = "auto",
           input_shapes: list[tuple[int, ...]] | None = None, opset: int = 17, dynamic_batch: bool = False,
           out: str | Path = "rfdeploy-out", atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
           choices: dict[str, str] | None = None, write: bool = True, progress=None,
           tune: str | None = None, engine: trt_backend.EngineRequest | None = None, dynamic_shape: bool = False,
           inputs: str | Path | None = None, save_io: str | Path | None = None,
           triton: triton_repository.TritonRequest | None = None,
           precision: PrecisionRequest | None = None) -> ExportResult:
    """Compile, export to ONNX, verify in onnxruntime against the searched forward, write on success.

    With ``engine``, also build a TensorRT engine from the verified ONNX and verify it against the
    searched forward too (report key ``tensorrt``). ``DIR/model.onnx``, ``DIR/report.json`` (and the
    engine with its sidecar) are replaced only when every verification passes; a failing run writes
    ``DIR/failed-report.json`` and leaves earlier outputs untouched. With ``triton``, the verified model (the
    engine where one was built) also goes into that Triton model repository (report key ``triton``).

    ``dynamic_shape`` makes batch and spatial dims symbolic (``dynamic_batch``: the batch only); a dynamic
    export is verified at a second shape too (``verification.other_shapes``). ``inputs`` (an .npz) adds the
    user's own data to the seeded random inputs; ``save_io`` writes every input used and the searched
    model's outputs on it.

    With ``precision`` (int8, bf16, fp16), the verified fp32 model is also deployed at that precision and
    checked by SNR against the searched forward (report key ``precision``; int8 writes ``model.int8.onnx``,
    and a TensorRT engine is built at that precision, from the int8 model for int8).
    """
    step = progress or (lambda message: None)
    if opset not in OPSETS:
        raise RFDeployError(f"opset {opset} is not supported (from {OPSETS.start} to {OPSETS.stop - 1})")
    lowered = precision if precision is not None and precision.precision != "fp32" else None
    if tune:  # an unknown backend, or one that lacks the precision, fails before the work
        from rfdeploy.tuning.tune import parse_target

        parse_target(tune, lowered.precision if lowered is not None else "fp32")
    if precision is not None:
        check_request(precision, engine is not None)
    if lowered is not None and engine is not None and lowered.precision in trt_backend.PRECISIONS:
        engine = replace(engine, options=replace(engine.options, precision=lowered.precision))
    if write:  # a bad output folder fails now, not after the work
        engine_files = ("model.engine", "model.engine.json") if engine is not None else ()
        int8_files = (INT8_FILE,) if lowered is not None and lowered.precision == "int8" else ()
        check_output_dir(out, ("model.onnx", "report.json", FAILED_REPORT) + engine_files + int8_files)
    if save_io is not None:
        _check_save_io(save_io)
    step("loading")
    loaded = load(model, ckpt, structure)
    own = load_inputs(inputs, io_names(len(input_shapes or loaded.input_shapes or [()]), "input")) if inputs else None
    shapes = input_shapes_for(loaded, input_shapes or (own.shapes if own else None))
    if own is not None:
        _check_fits_export(own, shapes, dynamic_batch, dynamic_shape, str(inputs))
    other = other_shapes(shapes, dynamic_shape) if dynamic_batch or dynamic_shape else None
    if other is not None:
        input_shapes_for(loaded, other, what="the second verification shape of a dynamic export")
    calibration = None
    if lowered is not None and lowered.precision == "int8":
        calibration = calibration_for(lowered, shapes, seed, io_names(len(shapes), "input"))
    tuning = None
    if tune:
        from rfdeploy.tuning.tune import tune_lowerings

        tune_precision = lowered.precision if lowered is not None else "fp32"
        step(f"timing each layer's lowerings on {tune} in {tune_precision}")
        tuning = tune_lowerings(loaded.searched, shapes, tune, tick=lambda layer: step(f"tuned {layer}"),
                                precision=tune_precision, calibration=calibration.calibration if calibration else None)
        choices = {**tuning.choices, **(choices or {})}
    step("compiling")
    result = compile_model(loaded.searched, mode, choices=choices, input_shapes=shapes)
    step("exporting ONNX")
    onnx_model = export_onnx(result.model, random_inputs(shapes, seed), opset, dynamic_batch, dynamic_shape)
    onnx_model, graph_passes = run_graph_passes(onnx_model)
    layout_backend, layout_device, layout_precision = layout_target(
        tune, lowered.verify_backends if lowered is not None else (), lowered.precision if lowered is not None else "fp32")
    onnx_model, layout = choose_layout(onnx_model, layout_backend, random_inputs(shapes, seed), layout_precision,
                                       layout_device, tick=step)
    counts = op_counts(onnx_model)
    leftover = search_ops_left(onnx_model)
    step("verifying in onnxruntime")
    reference = Reference(loaded.searched)  # each input's searched forward runs once, for every check
    sets = seeded_inputs(shapes, seed) + ([own] if own else [])
    other_sets = seeded_inputs(other, seed) if other else []
    also_on = precision.backends if precision is not None and lowered is None else ()
    verification = _verification(reference, result.model, onnx_model, sets, other_sets, atol, rtol, seed, also_on)
    verification["passed"] = verification["passed"] and not leftover
    if save_io is not None:
        step(f"writing {save_io}")
        output_names = [value.name for value in onnx_model.graph.output]
        write_io(save_io, sets + other_sets, reference, io_names(len(shapes), "input"), output_names)
    step("analysing receptive fields")
    receptive_field = (receptive_field_report(result.model, shapes[0]) if len(shapes) == 1
                       else {"error": "receptive-field analysis takes single-input models"})
    report = {
        "model": loaded.model_name,
        "model_recognised": loaded.recognised,
        "checkpoint": None if ckpt is None else source_name(ckpt, "state dict"),
        "structure": None if structure is None else source_name(structure, "structure dict"),
        "mode": mode,
        "opset": opset,
        "load": asdict(loaded.info),
        "layers": [asdict(layer) for layer in result.layers],
        "involutions": [asdict(involution) for involution in result.involutions],
        "folded_batchnorms": len(result.folded_batchnorms),
        "batchnorm_note": result.batchnorm_note,
        "graph_passes": graph_pass_report(graph_passes),
        "layout": layout,
        "onnx_ops": counts,
        "onnx": onnx_file_facts(onnx_model, result.layers),
        "search_ops_left": leftover,
        "verification": verification,
        "tuning": tuning.to_json() if tuning else None,
        "receptive_field": receptive_field,
    }
    exported = ExportResult(report, onnx_model, result.model, Path(out))
    if lowered is not None and verification["passed"]:
        step(f"deploying at {lowered.precision}")
        exported.precision = deploy(lowered, onnx_model, reference, shapes, seed, sets, step, calibration)
        report["precision"] = exported.precision.to_json() | {"warnings": exported.precision.warnings}
        verification["passed"] = verification["passed"] and exported.precision.passed
    if engine is not None and verification["passed"]:
        step("building and verifying the TensorRT engine (minutes for a large model)")
        source, source_file = onnx_model, "model.onnx"
        if exported.precision is not None and exported.precision.model is not None:
            source, source_file = exported.precision.model, INT8_FILE
        request = trt_backend.with_export_shapes(engine, source, shapes, other)
        exported.engine = trt_backend.build(source.SerializeToString(), request, source_file)
        held_out = exported.precision.held_out if exported.precision is not None else None
        check = verify_engine(exported.engine, reference, atol, rtol, seed,
                                          lowered.min_snr_db if lowered else None, held_out)
        report["tensorrt"] = {"sidecar": exported.engine.sidecar.to_json(), "verification": check.to_json()}
        verification["passed"] = verification["passed"] and check.passed
    if triton is not None and verification["passed"]:
        if triton.name is None:
            triton = replace(triton, name=triton_repository.default_name(loaded.model_name))
        int8 = exported.precision.model if exported.precision is not None else None
        served = triton_repository.served_export(int8 if int8 is not None else onnx_model, exported.engine, tuning)
        exported.triton = triton_repository.plan_repository(triton, served)
        report["triton"] = exported.triton.to_json()
    if write:
        _write(exported)
    return exported


def _check_save_io(path: str | Path) -> None:
    """``--save-io`` names a file that can be written; the error names the option."""
    target = Path(path)
    try:
        if target.name in ("", ".", ".."):
            raise RFDeployError("names no file")
        check_output_dir(target.parent, (target.name,))
    except RFDeployError as error:
        raise RFDeployError(f"--save-io '{path}': {error}") from None


def _verification(searched: Reference, compiled: nn.Module, onnx_model: onnx.ModelProto, sets: list[InputSet],
                  other_sets: list[InputSet], atol: float, rtol: float, seed: int,
                  also_on: tuple[str, ...] = ()) -> dict:
    """The ONNX model in onnxruntime, and the compiled torch model, each against the searched forward; a
    dynamic ONNX model at its second shape too; and the ONNX model on each backend of ``also_on``."""
    with OrtRunner(onnx_model, threads=0) as onnx_runner:
        ort_check = verify_on(onnx_runner, searched, sets, atol, rtol, seed)
        other_check = verify_on(onnx_runner, searched, other_sets, atol, rtol, seed) if other_sets else None
    with TorchRunner(compiled, name="torch-compiled") as torch_runner:
        torch_check = verify_on(torch_runner, searched, sets, atol, rtol, seed)
    elsewhere = []
    for name in also_on:
        with make_runner(name, None, [], threads=0, onnx_model=onnx_model) as runner:
            elsewhere.append(verify_on(runner, searched, sets, atol, rtol, seed))
    checks = [ort_check, torch_check, *elsewhere] + ([other_check] if other_check else [])
    return ort_check.to_json() | {"onnxruntime_passed": ort_check.passed, "torch": torch_check.to_json(),
                                  "other_shapes": other_check.to_json() if other_check else None,
                                  "backends": [check.to_json() for check in elsewhere],
                                  "passed": all(check.passed for check in checks)}


def onnx_file_facts(onnx_model: onnx.ModelProto, layers: list[LayerReport]) -> dict:
    """What a serving process needs to know of ``model.onnx``: its I/O signature and its size."""
    multi = sum(layer.lowering == "multi" for layer in layers)
    note = (f"{multi} layer(s) lowered to one conv per branch hold one weight copy per branch, so the file is "
            f"larger than the checkpoint" if multi else None)
    return {**signature(onnx_model), "file_bytes": onnx_model.ByteSize(), "size_note": note}


def other_shapes(shapes: list[tuple[int, ...]], dynamic_shape: bool) -> list[tuple[int, ...]]:
    """The second shape a dynamic export is verified at: one more in the batch, and with ``dynamic_shape``
    every dim after the channels halved (rounded up: cheap at detector sizes, and still a different size)."""
    return [(shape[0] + 1, *shape[1:2], *((d + 1) // 2 if dynamic_shape else d for d in shape[2:]))
            for shape in shapes]


def _check_fits_export(own: InputSet, shapes: list[tuple[int, ...]], dynamic_batch: bool, dynamic_shape: bool,
                       path: str) -> None:
    """The user's inputs must fit the exported graph: its shapes, up to what the export makes symbolic."""
    def fits(given: tuple[int, ...], exported: tuple[int, ...]) -> bool:
        free = len(given) if dynamic_shape else 1 if dynamic_batch else 0
        return len(given) == len(exported) and given[1:2] == exported[1:2] and given[free:] == exported[free:]

    if len(own.shapes) != len(shapes) or not all(map(fits, own.shapes, shapes)):
        written = " ".join(",".join(map(str, shape)) for shape in own.shapes)
        export_shape = " ".join(",".join(map(str, shape)) for shape in shapes)
        raise RFDeployError(f"{path}: inputs of shape {written} do not fit the export at {export_shape}; export at "
                            f"their shape (--input-shape) or with --dynamic-shape")


def input_shapes_for(loaded: Loaded, given: list[tuple[int, ...]] | None,
                     what: str = "input shape") -> list[tuple[int, ...]]:
    """The given input shapes, else the model's default; the searched model must run on them."""
    shapes = given or loaded.input_shapes
    if not shapes:
        raise RFDeployError(f"model '{loaded.model_name}' has no default input shape; give --input-shape")
    try:
        with torch.no_grad():
            loaded.searched(*random_inputs(shapes, 0))
    except Exception as error:  # noqa: BLE001  # any failure of the user's model on this shape
        written = " ".join(",".join(map(str, shape)) for shape in shapes)
        raise RFDeployError(f"model '{loaded.model_name}' does not run on {what} {written}: "
                            f"{first_line(error)}") from None
    return shapes


def _write(result: ExportResult) -> None:
    served = triton_repository.write_repository(result.triton) if result.passed and result.triton else []
    extra = result.engine.files("model.engine") if result.engine else {}
    if result.precision is not None and result.precision.model is not None:
        extra[INT8_FILE] = result.precision.model.SerializeToString()
    result.written = _write_model(result.out_dir, result.passed, result.onnx_model, result.report, extra) + served


def _write_model(out_dir: Path, passed: bool, onnx_model: onnx.ModelProto, report: dict,
                 extra: dict[str, bytes] | None = None) -> list[Path]:
    """``model.onnx`` and ``report.json`` (and ``extra``) when verified, else only the failed report."""
    text = json.dumps(report, indent=2).encode()
    if passed:
        written = write_all(out_dir, {"model.onnx": onnx_model.SerializeToString(), "report.json": text,
                                      **(extra or {})})
        (out_dir / FAILED_REPORT).unlink(missing_ok=True)  # an earlier failure no longer describes DIR
        return written
    return write_all(out_dir, {FAILED_REPORT: text})


@dataclass
class OptimizeResult:
    report: dict
    onnx_model: onnx.ModelProto
    out_dir: Path
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["verification"]["passed"])


def _check_rewritten(rewritten: onnx.ModelProto, onnx_path: str | Path) -> None:
    """Only a graph that loads is written: one that does not is rfdeploy's fault, said rather than written."""
    try:
        check_onnx(rewritten, f"{onnx_path}, rewritten")
    except RFDeployError as error:
        raise RFDeployError(f"the rewritten graph is not valid, so it is not written: {error}") from None


def optimize(onnx_path: str | Path, out: str | Path = "rfdeploy-out", mode: str = "auto",
             input_shapes: list[tuple[int, ...]] | None = None, atol: float = 1e-4, rtol: float = 1e-4,
             seed: int = 0, choices: dict[str, str] | None = None, write: bool = True,
             progress=None, tune: str | None = None) -> OptimizeResult:
    """ONNX in, ONNX out: every searched conv of the graph lowered to plain convs, everything else kept.

    The rewritten graph is verified in onnxruntime against the input graph (the whole graph, or each
    rewritten subgraph where onnxruntime cannot run the whole) and written as ``DIR/model.onnx`` with
    ``DIR/report.json`` only when it passes; otherwise ``DIR/failed-report.json``. A graph without a
    searched conv is written as it was, with a note. ``tune`` (``BACKEND[:DEVICE]``) chooses each layer's
    lowering by timing its candidates at its input shape, as ``export`` does.
    """
    step = progress or (lambda message: None)
    if write:  # a bad output folder fails now, not after the work
        check_output_dir(out, ("model.onnx", "report.json", FAILED_REPORT))
    step("reading the graph")
    original = read_onnx(onnx_path)
    shapes = graph_input_shapes(original, input_shapes, str(onnx_path)) if tune else None
    tuning = None
    if tune and shapes:
        from rfdeploy.tuning.tune_onnx import tune_graph

        step(f"timing each searched conv's lowerings on {tune}")
        tuning = tune_graph(original, shapes, tune, tick=lambda layer: step(f"tuned {layer}"))
        choices = {**tuning.choices, **(choices or {})}
    step("finding and lowering searched convs")
    try:
        result = compile_graph(original, mode, choices)
    except RFDeployError as error:  # the node or layer at fault, in this file
        raise RFDeployError(f"{onnx_path}: {error}") from None
    rewritten, graph_passes = run_graph_passes(result.model) if result.layers else (result.model, {})
    report: dict = {"input": str(onnx_path), "mode": mode, "layers": [asdict(layer) for layer in result.layers],
                    "left_alone": [asdict(layer) for layer in result.left_alone], "note": None,
                    "graph_passes": graph_pass_report(graph_passes),
                    "onnx_ops": {"before": op_counts(original), "after": op_counts(rewritten)},
                    "tuning": tuning.to_json() if tuning else None}
    if not result.layers:
        report["note"] = f"no searched conv rewritten in {onnx_path}: the graph is written as it was"
        report["verification"] = {"scope": "nothing rewritten", "passed": True}
        optimized = OptimizeResult(report, original, Path(out))
    else:
        step("verifying in onnxruntime")
        shapes = shapes or graph_input_shapes(original, input_shapes, str(onnx_path))
        boundaries = boundaries_after([(layer.name, layer.input, layer.output) for layer in result.layers],
                                      graph_passes)
        report["verification"] = verify_graphs(original, rewritten, shapes, boundaries, str(onnx_path),
                                               atol, rtol, seed)
        optimized = OptimizeResult(report, rewritten, Path(out))
        _check_rewritten(rewritten, onnx_path)
    if write:
        optimized.written = _write_model(optimized.out_dir, optimized.passed, optimized.onnx_model, report)
    return optimized
