"""The IR of one searched conv: shared-weight branches, each with its own rate, padding and alpha.

Passes are functions ``ConvIR -> ConvIR`` (``rfdeploy.passes``); ``to_module`` turns the final IR into
plain torch modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rfdeploy.rates import Rate
from rfdeploy.searched import SearchedConv


class NotApplicable(Exception):
    """A pass cannot preserve this layer's outputs; the message says why."""


@dataclass(frozen=True)
class Branch:
    rate: Rate
    padding: Rate
    alpha: float
    weight: torch.Tensor
    bias: torch.Tensor | None

    @property
    def kernel_size(self) -> Rate:
        return tuple(self.weight.shape[2:])


@dataclass(frozen=True)
class ConvIR:
    name: str
    stride: Rate
    groups: int
    branches: tuple[Branch, ...]
    branch_relu: bool = False
    lowering: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def spatial_dims(self) -> int:
        return len(self.stride)

    def with_branches(self, branches, **changes) -> ConvIR:
        return replace(self, branches=tuple(branches), **changes)

    def noted(self, note: str) -> ConvIR:
        return replace(self, notes=self.notes + (note,))


def from_searched(name: str, module: SearchedConv) -> ConvIR:
    """The IR of a searched conv, alphas normalised (a single rate without mixing has alpha 1)."""
    if len(module.rates) == 1 and not module.always_mix:
        alphas = [1.0]
    else:
        alphas = module.normalized_alphas().detach().double().tolist()
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    branches = [Branch(rate, padding, alpha, weight, bias)
                for rate, padding, alpha in zip(module.rates, module.paddings, alphas)]
    return ConvIR(name, module.stride, module.groups, tuple(branches), module.branch_relu)


def scaled(tensor: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * tensor`` computed in float64, returned in the tensor's dtype."""
    return (tensor.double() * alpha).to(tensor.dtype)


class BranchSum(nn.Module):
    """Plain convs on the same input, summed: ``sum_i act(conv_i(x))`` (the multi-branch lowering)."""

    def __init__(self, convs: list[nn.Module], branch_relu: bool = False):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.branch_relu = branch_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [torch.relu(conv(x)) if self.branch_relu else conv(x) for conv in self.convs]
        out = outputs[0]
        for y in outputs[1:]:
            out = out + y
        return out


class ConvReLU(nn.Sequential):
    """A single branch with G2L's ReLU inside the searched op."""


def plain_conv(branch: Branch, stride: Rate, groups: int) -> nn.Module:
    weight = scaled(branch.weight, branch.alpha)
    out_channels, in_per_group = weight.shape[:2]
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d}[weight.dim() - 2]
    geometry: dict[str, Any] = {"kernel_size": branch.kernel_size, "stride": stride, "padding": branch.padding,
                                "dilation": branch.rate, "groups": groups, "bias": branch.bias is not None}
    conv: _ConvNd = conv_cls(in_per_group * groups, out_channels, **geometry)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if conv.bias is not None and branch.bias is not None:
            conv.bias.copy_(scaled(branch.bias, branch.alpha))
    return conv


def to_module(ir: ConvIR) -> nn.Module:
    """Plain torch modules computing the IR: a conv, a conv and ReLU, or a ``BranchSum``."""
    if ir.branch_relu and any(branch.alpha < 0 for branch in ir.branches):
        raise NotApplicable(f"{ir.name}: a negative alpha cannot move inside the ReLU of its branch")
    convs = [plain_conv(branch, ir.stride, ir.groups) for branch in ir.branches]
    if len(convs) > 1:
        return BranchSum(convs, ir.branch_relu)
    return ConvReLU(convs[0], nn.ReLU()) if ir.branch_relu else convs[0]
