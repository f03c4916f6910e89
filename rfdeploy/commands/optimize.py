"""``rfdeploy optimize``: ONNX in, ONNX out. Every searched conv in a graph from any exporter lowered to
exact plain convs, every other node left as it is, verified in onnxruntime against the input graph."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from rfdeploy import api
from rfdeploy.commands.common import SEED, TOLERANCE, console, parse_shape, print_tuning, status, verdict
from rfdeploy.compiler.passes.choose_lowering import MODES
from rfdeploy.compiler.rewrite_onnx import WEIGHTS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("optimize", help="lower the searched convs of an ONNX graph, leave the rest",
                                   description=__doc__)
    parser.add_argument("onnx", metavar="IN.onnx", help="an ONNX graph holding searched convs "
                                                        "(torch.onnx of a searched model, mmdeploy's end2end.onnx)")
    parser.add_argument("--out", default="rfdeploy-out", help="output directory (default: ./rfdeploy-out)")
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="lowering of each searched conv: auto (cost model), multi (one conv per branch), "
                             "single (one merged conv where exact)")
    parser.add_argument("--input-shape", action="append", type=parse_shape, dest="input_shapes",
                        metavar="N,C,H[,W]", help="the shape to verify at, one per graph input in order; "
                                                  "needed where the graph's inputs have dynamic dims (default: the graph's own)")
    parser.add_argument("--atol", type=TOLERANCE, default=1e-4, help="absolute tolerance of the verification")
    parser.add_argument("--rtol", type=TOLERANCE, default=1e-4, help="tolerance relative to each output's largest value")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random verification inputs")
    parser.add_argument("--tune", metavar="BACKEND[:DEVICE]",
                        help="choose each searched conv's lowering by timing the candidates at its input shape "
                             "on this backend (as for export); timings go in the report (default: the cost model of --mode)")
    parser.add_argument("--weights", choices=WEIGHTS, default="folded",
                        help="folded: each branch's alpha folded into its own weight copy (no multiply left); shared: "
                             "one weight per searched conv, each branch's alpha a scale after its conv (a smaller "
                             "file; the backends fold the scale at load)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with status("rfdeploy optimize") as progress:
        result = api.optimize(args.onnx, args.out, args.mode, args.input_shapes, args.atol, args.rtol, args.seed,
                              progress=progress, tune=args.tune, weights=args.weights)
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print_summary(result)
    return 0 if result.passed else 1


def print_summary(result: api.OptimizeResult) -> None:
    report = result.report
    if report["note"]:
        console.print(f"note: {report['note']}")
    else:
        table = Table(title=f"{report['input']}: {len(report['layers'])} searched conv(s) rewritten")
        for column in ("layer", "rates", "alphas", "lowering", "BatchNorm folded"):
            table.add_column(column, overflow="fold")
        for layer in report["layers"]:
            rates = " ".join("x".join(map(str, r)) for r in layer["rates"])
            alphas = " ".join(f"{a:.3f}" for a in layer["alphas"])
            table.add_row(layer["name"], rates, alphas, layer["lowering"], layer["batchnorm"] or "-")
        console.print(table)
    for layer in report["left_alone"]:
        console.print(f"left alone: {layer['name']}: {layer['reason']}")
    check = report["verification"]
    if "max_abs_err" in check:
        console.print(f"verification vs the input graph ({check['backend']}, {check['scope']}, input shapes "
                      f"{check['input_shapes']}): max_abs_err {check['max_abs_err']:.3g}, "
                      f"max_rel_err {check['max_rel_err']:.3g}: {verdict(check['passed'])}")
        if "whole_graph_not_run" in check:
            console.print(f"onnxruntime cannot run the whole graph ({check['whole_graph_not_run']})")
    print_tuning(report["tuning"])
    for path in result.written:
        console.print(f"wrote {path}")
