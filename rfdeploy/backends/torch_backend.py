"""PyTorch: the searched model as trained, or the compiled modules; eager, or through ``torch.compile``."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from rfdeploy.backends.onnx_export import flat_outputs


class TorchRunner:
    """Runs a copy of the model on ``device``; with ``compiled``, through ``torch.compile`` (Inductor).

    A compiled runner compiles in ``load`` (its first call), so that compiling is never timed.
    """

    def __init__(self, model: nn.Module, device: str = "cpu", compiled: bool = False):
        self.device = torch.device(device)
        # a copy: moving to the GPU must not move the caller's reference model
        self.model = copy.deepcopy(model).eval().to(self.device)
        self.forward = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.compiled = compiled
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.to(self.device) for t in inputs]
        if self.compiled:
            self.run()

    def run(self) -> None:
        with torch.inference_mode():
            self.outputs = flat_outputs(self.forward(*self.inputs))

    def fetch(self) -> list[np.ndarray]:
        return [t.detach().float().cpu().numpy() for t in self.outputs]
