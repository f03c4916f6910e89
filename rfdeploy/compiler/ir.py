"""The IR of one searched conv: shared-weight branches, each with its own rate, padding and alpha.

Passes are functions ``ConvIR -> ConvIR`` (``rfdeploy.compiler.passes``); ``to_module`` turns the final IR into
plain torch modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rfdeploy.loader.rates import Rate
from rfdeploy.loader.searched_conv import SearchedConv


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

    def __repr__(self) -> str:
        bias = "" if self.bias is None else ", bias"
        return (f"Branch(kernel {_dims(self.kernel_size)}, rate {_dims(self.rate)}, padding {_dims(self.padding)}, "
                f"alpha {self.alpha:.4g}{bias})")


def _dims(values: Sequence[int]) -> str:
    return "x".join(map(str, values))


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

    def __repr__(self) -> str:
        """One line: name, kernel, rates, alphas, lowering (not the weights)."""
        kernels = sorted({_dims(b.kernel_size) for b in self.branches})
        rates = " ".join(_dims(b.rate) for b in self.branches)
        alphas = " ".join(f"{b.alpha:.4g}" for b in self.branches)
        relu = ", ReLU per branch" if self.branch_relu else ""
        return (f"ConvIR({self.name}: kernel {'/'.join(kernels)}, rates {rates}, alphas {alphas}, "
                f"lowering {self.lowering or '-'}{relu})")

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


def is_dilated(conv: nn.Module) -> bool:
    return isinstance(conv, _ConvNd) and any(d != 1 for d in conv.dilation)


class BranchSum(nn.Module):
    """Plain convs on the same input, summed: ``sum_i act(conv_i(x)) + bias`` (the multi-branch lowering), or with
    ``scales``, ``sum_i scale_i * act(conv_i(x)) + bias`` (the shared-weight form: every conv the same weight).

    ``bias`` is set only when every conv is dilated; otherwise an undilated conv carries the bias. A
    dilated conv is a poor home for it: PyTorch's CPU kernel for small dilated convs adds the bias
    element by element (20 to 70% of the conv's time, measured), and an add of its own fuses or costs little.
    """

    bias: nn.Parameter | None

    def __init__(self, convs: Sequence[nn.Module], branch_relu: bool = False, bias: torch.Tensor | None = None,
                 scales: Sequence[float] | None = None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.branch_relu = branch_relu
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias))
        self.scales = None if scales is None else tuple(float(scale) for scale in scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [torch.relu(conv(x)) if self.branch_relu else conv(x) for conv in self.convs]
        if self.scales is not None:
            outputs = [scale * y for scale, y in zip(self.scales, outputs)]
        out = outputs[0]
        if self.bias is not None:
            out = out + self.bias.view(-1, *(1,) * (out.dim() - 2))
        for y in outputs[1:]:
            out = out + y
        return out


class ConvReLU(nn.Sequential):
    """A single branch with G2L's ReLU inside the searched op."""


def plain_conv(branch: Branch, stride: Rate, groups: int) -> _ConvNd:
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


def to_shared_module(ir: ConvIR) -> nn.Module:
    """The shared-weight form: one conv per branch, each with the layer's one weight, scaled by its alpha after it
    (``BranchSum.scales``); the bias, outside a per-branch ReLU, added once as ``sum_i alpha_i b``. One weight to
    store however many branches, and the alpha a multiply that backends fold at load."""
    if len(ir.branches) == 1:
        return to_module(ir)  # one weight already
    unscaled = [replace(branch, alpha=1.0) for branch in ir.branches]
    alphas = [branch.alpha for branch in ir.branches]
    if ir.branch_relu:
        return BranchSum([plain_conv(branch, ir.stride, ir.groups) for branch in unscaled], True, scales=alphas)
    bias = ir.branches[0].bias
    total = None if bias is None else scaled(bias, sum(alphas))
    convs = [plain_conv(replace(branch, bias=None), ir.stride, ir.groups) for branch in unscaled]
    return BranchSum(convs, bias=total, scales=alphas)


def to_module(ir: ConvIR) -> nn.Module:
    """Plain torch modules computing the IR: a conv, a conv and ReLU, or a ``BranchSum``."""
    if ir.branch_relu and any(branch.alpha < 0 for branch in ir.branches):
        raise NotApplicable(f"{ir.name}: a negative alpha cannot move inside the ReLU of its branch")
    if len(ir.branches) == 1:
        conv = plain_conv(ir.branches[0], ir.stride, ir.groups)
        return ConvReLU(conv, nn.ReLU()) if ir.branch_relu else conv
    biases = [(branch.bias, branch.alpha) for branch in ir.branches if branch.bias is not None]
    all_dilated = all(any(r != 1 for r in branch.rate) for branch in ir.branches)
    if ir.branch_relu or len(biases) != 1 or not all_dilated:
        return BranchSum([plain_conv(branch, ir.stride, ir.groups) for branch in ir.branches], ir.branch_relu)
    (bias, alpha), = biases
    convs = [plain_conv(replace(branch, bias=None), ir.stride, ir.groups) for branch in ir.branches]
    return BranchSum(convs, bias=scaled(bias, alpha))
