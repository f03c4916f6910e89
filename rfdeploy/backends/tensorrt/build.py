"""ONNX -> a serialized engine with one optimization profile and a persistent timing cache."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from rfdeploy.artifacts import cache_dir, write_all
from rfdeploy.backends.registry import backend
from rfdeploy.backends.tensorrt.lib import require_cuda, require_tensorrt, trt
from rfdeploy.backends.tensorrt.profile import InputProfile, NamedShape, Shape, onnx_inputs, resolve_profile
from rfdeploy.backends.tensorrt.sidecar import Setup, Sidecar, current_setup, make_sidecar, sidecar_path
from rfdeploy.errors import RFDeployError

QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    workspace_mb: int = 4096
    timing_cache: Path | None = None


def default_timing_cache(setup: Setup) -> Path:
    """Per TensorRT version and GPU, under the user's cache directory: it persists across builds."""
    root = cache_dir("tensorrt")
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", setup.gpu_name).strip("-")
    return root / f"timing-trt{setup.tensorrt_version}-{gpu}.cache"


def build_serialized(onnx_bytes: bytes, profiles: list[InputProfile], options: BuildOptions,
                     source: str = "<onnx>") -> bytes:
    """A serialized engine; the timing cache is read before and written back after the build."""
    require_tensorrt()
    require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        reasons = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RFDeployError(f"{source}: TensorRT's ONNX parser failed: {reasons or 'no reason given'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # TensorRT allows TF32 (10 mantissa bits) by default on Ampere and later: fp32 means fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.precision == "int8":
        # explicit quantization: the QDQ nodes of the model say what runs in int8 and at which scales
        # (TensorRT 10.1 deprecated the implicit calibrators); everything else stays fp32
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for entry in profiles:
        profile.set_shape(entry.name, trt.Dims(list(entry.min)), trt.Dims(list(entry.opt)), trt.Dims(list(entry.max)))
    config.add_optimization_profile(profile)
    cache_path = options.timing_cache
    cached = cache_path.read_bytes() if cache_path is not None and cache_path.exists() else b""
    config.set_timing_cache(config.create_timing_cache(cached), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RFDeployError(f"{source}: TensorRT could not build an engine (see its messages above)")
    if cache_path is not None:
        write_all(cache_path.parent, {cache_path.name: bytes(config.get_timing_cache().serialize())})
    return bytes(serialized)


@dataclass(frozen=True)
class EngineRequest:
    """An engine to build: its options and the optimization profile's shapes (``--min/opt/max-shape``)."""

    options: BuildOptions = BuildOptions()
    mins: list[NamedShape] = field(default_factory=list)
    opts: list[NamedShape] = field(default_factory=list)
    maxs: list[NamedShape] = field(default_factory=list)


def with_export_shapes(request: EngineRequest, model: onnx.ModelProto, shapes: list[Shape],
                       other: list[Shape] | None = None) -> EngineRequest:
    """``request`` with the export's input ``shapes`` as the opt shapes, and for a dynamic export (verified
    at ``other`` shapes too) min and max spanning both, wherever the request names none of its own."""
    names = list(onnx_inputs(model))

    def named(chosen: list[Shape]) -> list[NamedShape]:
        return [NamedShape(name, tuple(shape)) for name, shape in zip(names, chosen)]

    span = list(zip(shapes, other)) if other else []
    return replace(request, opts=request.opts or named(shapes),
                   mins=request.mins or named([tuple(map(min, a, b)) for a, b in span]),
                   maxs=request.maxs or named([tuple(map(max, a, b)) for a, b in span]))


@dataclass
class BuiltEngine:
    engine: bytes
    sidecar: Sidecar
    profiles: list[InputProfile]

    def files(self, engine_name: str) -> dict[str, bytes]:
        """The engine and its sidecar, by file name, for ``write_all``."""
        sidecar = json.dumps(self.sidecar.to_json(), indent=2).encode()
        return {engine_name: self.engine, sidecar_path(engine_name).name: sidecar}


def build(onnx_bytes: bytes, request: EngineRequest, source: str = "<onnx>") -> BuiltEngine:
    """A serialized engine and its sidecar, in memory."""
    backend("tensorrt").require_precision(request.options.precision)
    try:
        model = onnx.load_from_string(onnx_bytes)
    except DecodeError as error:
        raise RFDeployError(f"{source}: not a readable ONNX model ({type(error).__name__})") from None
    if request.options.precision == "int8" and not any(node.op_type in QUANTIZE_OPS for node in model.graph.node):
        raise RFDeployError(f"{source}: an int8 engine is built from a quantized (QDQ) model, and this one has no "
                            f"QuantizeLinear: give the model.int8.onnx of rfdeploy export --precision int8")
    profiles = resolve_profile(onnx_inputs(model), request.mins, request.opts, request.maxs)
    setup = current_setup()
    options = request.options
    if options.timing_cache is None:
        options = BuildOptions(options.precision, options.workspace_mb, default_timing_cache(setup))
    engine = build_serialized(onnx_bytes, profiles, options, source)
    return BuiltEngine(engine, make_sidecar(setup, options.precision, options.workspace_mb, profiles, onnx_bytes),
                       profiles)


def build_engine(onnx_path: str | Path, engine_path: str | Path, request: EngineRequest) -> BuiltEngine:
    """``onnx_path`` -> ``engine_path`` and its sidecar, both written whole or not at all."""
    try:
        onnx_bytes = Path(onnx_path).read_bytes()
    except OSError as error:
        raise RFDeployError(f"{onnx_path}: not a readable ONNX model ({type(error).__name__})") from None
    built = build(onnx_bytes, request, str(onnx_path))
    engine_path = Path(engine_path)
    write_all(engine_path.parent, built.files(engine_path.name))
    return built
