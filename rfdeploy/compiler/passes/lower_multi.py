"""lower_multi: keep one plain conv per branch and sum their outputs.

Preserves outputs exactly (it is the searched forward with alphas folded and the alpha arithmetic
gone); legal across a per-branch nonlinearity.
"""

from __future__ import annotations

from rfdeploy.compiler.ir import ConvIR


def lower_multi(ir: ConvIR) -> ConvIR:
    return ir.with_branches(ir.branches, lowering="multi" if len(ir.branches) > 1 else "plain")
