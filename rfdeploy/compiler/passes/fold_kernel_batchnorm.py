"""fold_kernel_batchnorm: the BatchNorm of an involution's kernel-generating reduce conv folds into that conv.

Preserves outputs up to rounding: the reduce is a 1x1 conv read only by its BatchNorm (mmcv ``ConvModule``,
order conv-norm-act), so ``bn(conv(x)) == conv'(x)`` with ``W' = W * g/sqrt(v+eps)`` per output channel and
``b' = (b - m) * g/sqrt(v+eps) + beta``, computed in float64 and rounded once. The norm after the whole
involution (a block's ``bn2``) is not folded: its scale differs between channels that share one kernel.
"""

from __future__ import annotations

import torch

from rfdeploy.compiler.involution_ir import InvolutionIR, Norm


def folded(weight: torch.Tensor, bias: torch.Tensor | None, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias with ``norm`` applied to its output folded in."""
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(norm.var.double())
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(norm.var.double() + norm.eps)
    shift = beta - norm.mean.double() * scale
    new_weight = weight.double() * scale.view(-1, *(1,) * (weight.dim() - 1))
    new_bias = shift if bias is None else bias.double() * scale + shift
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def fold_kernel_batchnorm(ir: InvolutionIR) -> InvolutionIR:
    if ir.reduce_norm is None:
        return ir
    weight, bias = folded(ir.reduce_weight, ir.reduce_bias, ir.reduce_norm)
    return ir.changed(reduce_weight=weight, reduce_bias=bias, reduce_norm=None)
