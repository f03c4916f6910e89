"""The backends rfdeploy runs models on: one entry each.

An entry says where the backend runs, whether it runs the exported ONNX model or the torch module, at which
precisions (and in which format an int8 model made for it stores activations), what artifact it builds to run
a model (a TensorRT engine), and where its runner factory and its install check live (``"module:function"``,
imported only when the backend is used, so that a missing optional package costs nothing until it is asked for).

A factory is ``(model, device, threads, precision) -> Runner``, the model being an ``onnx.ModelProto``
where the backend runs ONNX, else the ``nn.Module``; at ``int8`` the ONNX model is already quantized (QDQ),
at the other precisions the runner converts. A check is ``(device) -> None`` and raises ``RFDeployError``
saying what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from rfdeploy.backends.base import DEVICES, Runner
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.errors import RFDeployError
from rfdeploy.precision import (
    INT8_ACTIVATIONS,
    UINT8_ACTIVATIONS,
    ZERO_POINT_FREE_ACTIVATIONS,
    check_precision,
)


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    devices: tuple[str, ...]
    runs_onnx: bool  # runs the exported ONNX model, not the torch module
    factory: str  # "module:function" making a runner
    check: str | None = None  # "module:function" raising the install hint where the backend is missing
    precisions: tuple[str, ...] = ("fp32",)  # the number formats it runs, fp32 first
    builds: str = ""  # the artifact it builds from the ONNX model to run it, written beside it by an export
    int8_activations: str = UINT8_ACTIVATIONS.name  # how an int8 model made for it stores activations

    @property
    def cuda_only(self) -> bool:
        return self.devices == ("cuda",)

    def require(self, device: str, precision: str = "fp32") -> None:
        """Fail before any work where this backend cannot run on ``device`` at ``precision`` or is not
        installed."""
        self.require_precision(precision)
        if device not in self.devices:
            raise RFDeployError(f"the {self.name} backend runs on a GPU: give --device cuda" if self.cuda_only
                                else f"the {self.name} backend runs on {', '.join(self.devices)}, not {device}")
        if self.check is not None:
            _resolve(self.check)(device)

    def require_precision(self, precision: str) -> None:
        check_precision(precision)
        if precision not in self.precisions:
            elsewhere = [b.name for b in BACKENDS.values() if precision in b.precisions]
            raise RFDeployError(f"the {self.name} backend runs {', '.join(self.precisions)}, not {precision} "
                                f"({precision} runs on {', '.join(elsewhere)})")

    def runner(self, model: nn.Module | onnx.ModelProto, device: str = "cpu", threads: int = 1,
               precision: str = "fp32") -> Runner:
        made = _resolve(self.factory)(model, device, threads, precision)
        if precision != "fp32" and not made.name.endswith(precision):
            made.name = f"{made.name}-{precision}"
        return made


def _resolve(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


_HERE = "rfdeploy.backends"
BACKENDS = {backend.name: backend for backend in (
    Backend("torch", "PyTorch eager", DEVICES, False, f"{_HERE}.torch_backend:eager",
            precisions=("fp32", "fp16", "bf16")),
    Backend("torch-compile", "PyTorch through torch.compile (Inductor)", DEVICES, False,
            f"{_HERE}.torch_backend:compiled", precisions=("fp32", "fp16", "bf16")),
    Backend("onnxruntime", "onnxruntime: CPU provider, or CUDA provider with --device cuda", DEVICES, True,
            f"{_HERE}.onnxruntime_backend:runner", f"{_HERE}.onnxruntime_backend:check", ("fp32", "int8")),
    Backend("openvino", "OpenVINO's CPU plugin, its inference precision always set", ("cpu",), True,
            f"{_HERE}.openvino_backend:runner", f"{_HERE}.openvino_backend:check", ("fp32", "bf16", "int8"),
            int8_activations=ZERO_POINT_FREE_ACTIVATIONS.name),
    Backend("onnxruntime-trt", "onnxruntime's TensorRT execution provider (onnxruntime-gpu)", ("cuda",), True,
            f"{_HERE}.onnxruntime_backend:runner_with_tensorrt", f"{_HERE}.onnxruntime_backend:check_with_tensorrt"),
    Backend("tensorrt", "a TensorRT engine built with the TensorRT Python API", ("cuda",), True,
            f"{_HERE}.tensorrt.runner:engine_runner", f"{_HERE}.tensorrt.runner:check", ("fp32", "fp16", "int8"),
            builds="model.engine", int8_activations=INT8_ACTIVATIONS.name),
)}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise RFDeployError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def cuda_available() -> bool:
    return torch.cuda.is_available()


def require_device(device: str) -> None:
    if device not in DEVICES:
        raise RFDeployError(f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if device == "cuda" and not cuda_available():
        raise RFDeployError("--device cuda: PyTorch sees no CUDA GPU on this machine")


def check_backends(backends: list[str], device: str, precision: str = "fp32") -> None:
    """Fail before any work where a backend cannot run on ``device`` at ``precision`` or is not installed."""
    require_device(device)
    for name in backends:
        backend(name).require(device, precision)


def parse_backends(text: str) -> list[str]:
    """``"torch,onnxruntime"`` -> ``["torch", "onnxruntime"]``, each checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise RFDeployError(f"unknown backend '{(unknown or [text])[0]}' (known: {', '.join(BACKENDS)})")
    return list(dict.fromkeys(names))


def make_runner(name: str, model: nn.Module | None, example: list[torch.Tensor], device: str = "cpu",
                threads: int = 1, onnx_model: onnx.ModelProto | None = None, precision: str = "fp32") -> Runner:
    """A runner of ``model`` on backend ``name``; ONNX backends run ``onnx_model``, else ``model`` exported.
    At ``int8``, ``onnx_model`` is the quantized model."""
    chosen = backend(name)
    if not chosen.runs_onnx:
        if model is None:
            raise ValueError(f"the {name} backend runs the torch module: none given")
        return chosen.runner(model, device, threads, precision)
    if onnx_model is None:
        if model is None:
            raise ValueError(f"the {name} backend runs an ONNX model: none given, and no module to export")
        onnx_model = export_onnx(model, example)
    return chosen.runner(onnx_model, device, threads, precision)
