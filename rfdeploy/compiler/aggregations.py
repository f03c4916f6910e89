"""Involution's aggregation ``y[c, p] = sum_t K[g(c), t, p] * x[c, p*s + t*d - pad]``, written four ways that
export to standard ONNX ops. Each takes the input ``x`` (N, C, H, W) and the generated kernel (N, G*k*k, Ho, Wo),
taps in row-major order, and returns (N, C, Ho, Wo).

- ``unfold``: the reference code: ``nn.Unfold`` (im2col: Pad, two index Gathers, Transpose, Reshape), Mul, ReduceSum.
- ``taps``: per tap, a strided Slice of the padded input times that tap's kernel plane, accumulated by Add.
- ``rows``: the ``k`` horizontal shifts made once (Slice, Concat); per kernel row a Slice of those, times that
  row's kernel planes, accumulated; one ReduceSum over the row's taps at the end. About ``4k`` nodes, not ``3k*k``.
- ``shifts``: one grouped Conv with one-hot weights makes all ``k*k`` shifted copies at once, then Mul, ReduceSum.

Every slice bound is a constant measured from the padded input's end, so the graphs hold no shape arithmetic
and stay valid for dynamic sizes. Each product is the reference's; only the order of the sum over taps differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Geometry:
    kernel_size: int
    stride: int
    dilation: int
    groups: int

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel_size - 1) // 2

    @property
    def taps(self) -> int:
        return self.kernel_size**2

    def window(self, offset: int) -> slice:
        """Positions ``offset*d, offset*d + s, ...`` of a padded axis: one per output position."""
        end = -self.dilation * (self.kernel_size - 1 - offset)
        return slice(offset * self.dilation, end or None, self.stride)


def _padded(x: Tensor, g: Geometry) -> Tensor:
    return F.pad(x, (g.padding,) * 4)


def _grouped(x: Tensor, g: Geometry) -> Tensor:
    """(N, C, ...) -> (N, G, C/G, ...)."""
    return x.unflatten(1, (g.groups, -1))


def unfold(x: Tensor, kernel: Tensor, g: Geometry) -> Tensor:
    columns = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (N, C*k*k, Ho*Wo)
    columns = _grouped(columns, g).unflatten(3, kernel.shape[2:]).unflatten(2, (-1, g.taps))
    weights = kernel.unflatten(1, (g.groups, 1, g.taps))
    return (weights * columns).sum(dim=3).flatten(1, 2)


def taps(x: Tensor, kernel: Tensor, g: Geometry) -> Tensor:
    padded = _grouped(_padded(x, g), g)  # (N, G, C/G, Hp, Wp)
    planes = kernel.unflatten(1, (g.groups, g.taps)).split(1, dim=2)  # each (N, G, 1, Ho, Wo)
    out = None
    for index, plane in enumerate(planes):
        row, column = divmod(index, g.kernel_size)
        term = padded[:, :, :, g.window(row), g.window(column)] * plane
        out = term if out is None else out + term
    assert out is not None
    return out.flatten(1, 2)


def rows(x: Tensor, kernel: Tensor, g: Geometry) -> Tensor:
    padded = _padded(x, g)
    shifted = torch.stack([padded[..., g.window(column)] for column in range(g.kernel_size)], dim=2)
    shifted = _grouped(shifted, g)  # (N, G, C/G, k, Hp, Wo): one copy per column offset
    kernel_rows = kernel.unflatten(1, (g.groups, 1, g.kernel_size, g.kernel_size)).unbind(3)  # (N, G, 1, k, ..)
    out = None
    for row, weights in enumerate(kernel_rows):
        term = shifted[:, :, :, :, g.window(row)] * weights
        out = term if out is None else out + term
    assert out is not None
    return out.sum(dim=3).flatten(1, 2)


def one_hot_weights(channels: int, g: Geometry, dtype: torch.dtype = torch.float32) -> Tensor:
    """(C*k*k, 1, k, k): output channel ``c*k*k + t`` copies input channel ``c`` shifted by tap ``t``."""
    return torch.eye(g.taps, dtype=dtype).view(g.taps, 1, g.kernel_size, g.kernel_size).repeat(channels, 1, 1, 1)


def shifts(x: Tensor, kernel: Tensor, g: Geometry, one_hot: Tensor | None = None) -> Tensor:
    if one_hot is None:
        one_hot = one_hot_weights(x.shape[1], g, x.dtype)
    copies = F.conv2d(x, one_hot, None, g.stride, g.padding, g.dilation, groups=x.shape[1])
    copies = _grouped(copies, g).unflatten(2, (-1, g.taps))  # (N, G, C/G, k*k, Ho, Wo)
    return (copies * kernel.unflatten(1, (g.groups, 1, g.taps))).sum(dim=3).flatten(1, 2)


Aggregation = Callable[..., Tensor]
AGGREGATIONS: dict[str, Aggregation] = {"unfold": unfold, "taps": taps, "rows": rows, "shifts": shifts}
