"""``--plot``: receptive field against depth, before and after search, with the input size as the border."""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from rfdeploy.analysis.report import LayerRF, RFReport
from rfdeploy.artifacts import check_output_file, write_all
from rfdeploy.errors import RFDeployError
from rfdeploy.optional import OptionalModule

MATPLOTLIB_HINT = "pictures need matplotlib: pip install matplotlib"
if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    from matplotlib import patches
else:  # files only, no window: the Agg backend, chosen before pyplot loads
    plt = OptionalModule("matplotlib.pyplot", MATPLOTLIB_HINT,
                         setup=lambda: importlib.import_module("matplotlib").use("Agg"))
    patches = OptionalModule("matplotlib.patches", MATPLOTLIB_HINT)

PLAIN_COLOUR = "#8c8c8c"
SEARCHED_COLOUR = "#1f77b4"
BORDER_COLOUR = "#f39c12"
UNPRODUCTIVE_COLOUR = "#e74c3c"


FORMATS = (".png", ".svg")  # what --graph and --plot write, named by the file's suffix


def check_picture_file(path: str | Path, option: str) -> Path:
    """``path`` names a picture rfdeploy can draw (by its suffix) where a file can be written."""
    if Path(path).suffix.lower() not in FORMATS:
        raise RFDeployError(f"{option} {path}: name a {' or '.join(FORMATS)} file (the suffix sets the format)")
    return check_output_file(path)


def save_figure(fig, path: str | Path, dpi: int) -> None:
    """The figure in the format its suffix names, written whole or not at all."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=dpi)
    finally:
        plt.close(fig)
    write_all(path.parent, {path.name: buffer.getvalue()})


def _spatial_layers(report: RFReport) -> list[LayerRF]:
    return [layer for layer in report.layers if not layer.is_global]


def plot_receptive_fields(path: str | Path, title: str, plain: RFReport, searched: RFReport | None = None) -> None:
    """Receptive field (largest spatial dim) of every layer in execution order; the judged report (the
    searched one when given) marks its unproductive layers and its border layer."""
    judged = searched or plain
    layers = _spatial_layers(judged)
    if not layers:
        raise RFDeployError("nothing to plot: the model has no spatial layer")
    depth = range(1, len(layers) + 1)
    fig, ax = plt.subplots(figsize=(min(max(8.0, 0.14 * len(layers) + 4), 18), 5.2), layout="constrained")

    input_size = max(judged.input_size)
    ax.axhline(input_size, color=UNPRODUCTIVE_COLOUR, linestyle="--", linewidth=1.2)
    ax.text(len(layers) + 0.5, input_size, f"input size {'x'.join(map(str, judged.input_size))} ",
            color=UNPRODUCTIVE_COLOUR, va="bottom", ha="right", fontsize=9)

    first_bad = next((i for i, layer in enumerate(layers, 1) if not layer.productive), None)
    if first_bad is not None:
        ax.axvspan(first_bad - 0.5, len(layers) + 0.5, color=UNPRODUCTIVE_COLOUR, alpha=0.08, linewidth=0)

    plain_by_name = {layer.name: max(layer.rf) for layer in _spatial_layers(plain)}
    if searched is not None:
        before = [plain_by_name.get(layer.name, float("nan")) for layer in layers]  # nan: no point
        ax.plot(depth, before, color=PLAIN_COLOUR, linewidth=1.6, label="before search", drawstyle="steps-mid",
                alpha=0.9)
        _end_label(ax, len(layers), plain.receptive_field, PLAIN_COLOUR)
    after = [max(layer.rf) for layer in layers]
    label = "after search" if searched is not None else "receptive field"
    ax.plot(depth, after, color=SEARCHED_COLOUR, linewidth=2.2, label=label, drawstyle="steps-mid",
            marker="o", markersize=3 if len(layers) > 60 else 4)
    _end_label(ax, len(layers), judged.receptive_field, SEARCHED_COLOUR)

    bad = [(i, r) for i, (layer, r) in enumerate(zip(layers, after), 1) if not layer.productive]
    if bad:
        ax.scatter([i for i, _ in bad], [r for _, r in bad], color=UNPRODUCTIVE_COLOUR, s=18, zorder=3, label="unproductive layer")
    borders = [(i, r, layer) for i, (layer, r) in enumerate(zip(layers, after), 1) if layer.border]
    if borders:
        ax.scatter([b[0] for b in borders], [b[1] for b in borders], color=BORDER_COLOUR, s=70, zorder=4,
                   edgecolor="black", linewidth=0.6, label="border layer")
        i, r, layer = borders[0]
        ax.annotate(f"border: {layer.name} (RF {r})", (i, r), xytext=(-12, 18), textcoords="offset points",
                    ha="right", fontsize=9, arrowprops={"arrowstyle": "-", "color": "black", "linewidth": 0.6})

    _label_layers(ax, layers)
    ax.set_xlim(0.5, len(layers) + max(1.5, 0.06 * len(layers)))
    ax.set_ylim(0, max(max(after), input_size, *(v for v in plain_by_name.values())) * 1.08)
    ax.set_ylabel("receptive field (input pixels)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    save_figure(fig, path, dpi=150)


def _end_label(ax, x: int, receptive_field, colour: str) -> None:
    """The network's receptive field, written just past the end of its line."""
    value = max(receptive_field)
    ax.annotate(f"{value}", (x, value), xytext=(8, 0), textcoords="offset points", color=colour, va="center",
                fontsize=9, fontweight="bold")


def _label_layers(ax, layers: list[LayerRF]) -> None:
    """Name the layers that downsample (where the growth speeds up); a network without any gets a few names."""
    ticks = [(i, layer.name) for i, layer in enumerate(layers, 1)
             if layer.stride is not None and any(s > 1 for s in layer.stride)]
    label = "layer (execution order); named: the layers that downsample"
    if not ticks:
        ticks = [(i, layer.name) for i, layer in enumerate(layers, 1)]
        label = "layer (execution order)"
    if len(ticks) > 40:  # keep the axis readable
        ticks = ticks[:: len(ticks) // 40 + 1]
    ax.set_xticks([i for i, _ in ticks], [name for _, name in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel(label)
