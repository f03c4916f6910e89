"""mmdeploy's end2end model of the compiled detector, and the proof that it computes what the searched one does.

mmdeploy builds a model from its config without RF-Next's search hook, so its own export of a searched checkpoint is
a plain model missing its searched weights. Here mmdeploy exports the *compiled* model instead (no search op left,
the user's classes kept, so its rewriters and post-processing apply as to any model of the codebase), with the
TorchScript exporter (mmdeploy 1.3.1 predates torch's dynamo exporter). The result is verified against mmdeploy's
rewritten forward of the *searched* model in PyTorch on the same preprocessed images: detections compared as sets
of rows (equal label, box and score within tolerance), since near-ties may be ordered differently.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.openmmlab import read_config
from rfdeploy.optional import OptionalModule, prints_to_stderr

INSTALL_HINT = ("--mmdeploy needs mmdeploy 1.3.1 beside mmcv: pip install --no-deps mmdeploy==1.3.1 && pip install "
                "aenum grpcio multiprocess prettytable (mmdeploy's protobuf pin is not needed to export)")
mmdeploy = OptionalModule("mmdeploy", INSTALL_HINT)
END2END = "end2end.onnx"
SDK_FILES = ("deploy.json", "pipeline.json", "detail.json")  # what mmdeploy's SDK and inference_model read
IMAGES = 2  # verification images
BOX_TOLERANCE, SCORE_TOLERANCE = 1e-3, 1e-4  # relative to the image size; absolute


@dataclass(frozen=True)
class MmdeployRequest:
    deploy_config: Path


def check_deploy_config(path: Path, scope: str):
    """The deploy config, read; it must be mmdeploy's and for the model's codebase."""
    mmdeploy.require()
    config = read_config(path)
    codebase = (config.get("codebase_config") or {}).get("type")
    if codebase is None or "onnx_config" not in config or "backend_config" not in config:
        raise RFDeployError(f"deploy config {path}: not an mmdeploy deploy config (it needs codebase_config, "
                            f"onnx_config and backend_config)")
    if codebase != scope:
        raise RFDeployError(f"deploy config {path} is for codebase {codebase}; the model's config is {scope}'s")
    return config


@contextlib.contextmanager
def torchscript_exporter() -> Iterator[None]:
    """``torch.onnx.export`` with the TorchScript exporter while mmdeploy calls it (torch 2.9 made dynamo the
    default, and mmdeploy's dynamic axes and rewriters fail under it)."""
    original = torch.onnx.export
    torch.onnx.export = functools.partial(original, dynamo=False)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.onnx.export = original  # type: ignore[assignment]


def end2end(compiled: nn.Module, searched: nn.Module, model_cfg, deploy_cfg, shape: tuple[int, ...], seed: int,
            checkpoint: str | None) -> tuple[dict[str, bytes], dict]:
    """mmdeploy's end2end model of ``compiled`` and its SDK files, by name; and the report of its verification."""
    with prints_to_stderr():
        return _end2end(compiled, searched, model_cfg, deploy_cfg, shape, seed, checkpoint)


def _end2end(compiled: nn.Module, searched: nn.Module, model_cfg, deploy_cfg, shape: tuple[int, ...], seed: int,
             checkpoint: str | None) -> tuple[dict[str, bytes], dict]:
    from mmdeploy.apis import build_task_processor

    deploy_cfg = copy.deepcopy(deploy_cfg)
    processor = build_task_processor(copy.deepcopy(model_cfg), deploy_cfg, "cpu")  # its inputs edit its config
    generator = np.random.default_rng(seed)
    images = [generator.integers(0, 256, (shape[-2], shape[-1], 3), dtype=np.uint8) for _ in range(IMAGES)]
    inputs = [processor.create_input(image, None, getattr(searched, "data_preprocessor", None)) for image in images]
    expected = _rewritten_forwards(searched, inputs, deploy_cfg)
    with tempfile.TemporaryDirectory(prefix="rfdeploy-mmdeploy-") as folder:
        _export(compiled, inputs[0], deploy_cfg, Path(folder))
        _export_sdk_files(deploy_cfg, model_cfg, Path(folder), checkpoint)
        files = {name: (Path(folder) / name).read_bytes() for name in (END2END, *SDK_FILES)}
    backend = deploy_cfg.backend_config.type
    check = _verify(files[END2END], inputs, expected, shape, backend)
    return files, {"deploy_config": str(deploy_cfg.filename), "codebase": deploy_cfg.codebase_config.type,
                   "task": deploy_cfg.codebase_config.get("task"), "backend": backend,
                   "files": [END2END, *SDK_FILES], **check}


def _onnx_settings(deploy_cfg) -> dict[str, Any]:
    from mmdeploy.utils import get_dynamic_axes, get_onnx_config

    onnx_cfg = get_onnx_config(deploy_cfg)
    names = list(onnx_cfg["input_names"]) + list(onnx_cfg["output_names"])
    return {"input_names": onnx_cfg["input_names"], "output_names": onnx_cfg["output_names"],
            "opset_version": onnx_cfg.get("opset_version", 11), "dynamic_axes": get_dynamic_axes(deploy_cfg, names),
            "keep_initializers_as_inputs": onnx_cfg.get("keep_initializers_as_inputs", False)}


def _rewritten_forwards(model: nn.Module, inputs: list[tuple[dict, torch.Tensor]], deploy_cfg
                        ) -> list[list[np.ndarray]]:
    """mmdeploy's rewritten forward of ``model`` (its post-processing included) on each input, run in PyTorch: the
    model patched once (a copy: patching edits it), every input run in one rewriter context."""
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import IR, get_backend

    backend = get_backend(deploy_cfg).value
    opset = _onnx_settings(deploy_cfg)["opset_version"]
    patched = patch_model(copy.deepcopy(model), cfg=deploy_cfg, backend=backend, ir=IR.ONNX)
    with RewriterContext(cfg=deploy_cfg, backend=backend, ir=IR.ONNX, opset=opset), torch.no_grad():
        return [[output.numpy() for output in patched(tensor, data_samples=data["data_samples"], mode="predict")]
                for data, tensor in inputs]


def _export(compiled: nn.Module, given: tuple[dict, torch.Tensor], deploy_cfg, folder: Path) -> None:
    from mmdeploy.apis.onnx import export
    from mmdeploy.utils import get_backend

    data, tensor = given
    try:
        with torchscript_exporter():
            export(compiled, tensor, str(folder / Path(END2END).stem), backend=get_backend(deploy_cfg).value,
                   input_metas={"data_samples": data["data_samples"], "mode": "predict"},
                   context_info={"deploy_cfg": deploy_cfg}, verbose=False, optimize=False,
                   **_onnx_settings(deploy_cfg))
    except RFDeployError:
        raise
    except Exception as error:  # noqa: BLE001  # mmdeploy's and the exporter's own errors
        raise RFDeployError(f"mmdeploy could not export the compiled model: {type(error).__name__}: "
                            f"{first_line(error)}") from None


def _export_sdk_files(deploy_cfg, model_cfg, folder: Path, checkpoint: str | None) -> None:
    from mmdeploy.backend.sdk.export_info import export2SDK

    try:
        export2SDK(deploy_cfg, copy.deepcopy(model_cfg), str(folder), pth=checkpoint or "", device="cpu")
    except Exception as error:  # noqa: BLE001  # mmdeploy's reading of the test pipeline, say
        raise RFDeployError(f"mmdeploy could not write the SDK files ({', '.join(SDK_FILES)}): "
                            f"{type(error).__name__}: {first_line(error)}") from None


def _verify(onnx_bytes: bytes, inputs: list, expected: list[list[np.ndarray]], shape: tuple[int, ...],
            backend: str) -> dict:
    """The end2end model in onnxruntime against the searched detector's rewritten forward, detection by detection."""
    import onnxruntime

    compared = (f"dets and labels of {END2END} in onnxruntime vs mmdeploy's rewritten forward of the searched detector "
                f"in PyTorch, on {len(inputs)} seeded random images through the test pipeline; rows matched as sets: "
                f"equal label, box within {BOX_TOLERANCE:g} x the image size, score within {SCORE_TOLERANCE:g}")
    try:
        session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  # a custom op of the backend (TensorRT's NMS) onnxruntime lacks
        return {"compared": f"not compared: onnxruntime cannot run the {backend} end2end graph ({first_line(error)})",
                "passed": None}
    box_tolerance = BOX_TOLERANCE * max(shape[-2:])
    rows, unmatched, box_err, score_err = 0, 0, 0.0, 0.0
    for (_, tensor), reference in zip(inputs, expected):
        actual = session.run(None, {session.get_inputs()[0].name: tensor.numpy()})
        match = match_detections(actual[0], actual[1], reference[0], reference[1], box_tolerance)
        rows, unmatched = rows + match.rows, unmatched + match.unmatched
        box_err, score_err = max(box_err, match.max_box_err), max(score_err, match.max_score_err)
    return {"compared": compared, "rows": rows, "unmatched": unmatched, "max_box_err": box_err,
            "max_score_err": score_err, "passed": unmatched == 0}  # a matched row is within tolerance by definition


@dataclass
class Match:
    rows: int
    unmatched: int  # rows of either side without a partner, other than those at the score cut-off
    max_box_err: float
    max_score_err: float


def match_detections(dets: np.ndarray, labels: np.ndarray, expected_dets: np.ndarray, expected_labels: np.ndarray,
                     box_tolerance: float) -> Match:
    """Detections ``(N, K, 5)`` / ``(N, K)`` matched as sets of rows per image. A row may lack a partner only at the
    cut-off: its score within ``SCORE_TOLERANCE`` of the lowest score kept, where a near-tie decides which is kept."""
    rows = unmatched = 0
    box_err = score_err = 0.0
    for got, got_labels, want, want_labels in zip(dets, labels, expected_dets, expected_labels):
        free = list(range(len(got)))
        cutoff = min(float(got[:, 4].min(initial=np.inf)), float(want[:, 4].min(initial=np.inf))) + SCORE_TOLERANCE
        for row, label in zip(want, want_labels):
            rows += 1
            partner = next((i for i in free if got_labels[i] == label and np.abs(got[i, :4] - row[:4]).max()
                            <= box_tolerance and abs(got[i, 4] - row[4]) <= SCORE_TOLERANCE), None)
            if partner is None:
                unmatched += int(row[4] > cutoff)
                continue
            free.remove(partner)
            box_err = max(box_err, float(np.abs(got[partner, :4] - row[:4]).max()))
            score_err = max(score_err, float(abs(got[partner, 4] - row[4])))
        unmatched += sum(int(got[i, 4] > cutoff) for i in free)
    return Match(rows, unmatched, box_err, score_err)
