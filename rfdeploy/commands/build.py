"""``rfdeploy build``: an ONNX model -> a serialized TensorRT engine and its JSON sidecar.

The engine gets one optimization profile (``--min-shape`` / ``--opt-shape`` / ``--max-shape`` per
dynamic input) and reuses a persistent timing cache. The sidecar ``ENGINE.json`` records the TensorRT
version, GPU, precision and shapes; an engine whose sidecar names another setup is refused on load.
Needs TensorRT (``pip install 'rfdeploy[trt]'``) and an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rfdeploy.backends import tensorrt_backend as trt_backend
from rfdeploy.commands.common import console
from rfdeploy.errors import RFDeployError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build a TensorRT engine (with sidecar) from an ONNX model",
                                   description=__doc__)
    parser.add_argument("onnx", help="the ONNX model, e.g. rfdeploy-out/model.onnx")
    parser.add_argument("--out", help="engine path (default: the ONNX path with .engine)")
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def named_shape(text: str) -> trt_backend.NamedShape:
    try:
        return trt_backend.parse_named_shape(text)
    except RFDeployError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options shared by ``rfdeploy build`` and ``rfdeploy export --trt``."""
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels (default: FP32 only)")
    parser.add_argument("--workspace", type=int, default=4096, metavar="MB",
                        help="TensorRT workspace memory limit in MiB (default: 4096)")
    for bound in ("min", "opt", "max"):
        parser.add_argument(f"--{bound}-shape", action="append", type=named_shape, default=[], metavar="[NAME:]DIMS",
                            help=f"{bound} shape of a dynamic input for the optimization profile, e.g. "
                                 f"input:1x3x224x224; repeat per input")
    parser.add_argument("--timing-cache", type=Path, metavar="PATH",
                        help="TensorRT timing cache, read and updated (default: one per TensorRT version and GPU "
                             "under ~/.cache/rfdeploy/tensorrt)")


def build_options(args: argparse.Namespace) -> trt_backend.BuildOptions:
    if args.workspace < 1:
        raise RFDeployError(f"--workspace {args.workspace}: must be at least 1 MiB")
    return trt_backend.BuildOptions("fp16" if args.fp16 else "fp32", args.workspace, args.timing_cache)


def build(onnx_path: Path, engine_path: Path, args: argparse.Namespace) -> trt_backend.Sidecar:
    """Build with the engine options in ``args``, showing a spinner; print what was written."""
    options = build_options(args)
    with console.status(f"building TensorRT engine from {onnx_path} (minutes for a large model)..."):
        sidecar = trt_backend.build_engine(onnx_path, engine_path, args.min_shape, args.opt_shape, args.max_shape,
                                           options)
    console.print(f"wrote {engine_path} and {trt_backend.sidecar_path(engine_path)} (TensorRT "
                  f"{sidecar.tensorrt_version}, {sidecar.gpu_name}, {sidecar.precision})")
    return sidecar


def run(args: argparse.Namespace) -> int:
    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise RFDeployError(f"{onnx_path}: no such ONNX file")
    trt_backend.require_tensorrt()
    build(onnx_path, Path(args.out) if args.out else onnx_path.with_suffix(".engine"), args)
    return 0
