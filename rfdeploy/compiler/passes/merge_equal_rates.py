"""merge_equal_rates: branches with the same rate and padding become one.

Preserves outputs exactly up to summation order. Without a per-branch nonlinearity, any branches with
equal geometry add up (``a*conv(x, W1) + b*conv(x, W2) == conv(x, a*W1 + b*W2)``). With G2L's ReLU inside
each branch, only branches sharing one weight and bias with alphas ``>= 0`` merge, by adding their alphas:
``a*relu(z) + b*relu(z) == (a + b)*relu(z)``; other groups stay apart.
"""

from __future__ import annotations

import torch

from rfdeploy.compiler.ir import Branch, ConvIR


def _merged(group: list[Branch], branch_relu: bool) -> list[Branch]:
    first = group[0]
    shared = all(b.weight is first.weight and b.bias is first.bias for b in group)
    if shared and (not branch_relu or all(b.alpha >= 0 for b in group)):
        return [Branch(first.rate, first.padding, sum(b.alpha for b in group), first.weight, first.bias)]
    if branch_relu:
        return group
    weight = torch.stack([b.weight.double() * b.alpha for b in group]).sum(0).to(first.weight.dtype)
    biases = [b.bias.double() * b.alpha for b in group if b.bias is not None]
    bias = torch.stack(biases).sum(0).to(first.weight.dtype) if biases else None
    return [Branch(first.rate, first.padding, 1.0, weight, bias)]


def merge_equal_rates(ir: ConvIR) -> ConvIR:
    groups: dict[tuple, list[Branch]] = {}
    for branch in ir.branches:
        groups.setdefault((branch.rate, branch.padding), []).append(branch)
    merged = [b for group in groups.values() for b in _merged(group, ir.branch_relu)]
    if len(merged) == len(ir.branches):
        return ir
    return ir.with_branches(merged).noted(f"merged {len(ir.branches)} branches with equal rates into {len(merged)}")
