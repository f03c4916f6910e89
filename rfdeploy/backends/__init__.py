"""Where a model runs: one module per backend, each giving a ``Runner``.

A runner separates what is timed from what is not: ``load`` puts the inputs where the backend reads
them (device memory, bound buffers), ``run`` computes (the timed part), ``fetch`` brings the outputs
of the last ``run`` back to the host as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import torch
from torch import nn

from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.errors import RFDeployError

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Backend:
    name: str
    runs_onnx: bool  # runs the exported ONNX model, not the torch module
    cuda_only: bool
    summary: str


BACKENDS = {backend.name: backend for backend in (
    Backend("torch", False, False, "PyTorch eager"),
    Backend("torch-compile", False, False, "PyTorch through torch.compile (Inductor)"),
    Backend("onnxruntime", True, False, "onnxruntime: CPU provider, or CUDA provider with --device cuda"),
    Backend("onnxruntime-trt", True, True, "onnxruntime's TensorRT execution provider (onnxruntime-gpu)"),
    Backend("tensorrt", True, True, "a TensorRT engine built with the TensorRT Python API"),
)}


class Runner(Protocol):
    def load(self, inputs: list[torch.Tensor]) -> None: ...

    def run(self) -> None: ...

    def fetch(self) -> list[np.ndarray]: ...


def cuda_available() -> bool:
    return torch.cuda.is_available()


def require_device(device: str) -> None:
    if device not in DEVICES:
        raise RFDeployError(f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if device == "cuda" and not cuda_available():
        raise RFDeployError("--device cuda: PyTorch sees no CUDA GPU on this machine")


def check_backends(backends: list[str], device: str) -> None:
    """Fail before any work where a backend cannot run on ``device`` or is not installed."""
    require_device(device)
    for name in backends:
        if BACKENDS[name].cuda_only and device != "cuda":
            raise RFDeployError(f"the {name} backend runs on a GPU: give --device cuda")
    if "tensorrt" in backends:
        from rfdeploy.backends.tensorrt_backend import require_tensorrt

        require_tensorrt()
    if device == "cuda":
        from rfdeploy.backends.onnxruntime_backend import providers

        for name in backends:
            if name.startswith("onnxruntime"):
                providers(device, tensorrt=name == "onnxruntime-trt")


def parse_backends(text: str) -> list[str]:
    """``"torch,onnxruntime"`` -> ``["torch", "onnxruntime"]``, each checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise RFDeployError(f"unknown backend '{(unknown or [text])[0]}' (known: {', '.join(BACKENDS)})")
    return list(dict.fromkeys(names))


def make_runner(backend: str, model: nn.Module, example: list[torch.Tensor], device: str = "cpu",
                threads: int = 1, onnx_model: onnx.ModelProto | None = None) -> Runner:
    """A runner of ``model`` on ``backend``; ONNX backends run ``onnx_model``, else ``model`` exported."""
    if backend not in BACKENDS:
        raise RFDeployError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if not BACKENDS[backend].runs_onnx:
        from rfdeploy.backends.torch_backend import TorchRunner

        return TorchRunner(model, device, compiled=backend == "torch-compile")
    if onnx_model is None:
        onnx_model = export_onnx(model, example)
    if backend.startswith("onnxruntime"):
        from rfdeploy.backends.onnxruntime_backend import OrtRunner

        return OrtRunner(onnx_model, device, threads, tensorrt=backend == "onnxruntime-trt")
    if backend == "tensorrt":
        from rfdeploy.backends import tensorrt_backend as trt_backend

        return trt_backend.TrtRunner(trt_backend.build(onnx_model.SerializeToString(),
                                                       trt_backend.EngineRequest()).engine)
    raise AssertionError(f"backend '{backend}' has no runner")
