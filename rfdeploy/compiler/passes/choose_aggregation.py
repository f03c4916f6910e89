"""choose_aggregation: per involution, how its ``k x k`` aggregation is written (``rfdeploy.compiler.aggregations``).

Preserves outputs up to summation order: every candidate forms the reference's products and sums them over the
taps, in another order.

Cost model (``auto``), in floats moved, for onnxruntime on CPU where each graph node has a fixed cost:
    cost = FLOATS_PER_NODE * nodes + floats read and written
``taps`` moves ``3 k^2`` copies of the output (Slice, Mul, Add per tap) in ``3 k^2`` nodes; ``rows`` the same
plus the ``k`` horizontal shifts and the final sum, in ``4k + 2`` nodes; ``shifts`` and ``unfold`` build all ``k^2``
copies at once and read them twice (Mul, ReduceSum), ``shifts`` also paying its one-hot conv's ``k^2`` MACs per
copy at GEMM speed. ``FLOATS_PER_NODE`` is 8000: about 5 us per node against 0.6 ns per float, as measured on a
RedNet-50's layers. Choices measured on the target (``--tune BACKEND``) override the model.
"""

from __future__ import annotations

from rfdeploy.compiler.aggregations import AGGREGATIONS
from rfdeploy.compiler.involution_ir import InvolutionIR

FLOATS_PER_NODE = 8000
MACS_PER_FLOAT_MOVED = 16  # a GEMM's multiply-adds in the time one float of an elementwise op moves
CANDIDATES = ("taps", "rows", "shifts")  # exact and fast; ``unfold`` (the reference's) is timed as the baseline
AUTO = "auto"


def aggregation_cost(lowering: str, ir: InvolutionIR, output_positions: int = 1) -> float:
    """Estimated cost per output position and channel, times ``output_positions``."""
    g = ir.geometry
    k, taps = g.kernel_size, g.taps
    per_channel = {
        "taps": (3 * taps, 3 * taps),
        "rows": (4 * k + 2, 3 * taps + 2 * k + k),
        "shifts": (4, taps * taps / MACS_PER_FLOAT_MOVED + 3 * taps),
        "unfold": (8, 6 * taps),
    }
    nodes, floats = per_channel[lowering]
    return FLOATS_PER_NODE * nodes + floats * ir.channels * output_positions


def choose_aggregation(ir: InvolutionIR, aggregation: str = AUTO, output_positions: int | None = None) -> InvolutionIR:
    """``aggregation``: a name from ``AGGREGATIONS``, or ``auto`` (the cost model, at ``output_positions``
    positions: the layer's output size where known, else 28x28)."""
    if aggregation != AUTO:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}")
        return ir.changed(lowering=aggregation)
    positions = output_positions or 28 * 28
    costs = {name: aggregation_cost(name, ir, positions) for name in CANDIDATES}
    chosen = min(costs, key=costs.__getitem__)
    summary = ", ".join(f"{name} {cost / 1e6:.2f}M" for name, cost in costs.items())
    return ir.changed(lowering=chosen).noted(f"cost model at {positions} output positions: {summary} floats moved")
