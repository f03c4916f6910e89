"""PyTorch eager: the searched model as trained, or the compiled modules."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from rfdeploy.export import flat_outputs


class TorchRunner:
    def __init__(self, model: nn.Module, device: str = "cpu"):
        self.device = torch.device(device)
        # a copy: moving to the GPU must not move the caller's reference model
        self.model = copy.deepcopy(model).eval().to(self.device)
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.to(self.device) for t in inputs]

    def run(self) -> None:
        with torch.inference_mode():
            self.outputs = flat_outputs(self.model(*self.inputs))

    def fetch(self) -> list[np.ndarray]:
        return [t.detach().float().cpu().numpy() for t in self.outputs]
