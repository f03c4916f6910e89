"""merge_biases: the branches' biases add up into one, carried by the least-dilated branch.

Preserves outputs up to rounding (the sum is taken in float64): without a per-branch nonlinearity,
``sum_i conv_i(x) + b_i == sum_i conv_i(x) + sum_i b_i``, wherever that one bias is added. It goes on
the branch of smallest dilation: a bias on a dilated conv is not free everywhere (PyTorch's CPU kernel
for small dilated convs adds it element by element, 20 to 70% of the conv's time: docs/benchmarks.md).
Where every branch is dilated, ``to_module`` adds it after the first conv instead. With G2L's ReLU
inside each branch, biases stay where they are. Runs after ``fold_alphas`` (declared in the pipeline):
a bias moved to another branch must not be scaled by that branch's alpha.
"""

from __future__ import annotations

from dataclasses import replace
from math import prod

import torch

from rfdeploy.compiler.ir import ConvIR


def merge_biases(ir: ConvIR) -> ConvIR:
    biases = [b.bias for b in ir.branches if b.bias is not None]
    if ir.branch_relu or not biases or len(ir.branches) == 1:
        return ir
    carrier = min(range(len(ir.branches)), key=lambda i: prod(ir.branches[i].rate))
    if len(biases) == 1 and ir.branches[carrier].bias is not None:
        return ir
    total = torch.stack([bias.double() for bias in biases]).sum(0).to(biases[0].dtype)
    return ir.with_branches(replace(b, bias=total if i == carrier else None) for i, b in enumerate(ir.branches))
