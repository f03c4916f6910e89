"""drop_zero_branches: remove branches whose alpha is exactly zero.

Preserves outputs exactly: such a branch contributes ``0 * act(conv(x))``, which is zero for finite
inputs. A layer whose every alpha is zero is left as it is.
"""

from __future__ import annotations

from rfdeploy.compiler.ir import ConvIR


def drop_zero_branches(ir: ConvIR) -> ConvIR:
    live = [branch for branch in ir.branches if branch.alpha != 0.0]
    if len(live) == len(ir.branches) or not live:
        return ir
    dropped = len(ir.branches) - len(live)
    return ir.with_branches(live).noted(f"dropped {dropped} branch(es) with alpha == 0")
