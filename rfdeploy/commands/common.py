"""Arguments and printing shared by the commands: the model (``--model/--ckpt/--structure/--input-shape``),
the TensorRT engine (``--fp16``, ``--workspace``, the profile shapes), and shapes written ``1,3,224,224``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from rfdeploy.backends import backend
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.sources import MODEL_FORMS
from rfdeploy.measure.verify import Verification
from rfdeploy.precision import DEFAULT_MIN_SNR_DB, PRECISIONS
from rfdeploy.quantize.calibration import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess
from rfdeploy.quantize.deploy import MEASURE, PrecisionRequest
from rfdeploy.quantize.int8 import DEFAULT_METHOD, METHODS, OP_SETS
from rfdeploy.quantize.mixed_precision import RANKINGS
from rfdeploy.serve import triton as triton_repository

UNBOUNDED_WIDTH = 10_000


def human_console(stderr: bool = True) -> Console:
    """Human output, on stderr (``--json`` goes to stdout); on stdout where the table is the command's output
    (``rfdeploy models``). Outside a terminal (a log, a pipe) there is no width to fit: lines and tables come
    out whole, never wrapped or cut at 80 columns."""
    if Console(stderr=stderr).is_terminal:
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=UNBOUNDED_WIDTH)


console = human_console()


def number(kind: type = float, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argument type: a finite ``kind`` (int or float) within ``[low, high]``."""
    limits = ([f">= {low}"] if low is not None else []) + ([f"<= {high}"] if high is not None else [])
    what = " ".join(["an integer" if kind is int else "a finite number", " and ".join(limits)]).strip()

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value

    return parse


TOLERANCE = number(float, low=0)
SEED = number(int, low=0, high=2**32 - 1)  # numpy's seed range
COUNT = number(int, low=1)


def parse_dims(text: str, kind: str, example: str, layout: str, least: int = 1) -> tuple[int, ...]:
    """``"1,3,224,224"`` or ``"1x3x224x224"`` -> ``(1, 3, 224, 224)``: at least ``least`` dims, all >= 1."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a {kind} like {example}") from None
    if len(dims) < least or any(n < 1 for n in dims):
        raise argparse.ArgumentTypeError(f"'{text}' is not a {kind} like {example} ({layout}all >= 1)")
    return dims


def parse_shape(text: str) -> tuple[int, ...]:
    """An input shape, ``N,C,H[,W]``."""
    return parse_dims(text, "shape", "1,3,224,224", "N,C,H[,W], ", least=2)


def parse_size(text: str) -> tuple[int, ...]:
    """A spatial input size, ``H[,W]`` (``T`` for 1-d models)."""
    return parse_dims(text, "size", "224 or 800,1333", "")


MODEL_HELP = (f"the plain architecture the search started from: {MODEL_FORMS} returning an nn.Module "
              "(default: recognised from the checkpoint when it holds a zoo architecture)")


CONFIG_HELP = ("an OpenMMLab config (mmdet, mmseg, mmpretrain) instead of --model: cfg.model built in its "
               "default_scope, the search its RFSearchHook entry names (--structure overrides its rfstructure_file), "
               "the test pipeline's input size (default: none)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--config", metavar="CFG.py", help=CONFIG_HELP)
    parser.add_argument("--ckpt", help="searched checkpoint: mmengine .pth, bare state dict, or .safetensors "
                                       "(default: none, and a zoo model's weights are random)")
    parser.add_argument("--structure", help="structure JSON from the search: mmcv RFSearchHook, research, or G2L "
                                            "(default: none; RFConv2d checkpoints need none)")
    parser.add_argument("--input-shape", action="append", type=parse_shape, dest="input_shapes", metavar="N,C,H[,W]",
                        help="input shape; repeat for several inputs (default: the zoo model's)")


def named_shape(text: str) -> trt_backend.NamedShape:
    try:
        return trt_backend.parse_named_shape(text)
    except RFDeployError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


SHAPE_DEFAULTS = {"min": "the opt shape", "max": "the opt shape",
                  "opt": "the export's input shape, or the ONNX model's fixed dims"}


def parse_numbers(text: str) -> tuple[float, ...]:
    """``"123.675,116.28,103.53"`` -> floats, each finite."""
    parse = number(float)
    return tuple(parse(part) for part in text.split(","))


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--min-snr`` and the int8 calibration options, shared by ``export`` and ``bench``."""
    defaults = ", ".join(f"{name} {value:g}" for name, value in DEFAULT_MIN_SNR_DB.items())
    parser.add_argument("--min-snr", type=number(float), metavar="DB",
                        help=f"SNR against the searched fp32 outputs that a lower precision must reach (default: "
                             f"{defaults}); for int8, the tensors that cost most are kept in fp32 until it is met")
    parser.add_argument("--rank-by", choices=RANKINGS, default="output",
                        help="how --min-snr ranks tensors to keep in fp32: output (each one's measured gain in "
                             "output SNR; one run per tensor) or qdq (onnxruntime's qdq_loss_debug comparison, "
                             "two runs, coarser)")
    parser.add_argument("--calib", metavar="PATH|random",
                        help="int8 calibration data: .npy/.npz of input samples (first axis), or a folder of images; "
                             "'random': random inputs, accuracy then unknown (default: none, int8 refused)")
    parser.add_argument("--calib-count", type=COUNT, default=32, metavar="N",
                        help="calibration batches; later ones are held out for verification")
    parser.add_argument("--calib-method", choices=METHODS, default=DEFAULT_METHOD, help="how activation ranges are set")
    parser.add_argument("--int8-ops", choices=(MEASURE, *OP_SETS), default=MEASURE,
                        help="which ops int8 quantizes: all that onnxruntime can, or only convs and matmuls, each "
                             "with or without the layers reading the input kept in fp32; 'measure' times them all "
                             "where the model will run and keeps the fastest beyond the timing spread, else the "
                             "most accurate")
    parser.add_argument("--calib-size", type=parse_size, metavar="H,W",
                        help="image size after resize and centre crop (default: the input shape's)")
    parser.add_argument("--calib-mean", type=parse_numbers, default=IMAGENET_MEAN, metavar="R,G,B",
                        help="per-channel mean of 0-255 pixels (default: mmdet/mmpretrain's ImageNet "
                             f"{','.join(map(str, IMAGENET_MEAN))})")
    parser.add_argument("--calib-std", type=parse_numbers, default=IMAGENET_STD, metavar="R,G,B",
                        help=f"per-channel std (default: {','.join(map(str, IMAGENET_STD))})")
    parser.add_argument("--calib-bgr", action="store_true",
                        help="feed images in BGR order, for models trained without to_rgb (default: RGB)")


def precision_request(args: argparse.Namespace, precision: str, backends: tuple[str, ...] = ()) -> PrecisionRequest:
    """The precision options, checked before any work."""
    size = args.calib_size
    if size is not None and len(size) != 2:
        raise RFDeployError(f"--calib-size {','.join(map(str, size))}: give H,W")
    for flag, values in (("--calib-mean", args.calib_mean), ("--calib-std", args.calib_std)):
        if len(values) != 3:
            raise RFDeployError(f"{flag}: give three values, one per colour channel")
    if any(value <= 0 for value in args.calib_std):
        raise RFDeployError("--calib-std: every value must be above 0")
    if args.calib is not None and args.calib != "random" and not Path(args.calib).exists():
        raise RFDeployError(f"--calib {args.calib}: no such file or folder")
    preprocess = ImagePreprocess(size, args.calib_mean, args.calib_std, args.calib_bgr)
    return PrecisionRequest(precision, args.calib, args.calib_count, args.calib_method, preprocess, args.min_snr,
                            backends, args.int8_ops, args.rank_by)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options shared by ``rfdeploy build`` and ``rfdeploy export --trt``."""
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels; the same as --precision fp16 "
                                                             "(default: FP32 only)")
    parser.add_argument("--workspace", type=COUNT, default=4096, metavar="MB",
                        help="TensorRT workspace memory limit in MiB")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="number format: int8 needs --calib (export) or a QDQ model (build); bf16 runs on "
                             "OpenVINO, fp16 on TensorRT")
    for bound in ("min", "opt", "max"):
        parser.add_argument(f"--{bound}-shape", action="append", type=named_shape, default=[], metavar="[NAME:]DIMS",
                            help=f"{bound} shape of a dynamic input for the optimization profile, e.g. "
                                 f"input:1x3x224x224; repeat per input (default: {SHAPE_DEFAULTS[bound]})")
    parser.add_argument("--timing-cache", type=Path, metavar="PATH",
                        help="TensorRT timing cache, read and updated (default: one per TensorRT version and GPU "
                             "under ~/.cache/rfdeploy/tensorrt)")


def requested_precision(args: argparse.Namespace) -> str:
    """``--precision``, with ``--fp16`` read as ``--precision fp16``: the one place the two flags are reconciled."""
    precision = getattr(args, "precision", "fp32")
    if args.fp16 and precision not in ("fp32", "fp16"):
        raise RFDeployError(f"--fp16 and --precision {precision}: give one")
    return "fp16" if args.fp16 else precision


def engine_request(args: argparse.Namespace) -> trt_backend.EngineRequest:
    if args.workspace < 1:
        raise RFDeployError(f"--workspace {args.workspace}: must be at least 1 MiB")
    precision = requested_precision(args)
    backend("tensorrt").require_precision(precision)
    options = trt_backend.BuildOptions(precision, args.workspace, args.timing_cache)
    return trt_backend.EngineRequest(options, args.min_shape, args.opt_shape, args.max_shape)


def print_engine(built: trt_backend.BuiltEngine, check: Verification, against: str) -> None:
    sidecar = built.sidecar
    console.print(f"TensorRT {sidecar.tensorrt_version} engine on {sidecar.gpu_name} ({sidecar.precision}) vs "
                  f"{against} at {check.input_shapes}: max_abs_err {check.max_abs_err:.3g}, "
                  f"max_rel_err {check.max_rel_err:.3g} (atol {check.atol:g}, rtol {check.rtol:g}): "
                  f"{verdict(check.passed)}")


def verdict(passed: bool) -> str:
    """The end of every verification line."""
    return "[green]PASSED[/green]" if passed else "[red]FAILED[/red]"


@contextmanager
def status(message: str):
    """A spinner for a long step; yields a callback that updates its text."""
    with console.status(message) as spinner:
        yield lambda text: spinner.update(f"{text}...")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RFDeployError(message)


def warn(messages: list[str]) -> None:
    """Each warning on one line of stderr, plain text (no markup, no wrapping), whatever else is printed."""
    for message in messages:
        print(f"rfdeploy: warning: {message}", file=sys.stderr)


def print_tuning(tuning: dict | None) -> None:
    if not tuning:
        return
    chosen = [layer["chosen"] for layer in tuning["layers"]]
    counts = ", ".join(f"{chosen.count(name)} {name}" for name in sorted(set(chosen), key=chosen.index))
    rules = [layer["decided_by"] for layer in tuning["layers"]]
    decided = ", ".join(f"{rules.count(rule)} by {rule}" for rule in sorted(set(rules), key=rules.index))
    console.print(f"lowering timed per layer on {tuning['backend']} in {tuning['precision']} ({tuning['device_name']}, "
                  f"{tuning['threads']} threads): {counts or 'no layer with two candidates'}"
                  f"{f' (decided {decided})' if decided else ''}; timings in the report")


TRITON_EXPORT_ONLY = ("triton_name", "max_batch", "instances", "kind")


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """How Triton batches and places the model; shared with ``rfdeploy export --triton``."""
    parser.add_argument("--max-batch", type=number(int, low=0), metavar="N",
                        help=f"Triton max_batch_size for a dynamic-batch model "
                             f"(default: {triton_repository.DEFAULT_MAX_BATCH}, "
                             f"or an engine's profile maximum; 0: no batching)")
    parser.add_argument("--instances", type=COUNT, metavar="K", help="model instances Triton runs (default: 1)")
    parser.add_argument("--kind", choices=triton_repository.KINDS,
                        help="where the instances run (default: gpu for a TensorRT engine, else cpu)")


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--triton", metavar="REPO", help="also write the verified model into this Triton model "
                                                         "repository (a new version if the model is there already; "
                                                         "default: none)")
    parser.add_argument("--triton-name", metavar="NAME",
                        help="model name in the repository (default: the model's name)")
    add_serving_arguments(parser)


def triton_request_of(args: argparse.Namespace, repo: str, name: str | None) -> triton_repository.TritonRequest:
    return triton_repository.TritonRequest(Path(repo), name, args.max_batch,
                                1 if args.instances is None else args.instances, args.kind)


def triton_request(args: argparse.Namespace) -> triton_repository.TritonRequest | None:
    """``rfdeploy export``'s ``--triton*`` options, checked before the export runs."""
    if args.triton is None:
        given = [name for name in TRITON_EXPORT_ONLY if getattr(args, name) is not None]
        if given:
            raise RFDeployError(f"--{given[0].replace('_', '-')} needs --triton REPO")
        return None
    return triton_request_of(args, args.triton, args.triton_name)  # no name: the exported model's
