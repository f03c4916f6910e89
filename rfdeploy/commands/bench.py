"""``rfdeploy bench``: latency and accuracy of the searched model as trained vs rfdeploy's compiled model.

Per backend, ``searched`` is the model as trained (PyTorch runs the search op, eager or through
torch.compile; onnxruntime and TensorRT run a naive export that keeps every branch and the alpha
arithmetic) and ``compiled`` is rfdeploy's output. Variants are timed interleaved after a warm-up; errors are against PyTorch's searched forward.
"""

from __future__ import annotations

import argparse
import json
import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rfdeploy.backends import BACKENDS, DEVICES, parse_backends
from rfdeploy.commands.common import (
    COUNT,
    SEED,
    add_model_arguments,
    add_precision_arguments,
    console,
    precision_request,
    require,
    warn,
)
from rfdeploy.compiler.passes.choose_lowering import MODES
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.sources import model_source
from rfdeploy.precision import parse_precisions
from rfdeploy.quantize.calibration import require_calibration
from rfdeploy.stages.bench import (
    VARIANTS,
    BenchReport,
    BenchRequest,
    finish_bench,
    free_cores,
    planned_ticks,
    start_bench,
)

THREADS_PER_CORE = 4  # the most --threads takes; more than one per core already gets a warning


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time searched vs compiled model per backend, with accuracy",
                                   description=__doc__)
    add_model_arguments(parser)
    parser.add_argument("--backends", default="torch,onnxruntime", type=parse_backends_arg,
                        help=f"comma-separated, of: {', '.join(BACKENDS)}")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where the backends run (cuda: one "
                                                                          "NVIDIA GPU)")
    parser.add_argument("--warmup", type=COUNT, default=10, help="untimed runs of each variant first")
    parser.add_argument("--iters", type=COUNT, default=50, help="timed runs of each variant")
    parser.add_argument("--threads", type=COUNT, default=os.cpu_count() or 1,
                        help="intra-op threads of PyTorch and onnxruntime (default: all %(default)s cores)")
    parser.add_argument("--mode", choices=MODES, default="auto", help="lowering of the compiled variant")
    parser.add_argument("--tune", metavar="BACKEND[:DEVICE]",
                        help="choose each layer's lowering by timing it on this backend first (default: the "
                             "cost model of --mode)")
    parser.add_argument("--random-alphas", type=SEED, metavar="SEED",
                        help="without --ckpt: draw every searched conv's alphas at random, as timing does not "
                             "depend on them (default: the structure file's equal initial alphas)")
    parser.add_argument("--with-plain", action="store_true",
                        help="also time the single-branch network of the same shape (a cost reference)")
    parser.add_argument("--precisions", default="fp32", type=parse_precisions_arg, metavar="LIST",
                        help="number formats, comma-separated, of: fp32, fp16, bf16, int8; a lower one times the "
                             "compiled model on each backend that runs it (int8 needs --calib)")
    add_precision_arguments(parser)
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random input")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def parse_backends_arg(text: str) -> list[str]:
    try:
        return parse_backends(text)
    except RFDeployError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_precisions_arg(text: str) -> list[str]:
    try:
        return parse_precisions(text)
    except RFDeployError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    require(args.random_alphas is None or args.ckpt is None, "--random-alphas replaces a checkpoint's alphas; "
                                                             "give --ckpt or --random-alphas, not both")
    most = THREADS_PER_CORE * (os.cpu_count() or 1)  # more only wait for a core, and thousands exhaust memory
    require(args.threads <= most, f"--threads {args.threads}: at most {most} ({THREADS_PER_CORE} per core of "
                                  f"this machine's {os.cpu_count() or 1})")
    request = precision_request(args, "int8")
    if "int8" in args.precisions:
        require_calibration(request.calib)
    int8 = request if "int8" in args.precisions else None
    bench_request = BenchRequest(
        model_source(args.model, args.config), args.ckpt, args.structure, args.mode, args.input_shapes, seed=args.seed, tune=args.tune,
        precision=int8, threads=args.threads, backends=tuple(args.backends), precisions=tuple(args.precisions),
        device=args.device, warmup=args.warmup, iters=args.iters, with_plain=args.with_plain,
        random_alphas=args.random_alphas)
    started = start_bench(bench_request)
    warn(started["loaded"].info.warnings)  # once the input is known good: a bad one gets its one error line alone
    warn_of_busy_cores(args.threads, args.device)
    variant_count = len(VARIANTS) + int(args.with_plain)
    rows = len(args.backends) * (variant_count + len(args.precisions) - 1)
    with progress_bar() as progress:
        task = progress.add_task("benchmark", total=planned_ticks(rows, args.warmup, args.iters))
        report = finish_bench(started, tick=lambda text: progress.update(task, advance=1, description=text))
    warn(list(dict.fromkeys(w for section in report.int8.values() for w in section.get("warnings", []))))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_table(report)
    return 0


def warn_of_busy_cores(threads: int, device: str) -> None:
    free, usable, load = free_cores()
    if device == "cpu" and threads > free:
        warn([(f"--threads {threads}, but about {free} of the {usable} cores this process may use are free "
               f"(1-minute load average {load:.1f}): threads that wait for a core can make PyTorch many "
               f"times slower; try --threads {free}")])


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def error_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def snr_text(row) -> str:
    if row.max_abs_err is None:
        return "n/a"
    return "inf" if row.snr_db is None else f"{row.snr_db:.1f}"


def print_table(report: BenchReport) -> None:
    speedups = report.speedups()
    flags = f"; CPU flags: {' '.join(report.cpu_flags) or 'none of VNNI/BF16/AMX'}" if report.cpu_flags else ""
    involutions = f", {report.involutions} involutions" if report.involutions else ""
    table = Table(title=f"{report.model} ({report.layers}{involutions}) {report.input_shapes} on "
                        f"{report.device_name} ({report.device}, {report.threads} threads, {report.iters} runs "
                        f"after {report.warmup} warm-up{flags})")
    for column in ("backend", "variant", "precision", "p50 ms", "p90 ms", "p99 ms", "inputs/s", "max_abs_err",
                   "max_rel_err", "SNR dB", "speedup", "ratio"):
        table.add_column(column, justify="left" if column in ("backend", "variant", "precision") else "right")
    for r in report.results:
        speedup = (f"{speedups[r.backend]:.3f}x" if r.variant == "compiled" and r.precision == "fp32"
                   and r.backend in speedups else "")
        table.add_row(r.backend, r.variant, r.precision, f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{r.throughput:.1f}", error_text(r.max_abs_err), error_text(r.max_rel_err), snr_text(r),
                      speedup, "" if r.ratio is None else f"{r.ratio:.3f}")
    console.print(table)
    console.print("speedup = searched p50 / compiled p50 on the same backend, timed interleaved in this run")
    if report.reference:
        console.print(f"ratio = p50 / the p50 of {report.reference} (below 1: faster), in this run")
    if report.skipped:
        console.print(f"not run (the backend lacks the precision): {', '.join(report.skipped)}")
    if report.int8:
        held_out = next(iter(report.int8.values()))["calibration"]["held_out_sets"]  # the same on every backend
        console.print(f"int8 SNR on the held-out batches {', '.join(held_out)}; other rows on the timed input")
    if report.involutions:
        console.print("searched = the model as written: its involutions run nn.Unfold (exported as im2col Gathers)")
    if any(r.variant == "plain" for r in report.results):
        console.print("plain = each searched conv with only its largest-alpha branch: a cost reference, not the "
                      "searched model, so its errors are n/a")
