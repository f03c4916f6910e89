"""The Python API, mirroring the CLI: ``load`` -> ``compile`` -> ``export``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from rfdeploy.analysis import receptive_field_report
from rfdeploy.artifacts import write_all
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.backends.onnx_export import SEARCH_OPS, export_onnx, op_counts
from rfdeploy.backends.onnxruntime_backend import OrtRunner
from rfdeploy.backends.torch_backend import TorchRunner
from rfdeploy.compiler.pipeline import compile_model
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader import recognise
from rfdeploy.loader.checkpoint import StateDict, load_checkpoint, state_dict_of
from rfdeploy.loader.in_memory import adopt_search_ops, search_ops
from rfdeploy.loader.searched_model import LoadInfo, build_searched, load_model
from rfdeploy.loader.structure import load_structure
from rfdeploy.measure.verify import Reference, random_inputs, verify


@dataclass
class Loaded:
    """A searched model ready to compile: the model, where it came from, and its default input shape."""

    searched: nn.Module
    info: LoadInfo
    model_name: str
    input_shapes: list[tuple[int, ...]] | None
    recognised: bool = False


def load(model: str | nn.Module | None = None, ckpt: str | Path | Mapping | None = None,
         structure: str | Path | None = None) -> Loaded:
    """The searched model from a zoo name / ``module:callable`` / module, a checkpoint and a structure file.

    ``model`` may also hold its search ops already (mmcv's ``RFSearchHook.init_model``, ``RFConv2d``, G2L):
    they are read in place and need no files. ``ckpt`` may be a state dict instead of a path.
    """
    state = _state_dict(ckpt)
    parsed = load_structure(structure) if structure is not None else None
    recognised = model is None
    if recognised:
        if state is None:
            raise RFDeployError("--model is needed when no checkpoint is given")
        model = recognise.zoo_model_of(state, str(ckpt))
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
    searched, info = build_searched(plain, parsed, state, str(ckpt))
    return Loaded(searched, info, name, shapes, recognised)


def _state_dict(ckpt: str | Path | Mapping | None) -> StateDict | None:
    if ckpt is None:
        return None
    if isinstance(ckpt, Mapping):
        return state_dict_of(dict(ckpt), Path("<state dict>"))
    if not isinstance(ckpt, (str, Path)):
        raise RFDeployError(f"ckpt must be a path or a state dict, not {type(ckpt).__name__}")
    return load_checkpoint(ckpt)


def _adopt(model: nn.Module, name: str, files_given: bool) -> tuple[nn.Module, LoadInfo]:
    """A model that holds its search ops already: those ops, read in place."""
    if files_given:
        first = next(iter(search_ops(model)))
        raise RFDeployError(f"model '{name}' already holds search ops (e.g. '{first}') with their own rates and "
                            f"alphas; give it without a checkpoint or structure file")
    searched, formats = adopt_search_ops(model)
    kinds = sorted(set(formats.values()))
    info = LoadInfo(checkpoint_format="in-memory " + "+".join(kinds), searched=list(formats))
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
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["verification"]["passed"])


def export(model: str | nn.Module | None = None, ckpt=None, structure=None, mode: str = "auto",
           input_shapes: list[tuple[int, ...]] | None = None, opset: int = 17, dynamic_batch: bool = False,
           out: str | Path = "rfdeploy-out", atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
           choices: dict[str, str] | None = None, write: bool = True, progress=None,
           tune: str | None = None, engine: trt_backend.EngineRequest | None = None) -> ExportResult:
    """Compile, export to ONNX, verify in onnxruntime against the searched forward, write on success.

    With ``engine``, also build a TensorRT engine from the verified ONNX and verify it against the
    searched forward too (report key ``tensorrt``). ``DIR/model.onnx``, ``DIR/report.json`` (and the
    engine with its sidecar) are replaced only when every verification passes; a failing run writes
    ``DIR/failed-report.json`` and leaves earlier outputs untouched.
    """
    step = progress or (lambda message: None)
    step("loading")
    loaded = load(model, ckpt, structure)
    shapes = input_shapes_for(loaded, input_shapes)
    tuning = None
    if tune:
        from rfdeploy.measure.tune import tune_lowerings

        step(f"timing each layer's lowerings on {tune}")
        tuning = tune_lowerings(loaded.searched, shapes, tune, tick=lambda layer: step(f"tuned {layer}"))
        choices = {**tuning.choices, **(choices or {})}
    step("compiling")
    result = compile_model(loaded.searched, mode, choices=choices)
    step("exporting ONNX")
    onnx_model = export_onnx(result.model, random_inputs(shapes, seed), opset, dynamic_batch)
    counts = op_counts(onnx_model)
    leftover = {op: counts[op] for op in SEARCH_OPS if op in counts}
    step("verifying in onnxruntime")
    reference = Reference(loaded.searched)  # each input's searched forward runs once, for every check
    verification = _verification(reference, result.model, onnx_model, shapes, atol, rtol, seed)
    verification["passed"] = verification["passed"] and not leftover
    step("analysing receptive fields")
    receptive_field = (receptive_field_report(result.model, shapes[0]) if len(shapes) == 1
                       else {"error": "receptive-field analysis takes single-input models"})
    report = {
        "model": loaded.model_name,
        "model_recognised": loaded.recognised,
        "checkpoint": None if ckpt is None else str(ckpt),
        "structure": None if structure is None else str(structure),
        "mode": mode,
        "opset": opset,
        "load": asdict(loaded.info),
        "layers": [asdict(layer) for layer in result.layers],
        "folded_batchnorms": len(result.folded_batchnorms),
        "batchnorm_note": result.batchnorm_note,
        "onnx_ops": counts,
        "search_ops_left": leftover,
        "verification": verification,
        "tuning": tuning.to_json() if tuning else None,
        "receptive_field": receptive_field,
    }
    exported = ExportResult(report, onnx_model, result.model, Path(out))
    if engine is not None and verification["passed"]:
        step("building and verifying the TensorRT engine (minutes for a large model)")
        request = trt_backend.with_opt_shapes(engine, onnx_model, shapes)
        exported.engine = trt_backend.build(onnx_model.SerializeToString(), request, "model.onnx")
        check = trt_backend.verify_engine(exported.engine, reference, atol, rtol, seed)
        report["tensorrt"] = {"sidecar": exported.engine.sidecar.to_json(), "verification": check.to_json()}
        verification["passed"] = verification["passed"] and check.passed
    if write:
        _write(exported)
    return exported


def _verification(searched: Reference, compiled: nn.Module, onnx_model: onnx.ModelProto,
                  shapes: list[tuple[int, ...]], atol: float, rtol: float, seed: int) -> dict:
    """The ONNX model in onnxruntime, and the compiled torch model, each against the searched forward."""
    with OrtRunner(onnx_model, threads=0) as onnx_runner:
        ort_check = verify(onnx_runner, searched, shapes, atol, rtol, seed)
    with TorchRunner(compiled, name="torch-compiled") as torch_runner:
        torch_check = verify(torch_runner, searched, shapes, atol, rtol, seed)
    return ort_check.to_json() | {"torch": torch_check.to_json(), "passed": ort_check.passed and torch_check.passed}


def input_shapes_for(loaded: Loaded, given: list[tuple[int, ...]] | None) -> list[tuple[int, ...]]:
    """The given input shapes, else the model's default; the searched model must run on them."""
    shapes = given or loaded.input_shapes
    if not shapes:
        raise RFDeployError(f"model '{loaded.model_name}' has no default input shape; give --input-shape")
    try:
        with torch.no_grad():
            loaded.searched(*random_inputs(shapes, 0))
    except Exception as error:  # noqa: BLE001  # any failure of the user's model on this shape
        written = " ".join(",".join(map(str, shape)) for shape in shapes)
        raise RFDeployError(f"model '{loaded.model_name}' does not run on input shape {written}: "
                            f"{first_line(error)}") from None
    return shapes


def _write(result: ExportResult) -> None:
    report = json.dumps(result.report, indent=2).encode()
    if result.passed:
        engine = result.engine.files("model.engine") if result.engine else {}
        result.written = write_all(result.out_dir, {"model.onnx": result.onnx_model.SerializeToString(),
                                                    "report.json": report, **engine})
    else:
        result.written = write_all(result.out_dir, {"failed-report.json": report})
