"""PyTorch: the searched model as trained, or the compiled modules; eager, or through ``torch.compile``."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rfdeploy.backends.base import Runner, flat_outputs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    """Runs a copy of the model on ``device``; with ``compiled``, through ``torch.compile`` (Inductor).

    A compiled runner compiles in ``load`` (its first call), so that compiling is never timed. At fp16 or
    bf16, the copy's parameters and buffers and the inputs are cast (the whole model in that format,
    as TensorRT's fp16 or OpenVINO's bf16 run it; outputs come back as float32).
    """

    def __init__(self, model: nn.Module, device: str = "cpu", compiled: bool = False, name: str | None = None,
                 precision: str = "fp32"):
        self.name = name or ("torch-compile" if compiled else "torch")
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        # a copy: moving to the GPU must not move the caller's reference model
        self.model: nn.Module | None = copy.deepcopy(model).eval().to(self.device, self.dtype)
        self.forward: Callable | None = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.compiled = compiled
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.to(self.device, self.dtype if t.is_floating_point() else t.dtype) for t in inputs]
        if self.compiled:
            self.run()

    def run(self) -> None:
        if self.forward is None:
            raise RuntimeError(f"the {self.name} runner is closed")
        with torch.inference_mode():
            self.outputs = flat_outputs(self.forward(*self.inputs))

    def fetch(self) -> list[np.ndarray]:
        return [t.detach().float().cpu().numpy() for t in self.outputs]

    def close(self) -> None:
        self.model = self.forward = None
        self.inputs, self.outputs = [], []


def eager(model: nn.Module, device: str, threads: int, precision: str = "fp32") -> TorchRunner:
    return TorchRunner(model, device, precision=precision)


def compiled(model: nn.Module, device: str, threads: int, precision: str = "fp32") -> TorchRunner:
    return TorchRunner(model, device, compiled=True, precision=precision)
