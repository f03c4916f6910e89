"""TensorRT: ONNX -> serialized engine with an optimization profile, a persistent timing cache, and a
JSON sidecar naming the setup it was built for; loading checks the sidecar first.

TensorRT is optional (``pip install 'rfdeploy[trt]'``) and imported only inside the functions that
need it. Everything about shapes and sidecars is plain data and works without it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError

from rfdeploy.artifacts import cache_dir, write_all
from rfdeploy.errors import RFDeployError

if TYPE_CHECKING:
    from torch import nn

    from rfdeploy.backends import Runner
    from rfdeploy.measure.verify import Verification

INSTALL_HINT = "TensorRT is not installed: pip install 'rfdeploy[trt]' (it needs an NVIDIA GPU with CUDA)"
SIDECAR_SUFFIX = ".json"
PRECISIONS = ("fp32", "fp16")

Shape = tuple[int, ...]


def require_tensorrt() -> None:
    """Raise the install hint unless the real TensorRT package is importable.

    ``tensorrt-stubs`` installs a ``tensorrt`` directory holding only ``.pyi`` files, which imports as
    an empty namespace package: so the check is for the API, not for the import.
    """
    try:
        import tensorrt
    except ImportError:
        raise RFDeployError(INSTALL_HINT) from None
    if not hasattr(tensorrt, "Builder"):
        raise RFDeployError(INSTALL_HINT)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RFDeployError("TensorRT needs an NVIDIA GPU, and PyTorch sees no CUDA device on this machine")


# --- optimization profile ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NamedShape:
    """One ``--min-shape`` / ``--opt-shape`` / ``--max-shape`` value: ``[NAME:]N,C,H,W`` (or ``NxCxHxW``)."""

    name: str | None
    shape: Shape


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape


def parse_named_shape(text: str) -> NamedShape:
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(part) for part in re.split(r"[x,]", dims.strip()))
    except ValueError:
        raise RFDeployError(f"'{text}' is not a shape like input:1x3x224x224 or 1,3,224,224") from None
    if any(n < 1 for n in shape):
        raise RFDeployError(f"'{text}': every dimension of a profile shape must be >= 1")
    return NamedShape(name.strip() or None, shape)


def onnx_inputs(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Each graph input's dims: an int where static, the dim's name (or '?') where dynamic."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
    return inputs


def _pick(given: list[NamedShape], name: str, only: bool, flag: str) -> Shape | None:
    matches = [g.shape for g in given if g.name == name or (g.name is None and only)]
    if len(matches) > 1:
        raise RFDeployError(f"{flag} given twice for input '{name}'")
    return matches[0] if matches else None


def _check_fits(name: str, dims: tuple[int | str, ...], shape: Shape, flag: str) -> None:
    if len(shape) != len(dims):
        raise RFDeployError(f"{flag} for input '{name}' has {len(shape)} dims, the model's input has {len(dims)}")
    for index, (dim, size) in enumerate(zip(dims, shape)):
        if isinstance(dim, int) and dim != size:
            hint = " (export with --dynamic-batch for a range of batch sizes)" if index == 0 else ""
            raise RFDeployError(f"{flag} for input '{name}': dim {index} is fixed at {dim} in the model, "
                                f"not {size}{hint}")


def resolve_profile(inputs: dict[str, tuple[int | str, ...]], mins: list[NamedShape], opts: list[NamedShape],
                    maxs: list[NamedShape]) -> list[InputProfile]:
    """One profile entry per input; ``--opt-shape`` alone fixes it, min and max default to opt.

    Static inputs need no flags. A shape without ``NAME:`` applies when the model has one input.
    """
    only = len(inputs) == 1
    names = set(inputs)
    for given in (*mins, *opts, *maxs):
        if given.name is not None and given.name not in names:
            raise RFDeployError(f"profile shape names input '{given.name}'; the model's inputs are "
                                f"{', '.join(sorted(names))}")
        if given.name is None and not only:
            raise RFDeployError(f"the model has {len(names)} inputs: write profile shapes as NAME:DIMS")
    profiles = []
    for name, dims in inputs.items():
        opt = _pick(opts, name, only, "--opt-shape")
        low, high = _pick(mins, name, only, "--min-shape"), _pick(maxs, name, only, "--max-shape")
        if opt is None:
            if not all(isinstance(d, int) for d in dims):
                raise RFDeployError(f"input '{name}' has dynamic dims {list(dims)}: give --opt-shape "
                                    f"(and --min-shape/--max-shape for a range)")
            opt = tuple(int(d) for d in dims)
        low, high = low or opt, high or opt
        for flag, shape in (("--min-shape", low), ("--opt-shape", opt), ("--max-shape", high)):
            _check_fits(name, dims, shape, flag)
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise RFDeployError(f"input '{name}': need min <= opt <= max in every dim, got "
                                f"{list(low)} / {list(opt)} / {list(high)}")
        profiles.append(InputProfile(name, low, opt, high))
    return profiles


# --- sidecar ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """What an engine is bound to: TensorRT engines only load on the version and GPU they were built for."""

    tensorrt_version: str
    gpu_name: str


@dataclass
class Sidecar:
    tensorrt_version: str
    gpu_name: str
    precision: str
    workspace_mb: int
    inputs: list[dict] = field(default_factory=list)
    onnx_sha256: str = ""

    @property
    def setup(self) -> Setup:
        return Setup(self.tensorrt_version, self.gpu_name)

    def to_json(self) -> dict:
        return asdict(self)


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def make_sidecar(setup: Setup, precision: str, workspace_mb: int, profiles: list[InputProfile],
                 onnx_bytes: bytes) -> Sidecar:
    inputs = [{"name": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in profiles]
    return Sidecar(setup.tensorrt_version, setup.gpu_name, precision, workspace_mb, inputs,
                   hashlib.sha256(onnx_bytes).hexdigest())


def read_sidecar(engine_path: str | Path) -> Sidecar:
    path = sidecar_path(engine_path)
    try:
        data = json.loads(path.read_text())
        return Sidecar(**data)
    except FileNotFoundError:
        raise RFDeployError(f"{engine_path}: no sidecar {path.name} next to the engine; rebuild it with "
                            f"`rfdeploy build`") from None
    except (json.JSONDecodeError, TypeError) as error:
        raise RFDeployError(f"{path}: not an rfdeploy engine sidecar ({error})") from None


def check_setup(sidecar: Sidecar, current: Setup, engine_path: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both setups."""
    if sidecar.setup != current:
        raise RFDeployError(
            f"{engine_path}: built with TensorRT {sidecar.tensorrt_version} for {sidecar.gpu_name}, but this "
            f"machine has TensorRT {current.tensorrt_version} on {current.gpu_name}; rebuild it with `rfdeploy build`")


def current_setup() -> Setup:
    require_tensorrt()
    require_cuda()
    import tensorrt as trt

    return Setup(trt.__version__, torch.cuda.get_device_name())


# --- build --------------------------------------------------------------------------------------------

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
    import tensorrt as trt

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


def with_opt_shapes(request: EngineRequest, model: onnx.ModelProto, shapes: list[Shape]) -> EngineRequest:
    """``request`` with ``shapes`` (the export's input shapes) as the opt shapes, unless it names its own."""
    if request.opts:
        return request
    return replace(request, opts=[NamedShape(name, tuple(shape)) for name, shape in zip(onnx_inputs(model), shapes)])


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
    if request.options.precision not in PRECISIONS:
        raise RFDeployError(f"unknown precision '{request.options.precision}' (known: {', '.join(PRECISIONS)})")
    try:
        model = onnx.load_from_string(onnx_bytes)
    except DecodeError as error:
        raise RFDeployError(f"{source}: not a readable ONNX model ({type(error).__name__})") from None
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


FP16_TOLERANCE = 1e-2  # FP16 keeps 11 significant bits: about 5e-4 per rounding, more through a deep network


def engine_tolerance(precision: str, atol: float, rtol: float) -> tuple[float, float]:
    """The (atol, rtol) an engine is held to: the given ones, widened to ``FP16_TOLERANCE`` for FP16."""
    if precision == "fp16":
        return max(atol, FP16_TOLERANCE), max(rtol, FP16_TOLERANCE)
    return atol, rtol


def verify_engine(built: BuiltEngine, reference: nn.Module | Runner, atol: float = 1e-4, rtol: float = 1e-4,
                  seed: int = 0) -> Verification:
    """The engine against ``reference`` at each input's ``opt`` shape (the one the engine is tuned for)."""
    from rfdeploy.measure.verify import verify

    atol, rtol = engine_tolerance(built.sidecar.precision, atol, rtol)
    shapes = [profile.opt for profile in built.profiles]
    return verify(TrtRunner(built.engine), reference, shapes, f"tensorrt-{built.sidecar.precision}", atol, rtol, seed)


# --- run ----------------------------------------------------------------------------------------------

def load_engine_bytes(engine_path: str | Path) -> bytes:
    """The engine's bytes, after its sidecar has been checked against this machine."""
    check_setup(read_sidecar(engine_path), current_setup(), engine_path)
    return Path(engine_path).read_bytes()


class TrtRunner:
    """Runs a serialized engine on PyTorch's current CUDA stream, inputs and outputs in torch tensors."""

    def __init__(self, serialized: bytes):
        require_tensorrt()
        require_cuda()
        import tensorrt as trt

        self.trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RFDeployError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    @classmethod
    def from_file(cls, engine_path: str | Path) -> TrtRunner:
        """A saved engine, refused with a clear message where its sidecar names another setup."""
        return cls(load_engine_bytes(engine_path))

    def _torch_dtype(self, name: str) -> torch.dtype:
        import tensorrt as trt

        return torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.detach().to("cuda", self._torch_dtype(n)).contiguous() for n, t in zip(self.input_names, inputs)]
        for name, tensor in zip(self.input_names, self.inputs):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.outputs = []
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)
            shape = tuple(dims[i] for i in range(len(dims)))
            self.outputs.append(torch.empty(shape, dtype=self._torch_dtype(name), device="cuda"))
            self.context.set_tensor_address(name, self.outputs[-1].data_ptr())

    def run(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RFDeployError("TensorRT failed to run the engine")

    def fetch(self) -> list[np.ndarray]:
        torch.cuda.current_stream().synchronize()
        return [t.float().cpu().numpy() for t in self.outputs]
