"""choose_lowering: per layer, one exact merged conv (``single``) or one conv per branch (``multi``).

Preserves outputs: it only picks between two exact lowerings; ``single`` is never applied where it
cannot be (a ReLU inside each branch, branches without a common centre) and the IR notes why.

Cost model (``auto``), per output position, in multiply-accumulate equivalents:
    cost = MACs + MACS_PER_BYTE * bytes moved
where a conv costs ``C_out * C_in / groups * prod(kernel)`` MACs and moves its input window once
(``C_in * prod(stride)`` floats) and its output once (``C_out`` floats); ``multi`` pays that per branch
plus reading and writing each partial sum. ``MACS_PER_BYTE`` is the compute a CPU core does in the time
one byte comes from memory; 4 suits the memory-bound depthwise convs where the choice matters most.
Measured choices (``rfdeploy export --tune BACKEND``) override the model.
"""

from __future__ import annotations

import math

from rfdeploy.compiler.ir import Branch, ConvIR, NotApplicable
from rfdeploy.compiler.passes.lower_multi import lower_multi
from rfdeploy.compiler.passes.lower_single import lower_single

MACS_PER_BYTE = 4.0
FLOAT_BYTES = 4
MODES = ("auto", "multi", "single")


def branch_cost(branch: Branch, stride: tuple[int, ...], groups: int) -> float:
    out_channels, in_per_group = branch.weight.shape[:2]
    macs = out_channels * in_per_group * math.prod(branch.kernel_size)
    moved = (in_per_group * groups * math.prod(stride) + out_channels) * FLOAT_BYTES
    return macs + MACS_PER_BYTE * moved


def lowering_cost(ir: ConvIR) -> float:
    convs = sum(branch_cost(b, ir.stride, ir.groups) for b in ir.branches)
    partial_sums = 2 * (len(ir.branches) - 1) * ir.branches[0].weight.shape[0] * FLOAT_BYTES
    return convs + MACS_PER_BYTE * partial_sums


def choose_lowering(ir: ConvIR, mode: str = "auto") -> ConvIR:
    if mode not in MODES:
        raise ValueError(f"unknown lowering mode {mode!r}")
    multi = lower_multi(ir)
    if len(ir.branches) == 1 or mode == "multi":
        return multi
    try:
        single = lower_single(ir)
    except NotApplicable as reason:
        return multi.noted(f"single not applied: {reason}")
    if mode == "single":
        return single
    costs = {"single": lowering_cost(single), "multi": lowering_cost(multi)}
    chosen = single if costs["single"] < costs["multi"] else multi
    return chosen.noted(f"cost model: single {costs['single']:.0f}, multi {costs['multi']:.0f} MAC-eq/position")
