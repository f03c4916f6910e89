"""``rfdeploy export``: searched checkpoint + structure -> exact plain-conv ONNX, verified."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from rfdeploy import api
from rfdeploy.backends import BACKENDS, parse_backends
from rfdeploy.backends.onnx_export import OPSETS
from rfdeploy.backends.tensorrt import require_tensorrt
from rfdeploy.commands.common import (
    SEED,
    TOLERANCE,
    add_engine_arguments,
    add_model_arguments,
    add_precision_arguments,
    add_triton_arguments,
    console,
    engine_request,
    number,
    precision_request,
    print_engine,
    print_tuning,
    requested_precision,
    status,
    triton_request,
    verdict,
    warn,
)
from rfdeploy.compiler.passes.choose_lowering import MODES
from rfdeploy.measure.verify import Verification
from rfdeploy.stages.export import TARGETS, layers_title
from rfdeploy.tuning.tune import UNTUNABLE


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="compile a searched model to plain-conv ONNX and verify it",
                                   description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="lowering of each searched conv: auto (cost model), multi (one conv per branch), "
                             "single (one merged conv where exact)")
    parser.add_argument("--opset", type=number(int, OPSETS.start, OPSETS.stop - 1), default=17,
                        help=f"ONNX opset, {OPSETS.start}-{OPSETS.stop - 1}")
    dynamic = parser.add_mutually_exclusive_group()  # --dynamic-shape makes the batch dynamic too
    dynamic.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    dynamic.add_argument("--dynamic-shape", action="store_true",
                        help="export with dynamic batch, height and width (length for 1-D); verified at the export "
                             "shape and at a second batch and size")
    parser.add_argument("--inputs", metavar="FILE.npz",
                        help="also verify on these inputs (arrays by input name, or in order; without "
                             "--input-shape the export takes their shape; default: seeded random inputs only)")
    parser.add_argument("--save-io", metavar="FILE.npz",
                        help="write every verification input and the searched model's outputs on it "
                             "(default: not written)")
    parser.add_argument("--out", default="rfdeploy-out", help="output directory")
    parser.add_argument("--atol", type=TOLERANCE, default=1e-4, help="absolute tolerance of the verification")
    parser.add_argument("--rtol", type=TOLERANCE, default=1e-4, help="tolerance relative to each output's largest value")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random verification inputs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--tune", metavar="BACKEND[:DEVICE]",
                        help=f"choose each layer's lowering by timing the candidates on this backend "
                             f"({', '.join(name for name in BACKENDS if name not in UNTUNABLE)}; e.g. onnxruntime or "
                             f"torch:cuda); "
                             "timings go in the report (default: the cost model of --mode)")
    parser.add_argument("--target", choices=TARGETS,
                        help="where the model will run: the graph's layout and the int8 op set are timed there and "
                             "the model is checked there (--tune times the layout on its backend instead; "
                             "--verify-backends names where to check) (default: onnxruntime, and a lower --precision "
                             "checked where it runs by default)")
    parser.add_argument("--trt", action="store_true",
                        help="also build DIR/model.engine with TensorRT and verify it against the searched forward "
                             "(needs pip install 'rfdeploy[trt]' and a GPU)")
    add_engine_arguments(parser)
    add_precision_arguments(parser)
    parser.add_argument("--verify-backends", metavar="LIST",
                        help="ONNX backends the model is also checked on, comma-separated: at fp32 besides "
                             "onnxruntime, at a lower --precision instead of its default (onnxruntime for int8, "
                             "openvino for bf16; fp16 is checked as the TensorRT engine)")
    add_triton_arguments(parser)
    parser.add_argument("--mmdeploy", metavar="DEPLOY_CFG.py",
                        help="with --config: also export the compiled model through mmdeploy with this deploy config "
                             "(its rewriters and post-processing) to DIR/end2end.onnx with its SDK files, verified "
                             "against the searched model's post-processed output (default: none)")
    parser.set_defaults(run=run)


def main_from(argv: list[str]) -> int:
    """Run ``rfdeploy export`` with these arguments (used by ``rfdeploy demo``)."""
    from rfdeploy.cli import build_parser

    return run(build_parser().parse_args(["export", *argv]))


def run(args: argparse.Namespace) -> int:
    engine = None
    if args.trt:  # fail before the export, not after it
        require_tensorrt()
        engine = engine_request(args)
    triton = triton_request(args)
    backends = tuple(parse_backends(args.verify_backends)) if args.verify_backends else ()
    precision = precision_request(args, requested_precision(args), backends)
    with status("rfdeploy export") as progress:
        result = api.export(args.model, args.ckpt, args.structure, args.mode, args.input_shapes, args.opset,
                            args.dynamic_batch, args.out, args.atol, args.rtol, args.seed, progress=progress,
                            tune=args.tune, engine=engine, dynamic_shape=args.dynamic_shape, inputs=args.inputs,
                            save_io=args.save_io, triton=triton, precision=precision, config=args.config,
                            mmdeploy=args.mmdeploy, target=args.target)
    warn(result.report["load"]["warnings"] + result.report.get("precision", {}).get("warnings", []))
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print_summary(result)
        print_tuning(result.report.get("tuning"))
    return 0 if result.passed else 1


def print_onnx_facts(facts: dict) -> None:
    def listed(tensors: list[dict]) -> str:
        return escape(", ".join(f"{t['name']} {t['dtype']} [{', '.join(map(str, t['shape']))}]" for t in tensors))

    console.print(f"model.onnx: {facts['file_bytes'] / 1e6:.1f} MB; inputs {listed(facts['inputs'])}; outputs "
                  f"{listed(facts['outputs'])}")
    if facts["size_note"]:
        console.print(f"note: {facts['size_note']}")


def print_precision(section: dict) -> None:
    calibration = section["calibration"]
    if calibration:
        share = section["int8_share"]
        in_int8 = f"{share['int8_nodes']} of {share['compute_nodes']} {'/'.join(share['op_types'])} nodes in int8"
        ops = section["quantized_ops"]
        why = f"by {ops['decided_by']} on {ops['backend']}" if "decided_by" in ops else ops["why"]
        console.print(f"int8: calibrated on {calibration['calibration_sets']} batch(es) of {calibration['source']} "
                      f"({calibration['method']} ranges), {section['activations']['format']} activations, "
                      f"op set {ops['kept']} ({why}); {section['quantized_nodes']} QuantizeLinear nodes, {in_int8}; "
                      f"verified on held-out {', '.join(calibration['held_out_sets'])}")
        if share["int8_nodes"] == 0:
            console.print("[red]int8: nothing computes in int8, so this is no int8 model[/red]")
    mixed = section["mixed_precision"]
    if mixed and (mixed["kept_fp32_nodes"] or not mixed["met"]):
        console.print(f"mixed precision: {len(mixed['kept_fp32_tensors'])} tensor(s) kept in fp32 "
                      f"({len(mixed['kept_fp32_nodes'])} nodes, listed in the report) to reach --min-snr "
                      f"{section['min_snr_db']:g} dB" + ("" if mixed["met"] else ": [red]not reached[/red]"))
    for check in section["checks"]:
        snr = "inf" if check["snr_db"] is None else f"{check['snr_db']:.1f}"
        console.print(f"{section['precision']} on {check['backend']} vs searched fp32 forward: SNR {snr} dB (min "
                      f"{check['min_snr_db']:g}), cosine {check['cosine']:.5f}, max_abs_err {check['max_abs_err']:.3g}"
                      f": {verdict(check['passed'])}")
    if not section["passed"] and section["precision"] == "int8" and not mixed:
        console.print("int8 missed its SNR: --min-snr DB keeps the tensors that cost most in fp32 until it is met; "
                      "calibration on real samples (--calib PATH) usually gains too")


def dilation_text(rate: list[int]) -> str:
    """``d=2`` when every dim has the same dilation, else ``(2, 1)``: never ``2x1``, which reads as a kernel."""
    return f"d={rate[0]}" if len(set(rate)) == 1 else f"({', '.join(map(str, rate))})"


def print_involutions(involutions: list[dict]) -> None:
    table = Table(title=f"{len(involutions)} involution(s)")
    for column in ("involution", "kernel", "stride", "groups", "lowering", "chosen by"):
        table.add_column(column, overflow="fold")
    for inv in involutions:
        table.add_row(inv["name"], f"{inv['kernel_size']}x{inv['kernel_size']}", str(inv["stride"]),
                      str(inv["groups"]), inv["lowering"], inv["chosen_by"])
    console.print(table)


def receptive_field_line(field: dict) -> str:
    """The receptive field at the export's input size; the border layer and the unproductive layers only where
    there are some, said to hold at that size (a network trained at another size may use them there)."""
    size = "x".join(map(str, field["input_size"]))
    line = f"receptive field {'x'.join(map(str, field['receptive_field']))} at input {size}"
    if field["border_layer"]:
        line += f"; border layer {field['border_layer']} (the first whose receptive field exceeds {size})"
    if field["unproductive_layers"]:
        whole = "sequence" if len(field["input_size"]) == 1 else "image"
        line += (f"; at this input size {field['unproductive_layers']} layer(s), "
                 f"{100 * field['unproductive_flops_share']:.0f}% of FLOPs, add no context: their input already "
                 f"sees the whole {size} {whole}. A property of {size}, not of the network: at the size it was "
                 f"trained at they may see less (rfdeploy analyze --input-size)")
    return line


def print_summary(result: api.ExportResult) -> None:
    report = result.report
    load = report["load"]
    if report["model_recognised"]:
        console.print(f"recognised architecture: [bold]{report['model']}[/bold]")
    layers = layers_title(load["searched"], load["single_branch"], len(report["layers"]))
    table = Table(title=f"{report['model']}: {layers}")
    for column in ("layer", "branch dilations", "alphas |a|/sum|a|", "lowering"):
        table.add_column(column, overflow="fold")
    for layer in report["layers"]:
        dilations = ", ".join(dilation_text(rate) for rate in layer["rates"])
        alphas = " ".join(f"{a:.3f}" for a in layer["alphas"])
        table.add_row(layer["name"], dilations, alphas, layer["lowering"])
    if report["layers"] or not report["involutions"]:
        console.print(table)
    if report["involutions"]:
        print_involutions(report["involutions"])
    if load["skipped_entries"]:
        console.print(f"skipped {len(load['skipped_entries'])} structure entries outside the deployed part "
                      f"(e.g. {load['skipped_entries'][0]})")
    for note in load["notes"]:
        console.print(f"note: {note}")
    check = report["verification"]
    also = [(f" on {other['backend']}", other) for other in check.get("backends", [])]
    for label, shown in (("", check), (" at a second shape", check.get("other_shapes")), *also):
        if shown:
            console.print(f"verification vs searched PyTorch forward{label} ({shown['backend']}, inputs "
                          f"{', '.join(shown['sources'])} of shape {shown['input_shapes']}): max_abs_err "
                          f"{shown['max_abs_err']:.3g}, max_rel_err {shown['max_rel_err']:.3g}: "
                          f"{verdict(shown.get('onnxruntime_passed', shown['passed']))}")
    field = report["receptive_field"]
    if "error" not in field:
        console.print(receptive_field_line(field))
    print_onnx_facts(report["onnx"])
    if "precision" in report:
        print_precision(report["precision"])
    if result.engine is not None:
        check = Verification(**report["tensorrt"]["verification"])
        print_engine(result.engine, check, "the searched PyTorch forward")
    if "triton" in report:
        served = report["triton"]
        console.print(f"Triton model '{served['model']}' version {served['version']} in {served['repository']} "
                      f"(--triton-name chooses another name)")
    if report["search_ops_left"]:
        console.print(f"[red]search ops left in the graph: {report['search_ops_left']}[/red]")
    for path in result.written:
        console.print(f"wrote {path}")
