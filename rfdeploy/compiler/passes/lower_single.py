"""lower_single: every branch into one plain conv whose kernel holds all the branches' taps.

Per spatial dim, tap ``j`` of branch ``i`` reads input offset ``j*rate_i - padding_i`` from the output's
anchor. The merged conv pads by the largest ``padding_i`` and samples at the gcd of all offsets, so each
tap lands on one position of the merged kernel, where the branches' alpha-scaled weights add up.

Preserves outputs exactly (up to summation order) when the branches share a centre, i.e.
``2*padding_i - rate_i*(k - 1)`` is the same for every branch, so that all branches and the merged conv
produce the same output length; otherwise, or across a per-branch nonlinearity, it raises NotApplicable.
"""

from __future__ import annotations

import math
from functools import reduce
from math import gcd

import torch

from rfdeploy.compiler.ir import Branch, ConvIR, NotApplicable

MAX_MERGED_ELEMENTS = 2**26  # 512 MiB in float64; the cost model would never pick such a kernel anyway


def _merged_geometry(ir: ConvIR) -> tuple[list[int], list[int], list[int]]:
    """Per dim: merged padding, dilation and kernel size."""
    paddings, dilations, kernels = [], [], []
    for dim in range(ir.spatial_dims):
        pad = max(b.padding[dim] for b in ir.branches)
        offsets = [j * b.rate[dim] - b.padding[dim] + pad
                   for b in ir.branches for j in range(b.kernel_size[dim])]
        step = reduce(gcd, offsets) or 1
        kernel = max(offsets) // step + 1
        extents = {2 * b.padding[dim] - b.rate[dim] * (b.kernel_size[dim] - 1) for b in ir.branches}
        if extents != {2 * pad - step * (kernel - 1)}:
            raise NotApplicable(f"branches do not share a centre in dim {dim}: output lengths would differ")
        paddings.append(pad)
        dilations.append(step)
        kernels.append(kernel)
    return paddings, dilations, kernels


def lower_single(ir: ConvIR) -> ConvIR:
    if len(ir.branches) == 1:
        return ir
    if ir.branch_relu:
        raise NotApplicable("a ReLU inside each branch: branches of different rates cannot be summed first")
    paddings, dilations, kernels = _merged_geometry(ir)
    first = ir.branches[0]
    elements = math.prod(first.weight.shape[:2]) * math.prod(kernels)
    if elements > MAX_MERGED_ELEMENTS:  # far dilations with a gcd of 1: a kernel mostly of zeros
        raise NotApplicable(f"the merged kernel {kernels} would hold {elements} weights")
    weight = torch.zeros(*first.weight.shape[:2], *kernels, dtype=torch.float64)
    for b in ir.branches:
        window = [slice(None), slice(None)]
        for dim in range(ir.spatial_dims):
            start = (paddings[dim] - b.padding[dim]) // dilations[dim]
            step = b.rate[dim] // dilations[dim] if b.kernel_size[dim] > 1 else 1
            window.append(slice(start, start + step * (b.kernel_size[dim] - 1) + 1, step))
        weight[tuple(window)] += b.weight.double() * b.alpha
    biases = [b.bias.double() * b.alpha for b in ir.branches if b.bias is not None]
    bias = torch.stack(biases).sum(0).to(first.weight.dtype) if biases else None
    merged = Branch(tuple(dilations), tuple(paddings), 1.0, weight.to(first.weight.dtype), bias)
    return ir.with_branches([merged], lowering="single")
