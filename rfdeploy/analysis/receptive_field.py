"""Receptive-field arithmetic, per spatial dimension (Araujo et al., Distill 2019).

A tensor's ``Field`` is the size of the input window one of its positions depends on, and its *jump*: the
distance in input pixels between neighbouring positions (the cumulative stride). A layer with kernel ``k``,
dilation ``d`` and stride ``s`` maps ``(r, j)`` to ``(r + d * (k - 1) * j, j * s)``. Jumps are fractions
because upsampling divides them.

A *global* field depends on every input position (after global pooling, a dense layer on a flattened map,
attention): it has no finite size. A *pooled* global field is the same at every position (global pooling,
squeeze-excitation gates); broadcast onto a spatial path it adds context but no spatial extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

Size = tuple[int, ...]
Stride = tuple[int | Fraction, ...]


@dataclass(frozen=True)
class Field:
    size: tuple[Fraction, ...]
    jump: tuple[Fraction, ...]
    extent: Size  # the feature map's spatial size (positions per dim), for adaptive pools and reshapes
    is_global: bool = False
    pooled: bool = False

    @classmethod
    def of_input(cls, input_size: Size) -> Field:
        ones = tuple(Fraction(1) for _ in input_size)
        return cls(ones, ones, tuple(input_size))

    @classmethod
    def everything(cls, input_size: Size, pooled: bool = False) -> Field:
        whole = tuple(Fraction(n) for n in input_size)
        return cls(whole, whole, (), True, pooled)

    @property
    def pixels(self) -> Size:
        """The size in whole input pixels (rounded up where upsampling made it fractional)."""
        return tuple(math.ceil(r) for r in self.size)

    def with_extent(self, extent: Size) -> Field:
        return Field(self.size, self.jump, tuple(extent), self.is_global, self.pooled)


def reach(kernel: Size, rates: list[Size]) -> Size:
    """The effective kernel per dim, ``d * (k - 1) + 1``, of the widest branch (rates are per branch)."""
    return tuple(max(rate[dim] for rate in rates) * (k - 1) + 1 for dim, k in enumerate(kernel))


def widest(kernel: Size, rates: list[Size]) -> Size:
    """The dilation per dim that reaches as far as the widest branch."""
    return tuple(max(rate[dim] for rate in rates) for dim in range(len(kernel)))


def window(field: Field, kernel: Size, stride: Stride, rates: list[Size], extent: Size) -> Field:
    """A convolution or pooling window: grows the field by ``(k_eff - 1) * jump``, multiplies the jump."""
    if field.is_global:
        return field
    k_eff = reach(kernel, rates)
    size = tuple(r + (k - 1) * j for r, k, j in zip(field.size, k_eff, field.jump))
    jump = tuple(j * s for j, s in zip(field.jump, stride))
    return Field(size, jump, tuple(extent))


def transposed_window(field: Field, kernel: Size, stride: Stride, rates: list[Size], extent: Size) -> Field:
    """A transposed conv: the output grid is ``stride`` times finer, the window spans ``k_eff`` output steps."""
    if field.is_global:
        return field
    jump = tuple(j / s for j, s in zip(field.jump, stride))
    k_eff = reach(kernel, rates)
    size = tuple(r + (k - 1) * j for r, k, j in zip(field.size, k_eff, jump))
    return Field(size, jump, tuple(extent))


def resample(field: Field, scale: tuple[Fraction, ...], taps: int, extent: Size) -> Field:
    """Interpolation to ``scale`` times the positions; each output mixes ``taps`` neighbouring inputs."""
    if field.is_global:
        return field
    size = tuple(r + (taps - 1) * j for r, j in zip(field.size, field.jump))
    jump = tuple(j / s for j, s in zip(field.jump, scale))
    return Field(size, jump, tuple(extent))


@dataclass(frozen=True)
class Merged:
    field: Field
    jumps_disagree: bool  # inputs on different grids: the larger jump is kept
    pooled_context_ignored: bool  # a pooled global input (SE-style gating) was broadcast onto a spatial one


def merge(fields: list[Field]) -> Merged:
    """Where paths meet, a position sees as far as its farthest input path: the largest field per dim.

    A global input that varies over positions (attention) makes the result global; a pooled one
    (the same at every position) does not change how far the spatial inputs see.
    """
    spatial = [f for f in fields if not f.is_global]
    mixing = [f for f in fields if f.is_global and not f.pooled]
    if mixing or not spatial:
        return Merged(mixing[0] if mixing else fields[0], False, False)
    size = tuple(max(sizes) for sizes in zip(*(f.size for f in spatial)))
    jump = tuple(max(jumps) for jumps in zip(*(f.jump for f in spatial)))
    disagree = any(f.jump != spatial[0].jump for f in spatial)
    extent = max((f.extent for f in spatial), key=math.prod)
    return Merged(Field(size, jump, extent), disagree, len(spatial) < len(fields))
