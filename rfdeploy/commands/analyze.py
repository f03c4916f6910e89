"""``rfdeploy analyze``: every layer's receptive field, and which layers add no context at an input size.

A layer is unproductive when the receptive field of its input already exceeds the input size in every
dimension; the border layer is the first whose own receptive field does. With ``--structure`` (and
optionally ``--ckpt``) the searched dilations are used, and compared with the plain network's.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table
from torch import nn

from rfdeploy.analysis import RFReport, analyze
from rfdeploy.analysis.render_plot import check_picture_file
from rfdeploy.commands.common import CONFIG_HELP, MODEL_HELP, console, parse_size, warn
from rfdeploy.errors import RFDeployError

STATUS_STYLE = {"productive": "green", "border": "bold dark_orange", "unproductive": "bold red", "global": "blue"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="receptive field of every layer; unproductive layers at an input size",
                                   description=__doc__)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--config", metavar="CFG.py", help=CONFIG_HELP)
    parser.add_argument("--ckpt", help="searched checkpoint; rates come from it and the structure file "
                                       "(default: none, the structure file's rates alone)")
    parser.add_argument("--structure", help="structure JSON from the search: its rates alone are enough, no weights "
                                            "(default: none, the plain network)")
    parser.add_argument("--input-size", type=parse_size, metavar="H[,W]",
                        help="spatial input size the network will run at, T for 1-D models (default: the zoo "
                             "model's)")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.add_argument("--graph", metavar="FILE.svg|.png", help="draw the network, unproductive layers red, border orange "
                                                                   "(default: no drawing)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot receptive field against depth, before and after search "
                                                         "(default: no plot)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.model is None and args.config is None and args.ckpt is None:
        raise RFDeployError("--model is needed (a zoo name or package.module:callable; or an OpenMMLab --config) "
                            "unless --ckpt is given")
    for option, drawing in (("--graph", args.graph), ("--plot", args.plot)):
        if drawing:
            check_picture_file(drawing, option)
    name, plain, searched, rates, default_shape, warnings = _load(args)
    size = _input_size(args.input_size, default_shape, plain)
    warn(warnings)
    channels = default_shape[1] if default_shape else None
    before = analyze(plain, size, in_channels=channels)
    after = None
    if searched is not None:
        after = analyze(searched, size, in_channels=channels)
    elif rates is not None:
        after = analyze(plain, size, rates, in_channels=channels)
    report = after or before
    title = f"{name}{' after search' if after else ''} at {'x'.join(map(str, size))}"
    if args.graph:
        from rfdeploy.analysis.render_graph import draw_graph

        draw_graph(args.graph, title, report)
    if args.plot:
        from rfdeploy.analysis.render_plot import plot_receptive_fields

        plot_receptive_fields(args.plot, f"Receptive field by depth: {title}", before, after)
    if args.json:
        print(json.dumps(as_json(name, before, after), indent=2))
    else:
        print_report(name, before, after)
    return 0


def _load(args) -> tuple[str, nn.Module, nn.Module | None, dict | None, tuple[int, ...] | None, list[str]]:
    """``(name, plain model, searched model or None, searched rates or None, default input shape, warnings)``."""
    from rfdeploy.loader.searched_model import structure_rates
    from rfdeploy.loader.sources import architecture, load, model_source, structure_of

    source = model_source(args.model, args.config)
    if args.ckpt is not None:
        loaded = load(source, args.ckpt, args.structure)
        plain = architecture(source or loaded.model_name)
        return loaded.model_name, plain.module, loaded.searched, None, plain.input_shape, loaded.info.warnings
    plain = architecture(source)
    structure = structure_of(plain, args.structure)
    rates = structure_rates(plain.module, structure) if structure else None
    return plain.name, plain.module, None, rates, plain.input_shape, []


def _input_size(given: tuple[int, ...] | None, default_shape, model: nn.Module) -> tuple[int, ...]:
    dims = len(default_shape) - 2 if default_shape else _conv_dims(model)
    if given is None:
        if not default_shape:
            raise RFDeployError("--input-size is needed: the model has no default input shape")
        return tuple(default_shape[2:])
    if dims is not None and len(given) == 1:
        return given * dims
    if dims is not None and len(given) != dims:
        raise RFDeployError(f"--input-size {','.join(map(str, given))}: the model takes {dims}-d input")
    return given


def _conv_dims(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return len(module.kernel_size)
    return None


SEARCHED_MODEL = ("the searched model as trained: each searched conv runs every branch, and its FLOPs count them "
                  "all (the exported model's lowering may merge them)")
PLAIN_MODEL = "the plain network, before search"


def analysed(after: RFReport | None) -> str:
    """Which model the figures describe: the same one with or without --ckpt."""
    return SEARCHED_MODEL if after is not None else PLAIN_MODEL


def as_json(name: str, before: RFReport, after: RFReport | None) -> dict:
    """The judged analysis (after search where there is one) with what the search changed."""
    data = {"model": name, "searched": after is not None, "analysed": analysed(after), **(after or before).to_json()}
    if after is not None:
        plain_rf = {layer.name: list(layer.rf) for layer in before.layers}
        for layer in data["layers"]:
            layer["rf_before_search"] = plain_rf.get(layer["name"])
        summary = before.to_json()
        data["before_search"] = {key: summary[key] for key in
                                 ("receptive_field", "border_layer", "unproductive_layers", "unproductive_flops_share")}
    return data


def status(layer) -> str:
    if layer.is_global:
        return "global"
    if not layer.productive:
        return "unproductive"
    return "border" if layer.border else "productive"


def _size(values) -> str:
    if values is None:
        return ""
    shown = [str(int(v)) if float(v).is_integer() else f"{float(v):.3g}" for v in values]
    return shown[0] if len(set(shown)) == 1 and len(shown) > 1 else "x".join(shown)


def print_report(name: str, before: RFReport, after: RFReport | None) -> None:
    report = after or before
    size = "x".join(map(str, report.input_size))
    table = Table(title=f"{name}{' after search' if after else ''}: receptive fields at input {size}",
                  header_style="bold")
    columns = ["#", "layer", "op", "kernel", "stride", "dilation", "RF", "input RF", "jump", "map", "MFLOPs", "status"]
    if after is not None:
        columns.insert(6, "RF before")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in ("layer", "status"),
                         justify="right" if column in ("#", "MFLOPs") else "left")
    plain_rf = {layer.name: layer.rf for layer in before.layers}
    for index, layer in enumerate(report.layers, 1):
        dilation = " | ".join(_size(rate) for rate in layer.rates) if layer.rates else _size(layer.dilation)
        rf = "global" if layer.is_global else _size(layer.rf)
        kernel = "x".join(map(str, layer.kernel)) if layer.kernel else ""
        row = [str(index), layer.name, layer.op, kernel, _size(layer.stride), dilation, rf,
               _size(layer.input_rf), _size(layer.jump), _size(layer.feature_map), f"{layer.flops / 1e6:,.1f}"]
        if after is not None:
            row.insert(6, "global" if layer.is_global else _size(plain_rf.get(layer.name)))
        label = status(layer)
        row.append(f"[{STATUS_STYLE[label]}]{label}[/]")
        table.add_row(*row)
    console.print(table)
    console.print(f"analysed: {analysed(after)}")
    _print_summary(console, before, after)


def _print_summary(console: Console, before: RFReport, after: RFReport | None) -> None:
    report = after or before
    size = "x".join(map(str, report.input_size))
    rf = _size(report.receptive_field)
    if after is not None:
        rf += f" (before search: {_size(before.receptive_field)})"
    console.print(f"receptive field: [bold]{rf}[/bold]")
    if report.border_layer:
        console.print(f"border layer: [bold dark_orange]{report.border_layer}[/] (the first whose receptive field "
                      f"exceeds {size})")
    else:
        console.print(f"border layer: none (no layer's receptive field exceeds {size})")
    count = len(report.unproductive)
    console.print(f"unproductive layers at {size}: [bold{' red' if count else ''}]{count}[/] of {len(report.layers)}, "
                  f"{report.unproductive_flops_share:.1%} of {report.total_flops / 1e9:,.2f} GFLOPs")
    if count:
        console.print(f"unproductive is a property of the input size {size}, not of the network: at the size it "
                      f"was trained at these layers may still add context")
    for note in report.notes:
        console.print(f"note: {note}")
