"""Activation ranges that minimise each tensor's 8-bit error (``--calib-method mse``).

A range trades two errors: values inside it are rounded to one of 256 levels (mean squared error step^2/12),
values outside are clipped to its ends. Min-max ranges pay no clipping and coarse steps; a fixed percentile clips
the same share of every tensor whatever its shape. Here each tensor's range is the one with the least expected
squared error over its calibration histogram, for the grid the tensor will be stored on:

- ``uint8``: any zero point, a range [lo, hi] holding 0 (onnxruntime's format);
- ``zero-point-free``: [0, hi] for a tensor never negative, [-t, t] for the others (OpenVINO's);
- ``int8``: [-t, t] for every tensor (TensorRT's).

The histograms are onnxruntime's (its percentile calibrator's, over [-max|x|, max|x|]); the error of a range is
computed from prefix sums over their bins, so every candidate range of every tensor costs a few array operations.
"""

from __future__ import annotations

import numpy as np

from rfdeploy.precision import INT8_ACTIVATIONS, UINT8_ACTIVATIONS

LEVELS = 255  # steps between the ends of an 8-bit range
CANDIDATES = np.linspace(0.02, 1.0, 99)  # range ends tried, as fractions of the largest value seen


class Histogram:
    """One tensor's calibration histogram, with the prefix sums that give any range's error in O(1)."""

    def __init__(self, counts: np.ndarray, edges: np.ndarray):
        centres = (edges[:-1].astype(np.float64) + edges[1:]) / 2
        weights = counts.astype(np.float64)
        self.centres = centres
        self.count = np.concatenate([[0.0], np.cumsum(weights)])
        self.first = np.concatenate([[0.0], np.cumsum(weights * centres)])
        self.second = np.concatenate([[0.0], np.cumsum(weights * centres**2)])

    def squared_error(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The expected squared error of storing the tensor on [lo, hi] in 8 bits, for arrays of candidates."""
        below = np.searchsorted(self.centres, lo)  # bins clipped up to lo: [0, below)
        above = np.searchsorted(self.centres, hi, side="right")  # bins clipped down to hi: [above, n)
        total = len(self.centres)
        clipped_low = self._moment(0, below, lo)
        clipped_high = self._moment(above, total, hi)
        inside = self.count[above] - self.count[below]
        step = (hi - lo) / LEVELS
        return clipped_low + clipped_high + inside * step**2 / 12

    def _moment(self, start: np.ndarray | int, end: np.ndarray | int, point: np.ndarray) -> np.ndarray:
        """Sum of count * (centre - point)^2 over bins [start, end)."""
        count = self.count[end] - self.count[start]
        first = self.first[end] - self.first[start]
        second = self.second[end] - self.second[start]
        return second - 2 * point * first + point**2 * count


def least_error_range(counts: np.ndarray, edges: np.ndarray, low: float, high: float, activations: str
                      ) -> tuple[float, float]:
    """The range of least squared error for a tensor whose values span [low, high], stored as ``activations``
    (``precision.ACTIVATION_FORMATS``) says."""
    histogram = Histogram(counts, edges)
    low, high = min(low, 0.0), max(high, 0.0)
    symmetric = activations == INT8_ACTIVATIONS.name or (activations != UINT8_ACTIVATIONS.name and low < 0)
    if symmetric:
        ends = CANDIDATES * max(-low, high)
        best = int(np.argmin(histogram.squared_error(-ends, ends)))
        return -float(ends[best]), float(ends[best])
    # asymmetric: every pair of candidate ends (the low end 0 for a tensor that is never negative)
    lows = CANDIDATES * low if low < 0 else np.zeros(1)
    grid_low, grid_high = np.meshgrid(lows, CANDIDATES * high, indexing="ij")
    errors = histogram.squared_error(grid_low.ravel(), grid_high.ravel())
    best = int(np.argmin(errors))
    return float(grid_low.ravel()[best]), float(grid_high.ravel()[best])


def shared_ranges(ranges: dict[str, tuple[float, float]], groups: list[list[str]]) -> dict[str, tuple[float, float]]:
    """``ranges`` with the tensors of each group (and of groups that share a tensor) on one range, the union of
    theirs. A Concat's inputs and output form a group: on one grid, the concatenation moves bytes; on several, each
    input is re-quantized to the output's grid first (Res2Net-50: 37 re-quantizing nodes in OpenVINO's graph)."""
    parent = {name: name for name in ranges}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for group in groups:
        members = [name for name in group if name in ranges]
        for name in members[1:]:
            parent[root(name)] = root(members[0])
    union: dict[str, tuple[float, float]] = {}
    for name, (lo, hi) in ranges.items():
        low, high = union.get(root(name), (lo, hi))
        union[root(name)] = (min(low, lo), max(high, hi))
    return {name: union[root(name)] for name in ranges}
