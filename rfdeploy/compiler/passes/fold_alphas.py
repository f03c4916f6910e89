"""fold_alphas: scale each branch's weight and bias by its alpha, leaving alpha 1.

Preserves outputs up to rounding: ``alpha*conv(x, W, b) == conv(x, alpha*W, alpha*b)``, and across
G2L's per-branch ReLU ``alpha*relu(z) == relu(alpha*z)`` for ``alpha >= 0``. The product is computed in
float64 and rounded once to the weight's dtype.
"""

from __future__ import annotations

from rfdeploy.compiler.ir import Branch, ConvIR, NotApplicable, scaled


def fold_alphas(ir: ConvIR) -> ConvIR:
    if all(branch.alpha == 1.0 for branch in ir.branches):
        return ir
    if ir.branch_relu and any(branch.alpha < 0 for branch in ir.branches):
        raise NotApplicable("a negative alpha does not commute with the ReLU inside the branch")
    folded = [Branch(b.rate, b.padding, 1.0, scaled(b.weight, b.alpha),
                     None if b.bias is None else scaled(b.bias, b.alpha)) for b in ir.branches]
    return ir.with_branches(folded)
