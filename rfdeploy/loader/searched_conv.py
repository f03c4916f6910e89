"""The searched conv as it was trained: one shared weight, several dilations, mixed by learned alphas.

``SearchedConv`` is the reference every compiled artifact is checked against, and what a generic
exporter sees: its forward normalises the raw alphas (``|a| / sum |a|``) in the graph, as mmcv,
RFConv2d and G2L do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfdeploy.loader.rates import Rate

_CONV = {1: F.conv1d, 2: F.conv2d}


class SearchedConv(nn.Module):
    """``y = sum_i norm(alphas)_i * act(conv(x, W, b, stride, padding_i, rate_i, groups))``.

    ``act`` is a ReLU when ``branch_relu`` (G2L), the identity otherwise. ``always_mix`` keeps the
    alpha arithmetic with a single rate (G2L and RFConv2d always mix; mmcv runs a plain conv then).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        alphas: torch.Tensor,
        rates: list[Rate],
        paddings: list[Rate],
        stride: Rate,
        groups: int,
        branch_relu: bool = False,
        always_mix: bool = False,
    ):
        super().__init__()
        if len(rates) != len(paddings) or len(alphas) < len(rates):
            raise ValueError("SearchedConv needs one padding and one alpha per rate")
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.alphas = nn.Parameter(alphas.detach().clone().to(weight.dtype))
        self.rates = [tuple(r) for r in rates]
        self.paddings = [tuple(p) for p in paddings]
        self.stride = tuple(stride)
        self.groups = groups
        self.branch_relu = branch_relu
        self.always_mix = always_mix

    @property
    def spatial_dims(self) -> int:
        return self.weight.dim() - 2

    @property
    def kernel_size(self) -> Rate:
        return tuple(self.weight.shape[2:])

    def normalized_alphas(self) -> torch.Tensor:
        live = self.alphas[: len(self.rates)].abs()
        return live / live.sum()

    def branch(self, x: torch.Tensor, index: int) -> torch.Tensor:
        conv = _CONV[self.spatial_dims]
        y = conv(x, self.weight, self.bias, self.stride, self.paddings[index], self.rates[index], self.groups)
        return torch.relu(y) if self.branch_relu else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.rates) == 1 and not self.always_mix:
            return self.branch(x, 0)
        alphas = self.normalized_alphas()
        out = self.branch(x, 0) * alphas[0]
        for index in range(1, len(self.rates)):
            out = out + self.branch(x, index) * alphas[index]
        return out

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel_size}, stride={self.stride}, groups={self.groups}, rates={self.rates}, "
                f"branch_relu={self.branch_relu}")


def searched_layers(model: nn.Module) -> list[tuple[str, SearchedConv]]:
    """Every ``SearchedConv`` of ``model`` with its name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SearchedConv)]
