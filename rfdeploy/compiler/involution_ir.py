"""The IR of one involution: its kernel-generating branch (average pool when strided, 1x1 reduce, BatchNorm, ReLU,
1x1 span) as weights, its geometry, and the aggregation it is lowered to.

Passes are functions ``InvolutionIR -> InvolutionIR`` (``rfdeploy.compiler.passes``); ``to_module`` turns the
final IR into a ``LoweredInvolution``, plain torch ops that export to standard ONNX ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from rfdeploy.compiler.aggregations import AGGREGATIONS, Geometry, one_hot_weights
from rfdeploy.loader.involution import InvolutionParts

REFERENCE_AGGREGATION = "unfold"  # the reference code's own, until a pass chooses another


@dataclass(frozen=True)
class Norm:
    """An eval BatchNorm's parameters."""

    mean: Tensor
    var: Tensor
    weight: Tensor | None
    bias: Tensor | None
    eps: float


@dataclass(frozen=True)
class InvolutionIR:
    name: str
    channels: int
    geometry: Geometry
    reduce_weight: Tensor  # (C/r, C, 1, 1)
    reduce_bias: Tensor | None
    reduce_norm: Norm | None
    reduce_relu: bool
    span_weight: Tensor  # (G*k*k, C/r, 1, 1)
    span_bias: Tensor | None
    lowering: str | None = None
    notes: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        g = self.geometry
        norm = ", BN" if self.reduce_norm is not None else ""
        return (f"InvolutionIR({self.name}: {self.channels} channels, kernel {g.kernel_size}, stride {g.stride}, "
                f"dilation {g.dilation}, {g.groups} groups{norm}, lowering {self.lowering or '-'})")

    def changed(self, **changes) -> InvolutionIR:
        return replace(self, **changes)

    def noted(self, note: str) -> InvolutionIR:
        return replace(self, notes=self.notes + (note,))


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().clone()


def from_involution(name: str, parts: InvolutionParts) -> InvolutionIR:
    norm = None
    if parts.reduce_norm is not None:
        bn = parts.reduce_norm
        assert bn.running_mean is not None and bn.running_var is not None
        norm = Norm(bn.running_mean.detach().clone(), bn.running_var.detach().clone(), _detached(bn.weight),
                    _detached(bn.bias), float(bn.eps))
    geometry = Geometry(parts.kernel_size, parts.stride, parts.dilation, parts.groups)
    return InvolutionIR(name, parts.channels, geometry, parts.reduce.weight.detach().clone(),
                        _detached(parts.reduce.bias), norm, parts.reduce_relu, parts.span.weight.detach().clone(),
                        _detached(parts.span.bias))


def _conv1x1(weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None and conv.bias is not None:
            conv.bias.copy_(bias)
    return conv


def _batchnorm(norm: Norm) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(norm.mean.numel(), norm.eps, affine=norm.weight is not None)
    with torch.no_grad():
        bn.running_mean.copy_(norm.mean)  # type: ignore[union-attr]
        bn.running_var.copy_(norm.var)  # type: ignore[union-attr]
        if norm.weight is not None and norm.bias is not None:
            bn.weight.copy_(norm.weight)
            bn.bias.copy_(norm.bias)
    return bn.eval()


class LoweredInvolution(nn.Module):
    """An involution as plain ops: ``kernel`` (pool, reduce, norm, ReLU, span) then one aggregation.

    ``kernel_size``, ``stride``, ``dilation`` and ``groups`` stay attributes, as on the reference module, so that
    receptive-field analysis reads it as a ``k x k`` window.
    """

    one_hot: Tensor | None

    def __init__(self, ir: InvolutionIR):
        super().__init__()
        g = ir.geometry
        if ir.lowering not in AGGREGATIONS:
            raise ValueError(f"{ir.name}: unknown aggregation {ir.lowering!r}")
        self.lowering = ir.lowering
        self.geometry = g
        self.kernel_size, self.stride, self.dilation, self.groups = g.kernel_size, g.stride, g.dilation, g.groups
        self.channels = ir.channels
        self.pool = nn.AvgPool2d(g.stride, g.stride) if g.stride > 1 else nn.Identity()
        layers: list[nn.Module] = [_conv1x1(ir.reduce_weight, ir.reduce_bias)]
        layers += [_batchnorm(ir.reduce_norm)] if ir.reduce_norm is not None else []
        layers += [nn.ReLU()] if ir.reduce_relu else []
        layers.append(_conv1x1(ir.span_weight, ir.span_bias))
        self.kernel = nn.Sequential(*layers)
        one_hot = one_hot_weights(ir.channels, g, ir.span_weight.dtype) if ir.lowering == "shifts" else None
        self.register_buffer("one_hot", one_hot)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel(self.pool(x))
        if self.one_hot is not None:
            return AGGREGATIONS["shifts"](x, kernel, self.geometry, self.one_hot)
        return AGGREGATIONS[self.lowering](x, kernel, self.geometry)


def to_module(ir: InvolutionIR) -> LoweredInvolution:
    return LoweredInvolution(ir.changed(lowering=ir.lowering or REFERENCE_AGGREGATION)).eval()
