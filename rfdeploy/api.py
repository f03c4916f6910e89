"""The Python API, mirroring the CLI: ``load`` -> ``compile`` -> ``export``; ``optimize`` for ONNX graphs.

A facade: each call builds a request and runs the declared stages of ``rfdeploy.stages``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rfdeploy.analysis import receptive_field_report
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.compiler.pipeline import compile_model
from rfdeploy.loader import sources
from rfdeploy.loader.sources import Loaded, model_source
from rfdeploy.quantize.deploy import PrecisionRequest
from rfdeploy.serve import triton as triton_repository
from rfdeploy.serve.mmdeploy import MmdeployRequest
from rfdeploy.stages.export import ExportRequest, ExportResult, input_shapes_for, run_export
from rfdeploy.stages.optimize import OptimizeRequest, OptimizeResult, run_optimize

__all__ = ["ExportResult", "Loaded", "OptimizeResult", "compile", "export", "input_shapes_for", "load", "optimize",
           "receptive_field_report"]


def load(model: str | nn.Module | None = None, ckpt=None, structure=None, config: str | Path | None = None) -> Loaded:
    """The searched model from a source (a zoo name, ``package.module:callable``, ``file.py:callable``, an
    ``nn.Module``, or an OpenMMLab ``config``), a checkpoint and a structure file (see ``loader.sources.load``)."""
    return sources.load(model_source(model, config), ckpt, structure)


def compile(model: str | nn.Module | None = None, ckpt=None, structure=None, mode: str = "auto",
            fold_bn: bool = True, choices: dict[str, str] | None = None, config: str | Path | None = None) -> nn.Module:
    """The compiled plain-conv model (no search op left), as a torch module."""
    return compile_model(load(model, ckpt, structure, config).searched, mode, fold_bn, choices).model


def export(model: str | nn.Module | None = None, ckpt=None, structure=None, mode: str = "auto",
           input_shapes: list[tuple[int, ...]] | None = None, opset: int = 17, dynamic_batch: bool = False,
           out: str | Path = "rfdeploy-out", atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0,
           choices: dict[str, str] | None = None, write: bool = True, progress=None,
           tune: str | None = None, engine: trt_backend.EngineRequest | None = None, dynamic_shape: bool = False,
           inputs: str | Path | None = None, save_io: str | Path | None = None,
           triton: triton_repository.TritonRequest | None = None,
           precision: PrecisionRequest | None = None, config: str | Path | None = None,
           mmdeploy: str | Path | None = None, target: str | None = None) -> ExportResult:
    """Compile, export to ONNX, verify in onnxruntime against the searched forward, write on success.

    With ``engine``, also build a TensorRT engine from the verified ONNX and verify it against the
    searched forward too (report key ``tensorrt``). ``DIR/model.onnx``, ``DIR/report.json`` (and the
    engine with its sidecar) are replaced only when every verification passes; a failing run writes
    ``DIR/failed-report.json`` and leaves earlier outputs untouched. With ``triton``, the verified model (the
    engine where one was built) also goes into that Triton model repository (report key ``triton``).

    ``dynamic_shape`` makes batch and spatial dims symbolic (``dynamic_batch``: the batch only); a dynamic
    export is verified at a second shape too (``verification.other_shapes``). ``inputs`` (an .npz) adds the
    user's own data to the seeded random inputs; ``save_io`` writes every input used and the searched
    model's outputs on it (when verification passes). ``config`` (an OpenMMLab config) names the model, its search
    and its input size instead of ``model``; with it, ``mmdeploy`` (a deploy config) also writes mmdeploy's end2end
    model of the compiled model and its SDK files, verified against the searched model (report key ``mmdeploy``).

    With ``precision`` (int8, bf16, fp16), the verified fp32 model is also deployed at that precision and
    checked by SNR against the searched forward (report key ``precision``; int8 writes ``model.int8.onnx``,
    and a TensorRT engine is built at that precision, from the int8 model for int8).

    ``target`` (onnxruntime, openvino, tensorrt) is where the model will run: the graph's layout and the int8 op
    set are timed there, and the model is checked there too (unless ``tune`` times the layout elsewhere, or
    ``precision.backends`` names where to check).
    """
    request = ExportRequest(
        model_source(model, config), ckpt, structure, mode, input_shapes, opset, dynamic_batch, dynamic_shape,
        Path(out), atol, rtol, seed, choices, write, tune, engine, inputs=None if inputs is None else Path(inputs),
        save_io=None if save_io is None else Path(save_io), triton=triton, precision=precision,
        mmdeploy=None if mmdeploy is None else MmdeployRequest(Path(mmdeploy)), target=target)
    return run_export(request, progress)


def optimize(onnx_path: str | Path, out: str | Path = "rfdeploy-out", mode: str = "auto",
             input_shapes: list[tuple[int, ...]] | None = None, atol: float = 1e-4, rtol: float = 1e-4,
             seed: int = 0, choices: dict[str, str] | None = None, write: bool = True,
             progress=None, tune: str | None = None, weights: str = "folded") -> OptimizeResult:
    """ONNX in, ONNX out: every searched conv of the graph lowered to plain convs, everything else kept.

    The rewritten graph is verified in onnxruntime against the input graph (the whole graph, or each
    rewritten subgraph where onnxruntime cannot run the whole) and written as ``DIR/model.onnx`` with
    ``DIR/report.json`` only when it passes; otherwise ``DIR/failed-report.json``. A graph without a
    searched conv is written as it was, with a note. ``tune`` (``BACKEND[:DEVICE]``) chooses each layer's
    lowering by timing its candidates at its input shape, as ``export`` does. ``weights="shared"`` keeps one weight
    per searched conv, each branch's alpha a scale after its conv, where file size matters more than the multiply.
    """
    request = OptimizeRequest(Path(onnx_path), Path(out), mode, input_shapes, atol, rtol, seed, choices, write, tune,
                              weights)
    return run_optimize(request, progress)
