"""Branch dilation rates and paddings, re-derived from a centre dilation exactly as each search did.

The rates are not stored in checkpoints; they come back from the centre dilation by the search's own
expansion rule, rounding included. Python's ``round`` (ties to even) is part of the rule: ``round(2.5)``
is 2, and ``floor(v + 0.5)`` would silently change dilations. See docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass

Rate = tuple[int, ...]


@dataclass(frozen=True)
class Expansion:
    """The parameters of a search space: ``exp_rate``, the dilation bounds, the branch count."""

    exp_rate: float
    mmin: int
    mmax: int
    num_branches: int

    def clip(self, value: float) -> int:
        return min(max(round(value), self.mmin), self.mmax)


def _spread(d: int, expansion: Expansion) -> tuple[int, int]:
    """The (small, large) dilations around centre ``d``."""
    e = expansion.exp_rate
    return expansion.clip((1 - e) * d), expansion.clip((1 + e) * d)


def mmcv_rates(centre: Rate, kernel_size: Rate, expansion: Expansion) -> list[Rate]:
    """mmcv >= 2 ``Conv2dRFSearchOp``: per-dim small/large, de-duplicated, unsearched dims fixed after.

    A dim whose kernel is 1 or even keeps its centre dilation; mmcv applies that *after* removing
    duplicates, so two branches may end up with equal rates (they keep their own alphas).
    """
    small_large = [_spread(d, expansion) for d in centre]
    small = tuple(s for s, _ in small_large)
    large = tuple(l for _, l in small_large)
    half = expansion.num_branches // 2
    if expansion.num_branches % 2 == 0:
        candidates = [small] * half + [large] * half
    else:
        candidates = [small] * half + [tuple(centre)] + [large] * half
    unique = list(dict.fromkeys(candidates))
    searched = [k > 1 and k % 2 == 1 for k in kernel_size]
    return [tuple(r if s else c for r, s, c in zip(rate, searched, centre)) for rate in unique]


def mmcv_padding(kernel_size: Rate, stride: Rate, rate: Rate) -> Rate:
    """mmcv ``get_single_padding``: ``((stride - 1) + dilation * (kernel - 1)) // 2`` per dim."""
    return tuple(((s - 1) + r * (k - 1)) // 2 for k, s, r in zip(kernel_size, stride, rate))


def research_rates(centre: int, num_branches: int, expansion: Expansion) -> list[int]:
    """The older research format (``"S"``, ``weights``): scalar rates, no de-duplication."""
    small, large = _spread(centre, expansion)
    three = [small, min(max(centre, expansion.mmin), expansion.mmax), large]
    if centre == 1:
        return three[1:]
    if num_branches == 2:
        return [three[0], three[2]]
    return three


def research_padding(kernel_size: Rate, rate: int) -> Rate:
    """``rate * (kernel_size[0] - 1) // 2`` in every dim, as the research code computed it."""
    return (rate * (kernel_size[0] - 1) // 2,) * len(kernel_size)


def g2l_rates(centre: int, expansion: Expansion) -> list[int]:
    """G2L temporal search: always three branches, never de-duplicated (``d=4, e=0.1 -> [4, 4, 4]``)."""
    small, large = _spread(centre, expansion)
    return [small, min(max(centre, expansion.mmin), expansion.mmax), large]


def centred_padding(kernel_size: Rate, rate: Rate) -> Rate:
    """``rate * (kernel - 1) // 2`` per dim (RFConv2d, G2L's ``padding=rate`` for k=3)."""
    return tuple(r * (k - 1) // 2 for k, r in zip(kernel_size, rate))
