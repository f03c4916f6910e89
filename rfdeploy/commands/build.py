"""``rfdeploy build``: an ONNX model -> a serialized TensorRT engine and its JSON sidecar.

The engine gets one optimization profile (``--min-shape`` / ``--opt-shape`` / ``--max-shape`` per
dynamic input) and reuses a persistent timing cache. The sidecar ``ENGINE.json`` records the TensorRT
version, GPU, precision and shapes; an engine whose sidecar names another setup is refused on load.
Before anything is written, the engine runs against its ONNX model in onnxruntime-CPU at the
profile's opt shapes; a mismatch writes nothing. Needs TensorRT (``pip install 'rfdeploy[trt]'``) and
an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rfdeploy.artifacts import check_output_file, write_all
from rfdeploy.backends import tensorrt as trt_backend
from rfdeploy.backends.onnxruntime_backend import OrtRunner
from rfdeploy.commands.common import (
    SEED,
    TOLERANCE,
    add_engine_arguments,
    console,
    engine_request,
    print_engine,
)
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.onnx_graph import read_onnx
from rfdeploy.measure.verify_engine import verify_engine


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build a TensorRT engine (with sidecar) from an ONNX model",
                                   description=__doc__)
    parser.add_argument("onnx", help="the ONNX model, e.g. rfdeploy-out/model.onnx")
    parser.add_argument("--out", help="engine path (default: the ONNX path with .engine)")
    parser.add_argument("--atol", type=TOLERANCE, default=1e-4, help="absolute tolerance against onnxruntime-CPU")
    parser.add_argument("--rtol", type=TOLERANCE, default=1e-4,
                        help="tolerance relative to each output's largest value (FP16: at least 1e-2)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random verification inputs")
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    onnx_path = Path(args.onnx)
    if not onnx_path.exists():
        raise RFDeployError(f"{onnx_path}: no such ONNX file")
    model = read_onnx(onnx_path)  # checked as every ONNX input is, before TensorRT's parser sees it
    trt_backend.require_tensorrt()
    request = engine_request(args)
    engine_path = Path(args.out) if args.out else onnx_path.with_suffix(".engine")
    check_output_file(engine_path)
    onnx_bytes = onnx_path.read_bytes()
    with console.status(f"building TensorRT engine from {onnx_path} (minutes for a large model)..."):
        built = trt_backend.build(onnx_bytes, request, str(onnx_path))
        with OrtRunner(model, threads=0) as reference:
            check = verify_engine(built, reference, args.atol, args.rtol, args.seed)
    print_engine(built, check, f"{onnx_path.name} in onnxruntime-CPU")
    if not check.passed:
        console.print(f"nothing written: the engine does not match {onnx_path} in onnxruntime")
        return 1
    for path in write_all(engine_path.parent, built.files(engine_path.name)):
        console.print(f"wrote {path}")
    return 0
