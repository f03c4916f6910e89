"""``--graph``: the network as a layered diagram, drawn with matplotlib (no graphviz binary needed).

Unproductive layers are red, border layers orange, global layers blue. Layers sit on ranks (longest path
from the input); a long network wraps into side-by-side panels, cut where a single node carries everything
forward (that node is repeated, faded and labelled, at the top of the next panel). Edges that skip nodes of
their column run beside it, each in its own lane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdeploy.analysis.render_plot import patches, plt, save_figure
from rfdeploy.analysis.report import INPUT, JoinRF, LayerRF, RFReport

FILL = {"productive": "#ffffff", "border": "#f8b74a", "unproductive": "#f1948a", "global": "#d6eaf8",
        "input": "#e5e5e5"}
EDGE = {"productive": "#555555", "border": "#b9770e", "unproductive": "#b03a2e", "global": "#5d8aa8",
        "input": "#777777"}
ROW = 0.62  # inches per rank
COLUMN = 2.75  # inches per column
BOX_W, BOX_H = 2.45, 0.44
JOIN_R = 0.13
SIDE = 0.22  # how far a long edge detours beside its column
LANE = 0.07  # between the vertical runs of detours beside one column
ROWS_PER_PANEL = 24
JOIN_SYMBOL = {"add": "+", "iadd": "+", "add_": "+", "mul": "×", "imul": "×", "mul_": "×", "cat": "cat",
               "concat": "cat", "stack": "stack", "sub": "−"}


@dataclass
class Node:
    id: str
    kind: str  # "input", "layer" or "join"
    inputs: tuple[str, ...]
    status: str  # key of FILL
    title: str
    detail: str
    rank: int = 0
    column: int = 0


def draw_graph(path: str | Path, title: str, report: RFReport) -> None:
    save_figure(figure(title, report), path, dpi=110)


def figure(title: str, report: RFReport):
    """The diagram as a matplotlib figure (``draw_graph`` saves and closes it)."""
    nodes = _nodes(report)
    _assign_ranks(nodes)
    _assign_columns(nodes)
    panels = _panels(nodes)
    by_id = {node.id: node for node in nodes}
    widths = [(max(n.column for n in panel_nodes) + 1) * COLUMN + SIDE * 2 for _, _, panel_nodes in panels]
    rows = max(end - start + 1 for start, end, _ in panels)
    header = 1.3
    fig_w, fig_h = max(sum(widths), 7.5), rows * ROW + header + 0.2
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(-(rows * ROW) - 0.2, header)
    ax.axis("off")

    position: dict[tuple[str, int], tuple[float, float]] = {}  # (node id, panel) -> centre
    for index, (start, end, panel_nodes) in enumerate(panels):
        left = sum(widths[:index]) + SIDE
        for node in panel_nodes:
            x = left + node.column * COLUMN + COLUMN / 2
            y = -(node.rank - start) * ROW - ROW / 2
            position[(node.id, index)] = (x, y)
            ghost = index > 0 and node.rank <= panels[index - 1][1]
            _draw_node(ax, node, x, y, ghost)
            if ghost:
                _draw_continued(ax, node, by_id, x, y)

    drawn: list[tuple[Node, Node, tuple[float, float], tuple[float, float]]] = []
    for node in nodes:
        # a cut node is drawn twice: edges come into its first drawing and leave from its faded repeat
        target_panel = min(i for i, (start, end, _) in enumerate(panels) if start <= node.rank <= end)
        far = []
        for source_id in node.inputs:
            source = by_id[source_id]
            if (source_id, target_panel) in position:
                drawn.append((source, node, position[(source_id, target_panel)], position[(node.id, target_panel)]))
            else:
                far.append(source)
        if far:
            _draw_far_inputs(ax, node, far, position[(node.id, target_panel)])
    lanes = _detour_lanes([edge for edge in drawn if _detours(edge[0], edge[1], nodes)])
    for source, target, tail, head in drawn:
        _draw_edge(ax, source, target, tail, head, nodes, lanes.get((source.id, target.id), 0))

    ax.text(0.2, header - 0.25, title, fontsize=11, fontweight="bold", va="center")
    ax.text(0.2, header - 0.55, _summary(report), fontsize=9, va="center")
    legend = [patches.Patch(facecolor=FILL[k], edgecolor=EDGE[k], label=label) for k, label in (
        ("productive", "adds context"), ("border", "border: last to add context"),
        ("unproductive", "unproductive: its input already sees the whole input"), ("global", "global"))]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(0.2 / fig_w, (header - 0.75 + rows * ROW + 0.2) / fig_h),
              ncol=4, fontsize=8, frameon=False, handlelength=1.2)
    return fig


def _summary(report: RFReport) -> str:
    border = report.border_layer or "none (no layer sees the whole input)"
    unproductive = len(report.unproductive)
    return (f"receptive field {_dims(report.receptive_field)} at input {'x'.join(map(str, report.input_size))} · "
            f"border layer: {border} · {unproductive} unproductive layer{'s' * (unproductive != 1)}, "
            f"{report.unproductive_flops_share:.0%} of FLOPs")


# -- what to draw ------------------------------------------------------------------------------------------

def _nodes(report: RFReport) -> list[Node]:
    size = "x".join(map(str, report.input_size))
    nodes = [Node(INPUT, "input", (), "input", "input", size)]
    items: list[LayerRF | JoinRF] = sorted([*report.layers, *report.joins], key=lambda item: item.order)
    for item in items:
        if isinstance(item, LayerRF):
            nodes.append(Node(item.name, "layer", item.inputs, _status(item), item.name, _detail(item)))
        else:
            symbol = JOIN_SYMBOL.get(item.op, item.op[:5])
            nodes.append(Node(item.name, "join", item.inputs, "productive", symbol, ""))
    return nodes


def _status(layer: LayerRF) -> str:
    if layer.is_global:
        return "global"
    if not layer.productive:
        return "unproductive"
    return "border" if layer.border else "productive"


_SHORT_OPS = {"Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "ConvTranspose2d": "deconv",
              "MaxPool1d": "max pool", "MaxPool2d": "max pool", "AvgPool1d": "avg pool", "AvgPool2d": "avg pool",
              "AdaptiveAvgPool2d": "adaptive avg", "AdaptiveAvgPool1d": "adaptive avg",
              "AdaptiveMaxPool2d": "adaptive max", "Linear": "linear", "SearchedConv": "searched conv",
              "BranchSum": "multi-branch conv", "Conv2dRFSearchOp": "searched conv"}


def _stride(values) -> str:
    if all(v >= 1 for v in values):
        return f" /{_dims(values)}"
    return f" up x{_dims([1 / v for v in values])}"  # an adaptive pool to more positions than it gets


def _dims(values) -> str:
    values = [_plain(v) for v in values]
    return str(values[0]) if len(set(values)) == 1 and len(values) == 2 else "x".join(map(str, values))


def _plain(value):
    return int(value) if float(value).is_integer() else round(float(value), 2)


def _detail(layer: LayerRF) -> str:
    parts = [_SHORT_OPS.get(layer.op, layer.op)]
    if layer.kernel is not None:
        kernel = "x".join(map(str, layer.kernel))
        if any(s != 1 for s in layer.stride or ()):
            kernel += _stride(layer.stride)
        parts.append(kernel)
    if layer.rates is not None:
        parts.append("d " + "|".join(_dims(rate) for rate in layer.rates))
    elif layer.dilation is not None and any(d != 1 for d in layer.dilation):
        parts.append(f"d{_dims(layer.dilation)}")
    parts.append("global" if layer.is_global else f"RF {_dims(layer.rf)}")
    return " · ".join(parts)


# -- layout ------------------------------------------------------------------------------------------------

def _assign_ranks(nodes: list[Node]) -> None:
    rank: dict[str, int] = {}
    for node in nodes:  # nodes come in execution order: inputs first
        node.rank = 1 + max((rank[i] for i in node.inputs if i in rank), default=-1)
        rank[node.id] = node.rank


def _assign_columns(nodes: list[Node]) -> None:
    """Each node continues the column of its first input where that is free, else the next free one.

    Within a rank, nodes whose consumer comes soonest claim first: the main path keeps its column and a
    shortcut (a downsampling conv whose result waits for the block's end) moves aside.
    """
    first_use: dict[str, int] = {}
    for node in nodes:
        for source in node.inputs:
            first_use.setdefault(source, node.rank)
    by_rank: dict[int, list[Node]] = {}
    for index, node in enumerate(nodes):
        by_rank.setdefault(node.rank, []).append(node)
    column: dict[str, int] = {}
    for rank in sorted(by_rank):
        used: set[int] = set()
        waiting = sorted(by_rank[rank], key=lambda n: first_use.get(n.id, math.inf) - n.rank)
        for node in waiting:
            wanted = column.get(node.inputs[0], 0) if node.inputs else 0
            while wanted in used:
                wanted += 1
            used.add(wanted)
            node.column = column[node.id] = wanted


def _panels(nodes: list[Node]) -> list[tuple[int, int, list[Node]]]:
    """``(first rank, last rank, nodes)`` per panel: a long network wraps into about as many panels as
    make the picture a little wider than high, of even height, each ending at a cut rank where one is near."""
    last = max(node.rank for node in nodes)
    columns = max(node.column for node in nodes) + 1
    count = 1
    if last + 1 > ROWS_PER_PANEL:  # width / height = count^2 * columns * COLUMN / (ranks * ROW) ~ 1.4
        count = max(1, round(math.sqrt(1.4 * ROW * (last + 1) / (columns * COLUMN))))
    cuts = _cut_ranks(nodes, max_span=math.ceil((last + 1) / count))
    for rows in range(math.ceil((last + 1) / count), last + 2):
        spans = _split(last, rows, cuts)
        if len(spans) <= count:
            break
    return [(start, end, [n for n in nodes if start <= n.rank <= end]) for start, end in spans]


def _split(last: int, rows: int, cuts: set[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        limit = start + rows - 1
        if limit >= last:
            return spans + [(start, last)]
        candidates = [r for r in cuts if start + rows // 2 < r <= limit]
        end = max(candidates) if candidates else limit
        spans.append((start, end))
        start = end if end in cuts else end + 1


def _cut_ranks(nodes: list[Node], max_span: int) -> set[int]:
    """Ranks held by a single node that no edge jumps over; edges longer than a panel (outputs collected
    at the very end) do not count: they are drawn as a note at their target anyway."""
    rank = {node.id: node.rank for node in nodes}
    per_rank: dict[int, int] = {}
    for node in nodes:
        per_rank[node.rank] = per_rank.get(node.rank, 0) + 1
    jumped: set[int] = set()
    for node in nodes:
        for source in node.inputs:
            if node.rank - rank[source] <= max_span:
                jumped.update(range(rank[source] + 1, node.rank))
    return {r for r, count in per_rank.items() if count == 1 and r not in jumped}


# -- drawing -----------------------------------------------------------------------------------------------

def _draw_node(ax, node: Node, x: float, y: float, ghost: bool) -> None:
    alpha = 0.45 if ghost else 1.0
    if node.kind == "join":
        ax.add_patch(patches.Circle((x, y), JOIN_R, facecolor="#ffffff", edgecolor="#555555", linewidth=1, alpha=alpha,
                            zorder=3))
        ax.text(x, y, node.title, ha="center", va="center", fontsize=8 if len(node.title) == 1 else 6,
                alpha=alpha, zorder=4)
        return
    ax.add_patch(patches.FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                boxstyle="round,pad=0,rounding_size=0.06", facecolor=FILL[node.status],
                                edgecolor=EDGE[node.status], linewidth=1.1, alpha=alpha, zorder=3,
                                linestyle="--" if ghost else "-"))
    ax.text(x, y + 0.08, _fit(node.title, 34), ha="center", va="center", fontsize=7.5, fontweight="bold",
            alpha=alpha, zorder=4)
    ax.text(x, y - 0.1, _fit(node.detail, 40), ha="center", va="center", fontsize=6.8, alpha=alpha, zorder=4,
            color="#222222")


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _half_height(node: Node) -> float:
    return JOIN_R if node.kind == "join" else BOX_H / 2


def _detours(source: Node, target: Node, nodes: list[Node]) -> bool:
    """An edge that would cross nodes of its source's column goes around them, on the right."""
    span = target.rank - source.rank
    return span > 1 and any(n.column == source.column and source.rank < n.rank < target.rank for n in nodes)


def _detour_lanes(detours: list[tuple[Node, Node, tuple[float, float], tuple[float, float]]]) -> dict:
    """A lane per detour, ``(source id, target id) -> 0, 1, ...``: detours beside the same column whose vertical
    runs overlap get different lanes, so that a reader can follow each split to its sum (Res2Net's
    hierarchical adds). Shorter detours take the inner lanes, so that nested ones do not cross."""
    placed: list[tuple[float, float, float, int]] = []  # side x, top y, bottom y, lane
    lanes = {}
    for source, target, (x0, y0), (x1, y1) in sorted(detours, key=lambda d: d[1].rank - d[0].rank):
        side, high, low = max(x0, x1), y0, y1
        taken = {lane for x, top, bottom, lane in placed if x == side and low <= top and bottom <= high}
        lane = next(n for n in range(len(taken) + 1) if n not in taken)
        placed.append((side, high, low, lane))
        lanes[(source.id, target.id)] = lane
    return lanes


def _draw_edge(ax, source: Node, target: Node, start, end, nodes, lane: int = 0) -> None:
    (x0, y0), (x1, y1) = start, end
    top = y1 + _half_height(target)
    bottom = y0 - _half_height(source)
    style: dict[str, Any] = {"arrowstyle": "-|>", "mutation_scale": 8, "color": "#666666", "linewidth": 0.9, "zorder": 2,
             "shrinkA": 0, "shrinkB": 0}
    span = target.rank - source.rank
    if not _detours(source, target, nodes):
        if source.column != target.column and span > 1:  # down its own column, then across
            ax.plot([x0, x0], [bottom, y1 + ROW * 0.6], color="#666666", linewidth=0.9, zorder=2)
            bottom = y1 + ROW * 0.6
        ax.add_patch(patches.FancyArrowPatch((x0, bottom), (x1, top), **style))
        return
    # around the column, on its right-hand side, in its own lane
    half_w = JOIN_R if source.kind == "join" else BOX_W / 2
    side = max(x0, x1) + BOX_W / 2 + SIDE * 0.3 + lane * LANE
    exit_x = x0 + half_w
    entry_x = x1 + (JOIN_R if target.kind == "join" else BOX_W / 2)
    ax.plot([exit_x, side, side], [y0, y0, y1], color="#666666", linewidth=0.9, zorder=2)
    ax.add_patch(patches.FancyArrowPatch((side, y1), (entry_x, y1), **style))


def _draw_continued(ax, node: Node, by_id: dict[str, Node], x: float, y: float) -> None:
    """The faded repeat at the top of a panel says what it is: a join by what it joins."""
    what = node.title
    if node.kind == "join":
        what = f"{node.title} of " + ", ".join(_fit(by_id[i].title, 30) for i in node.inputs[:2])
        what += f" +{len(node.inputs) - 2} more" if len(node.inputs) > 2 else ""
    ax.text(x, y + _half_height(node) + 0.04, f"{what} (continued)", ha="center", va="bottom", fontsize=5.5,
            color="#666666")


def _draw_far_inputs(ax, target: Node, sources: list[Node], centre) -> None:
    """Inputs from another panel: named beside the target instead of drawn across the picture."""
    names = ", ".join(_fit(source.title, 30) for source in sources[:2])
    if len(sources) > 2:
        names += f" +{len(sources) - 2} more"
    x, y = centre
    if target.kind == "join":
        ax.text(x - JOIN_R - 0.05, y, f"from {names} →", ha="right", va="center", fontsize=5.5, color="#666666")
    else:
        ax.text(x - BOX_W / 2, y + BOX_H / 2 + 0.03, f"↓ from {names}", ha="left", va="bottom", fontsize=5.5,
                color="#666666")
