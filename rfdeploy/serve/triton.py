"""A Triton Inference Server model repository from a verified model: ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/V/model.onnx`` (or ``model.plan`` with its sidecar), the model file byte for byte the verified one.

The config is Triton's ``ModelConfig`` message, filled from the ONNX graph's own signature and printed by
protobuf's ``text_format`` (the schema is tritonclient's ``model_config_pb2``): names are escaped by the
printer, never pasted into text. A model folder that already holds the same model (same platform,
batching, inputs and outputs) gets its next version; one that holds another model is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import onnx
from google.protobuf import text_format

from rfdeploy.artifacts import check_output_dir, write_all
from rfdeploy.backends import backend
from rfdeploy.backends.onnx_export import graph_inputs
from rfdeploy.backends.tensorrt import BuiltEngine, Sidecar
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.onnx_graph import onnx_from_bytes

if TYPE_CHECKING:
    from rfdeploy.tuning.tune import TuningResult

CONFIG = "config.pbtxt"
KINDS = ("cpu", "gpu")
DEFAULT_MAX_BATCH = 8
# Triton lists a repository's folders as model names and skips hidden ones; rfdeploy also keeps names
# portable (no spaces, separators or shell characters), which is what the HTTP/GRPC URLs want too.
VALID_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_BYTES = 255  # a folder name
INT32_MAX = 2**31 - 1  # max_batch_size and an instance group's count are int32 in Triton's schema
VERSION = re.compile(r"[0-9]+")  # Triton's version folders: ASCII digits (str.isdigit also takes '²')
SCHEMA_HINT = "writing a Triton config needs tritonclient's schema: pip install 'rfdeploy[triton]'"

TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: its name, Triton data type and dims (-1 for a symbolic dim)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    symbolic_batch: bool


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def dynamic_batch(self) -> bool:
        return all(tensor.symbolic_batch for tensor in self.inputs + self.outputs)


def check_int8_servable(activations: str, what: str) -> None:
    """An int8 ONNX model is served on Triton's onnxruntime backend: one made in another backend's int8 format
    (``--target openvino``) would run there without onnxruntime's fast int8 kernels, and is refused."""
    if activations != backend("onnxruntime").int8_activations:
        raise RFDeployError(f"{what} is made in {activations} activations for another backend, which Triton's "
                            f"onnxruntime backend would run without onnxruntime's fast int8 kernels: export it with "
                            f"--target onnxruntime")


def onnx_signature(model: onnx.ModelProto, source: str) -> Signature:
    """The graph's real inputs (initializers excluded) and outputs, read from the ONNX protobuf."""
    inputs = tuple(_tensor(value, source) for value in graph_inputs(model))
    return Signature(inputs, tuple(_tensor(value, source) for value in model.graph.output))


def _tensor(value: onnx.ValueInfoProto, source: str) -> Tensor:
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "not a tensor"
        raise RFDeployError(f"{source}: '{value.name}' has type {kind}, which Triton cannot serve")
    if not value.name or any(ord(c) < 32 or ord(c) == 127 for c in value.name):
        raise RFDeployError(f"{source}: tensor name {value.name!r} is empty or holds control characters, which "
                            f"Triton cannot serve")
    dims = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim)
    first = tensor_type.shape.dim[0] if dims else None
    return Tensor(value.name, TRITON_TYPES[tensor_type.elem_type], dims,
                  first is not None and not first.HasField("dim_value"))


@dataclass
class ServedModel:
    """What goes into a version folder, and how Triton runs it."""

    platform: str  # onnxruntime_onnx | tensorrt_plan
    files: dict[str, bytes]
    signature: Signature
    batch_limit: int | None = None  # the most a TensorRT profile takes; ONNX models take any batch
    threads: int | None = None  # onnxruntime intra-op threads that timing found best

    @property
    def default_kind(self) -> str:
        return "gpu" if self.platform == "tensorrt_plan" else "cpu"


def served_onnx(onnx_bytes: bytes, source: str, threads: int | None = None) -> ServedModel:
    model = onnx_from_bytes(onnx_bytes, source)
    return ServedModel("onnxruntime_onnx", {"model.onnx": onnx_bytes}, onnx_signature(model, source),
                       threads=threads)


def served_engine(engine: bytes, sidecar: Sidecar, sidecar_bytes: bytes, onnx_bytes: bytes,
                  source: str) -> ServedModel:
    """A TensorRT engine with its signature from the ONNX model it was built from (the sidecar's hash)."""
    if hashlib.sha256(onnx_bytes).hexdigest() != sidecar.onnx_sha256:
        raise RFDeployError(f"{source}: the engine was not built from this ONNX model (its sidecar records "
                            f"another sha256); give the ONNX model it was built from")
    signature = onnx_signature(onnx_from_bytes(onnx_bytes, source), source)
    batches = [(shape["min"][0], shape["max"][0]) for shape in sidecar.inputs if shape["min"]]
    batchable = signature.dynamic_batch and bool(batches) and all(low == 1 for low, _ in batches)
    limit = min(high for _, high in batches) if batchable else None
    files = {"model.plan": engine, "model.plan.json": sidecar_bytes}
    return ServedModel("tensorrt_plan", files, signature, batch_limit=limit)


def served_export(onnx_model: onnx.ModelProto, engine: BuiltEngine | None, tuning: TuningResult | None) -> ServedModel:
    """What ``rfdeploy export --triton`` serves: the TensorRT engine where one was built, else the ONNX model."""
    onnx_bytes = onnx_model.SerializeToString()
    if engine is None:
        timed_here = tuning is not None and tuning.backend == "onnxruntime" and tuning.device == "cpu"
        return served_onnx(onnx_bytes, "the exported model", tuning.threads if tuning and timed_here else None)
    files = engine.files("model.plan")
    return served_engine(files["model.plan"], engine.sidecar, files["model.plan.json"], onnx_bytes,
                         "the exported model")


@dataclass
class TritonRequest:
    """The ``--triton*`` options: where, under which name, and how Triton should batch and place the model."""

    repo: Path
    name: str | None  # None: named after the exported model (default_name), once it is known
    max_batch: int | None = None  # None: DEFAULT_MAX_BATCH (or the engine's limit) where batching is possible
    instances: int = 1
    kind: str | None = None  # None: gpu for a TensorRT engine, else cpu

    def __post_init__(self):
        self.repo = Path(self.repo)
        if self.name is not None:
            check_name(self.name)
        if not 1 <= self.instances <= INT32_MAX:
            raise RFDeployError(f"--instances {self.instances}: must be 1 to {INT32_MAX}")
        if self.max_batch is not None and not 0 <= self.max_batch <= INT32_MAX:
            raise RFDeployError(f"--max-batch {self.max_batch}: must be 0 (no batching) to {INT32_MAX}")
        if self.kind is not None and self.kind not in KINDS:
            raise RFDeployError(f"--kind {self.kind}: must be one of {', '.join(KINDS)}")


def check_name(name: str) -> None:
    if not VALID_NAME.fullmatch(name) or name in (".", ".."):
        raise RFDeployError(f"Triton model name '{name}': use letters, digits, '_', '.' and '-', "
                            f"not starting with '.' or '-'")
    if len(name) > NAME_BYTES:
        raise RFDeployError(f"Triton model name '{name}': {len(name)} characters, at most {NAME_BYTES}")


def default_name(text: str) -> str:
    """A valid model name from a model's name: a zoo name as it is, ``mypkg.nets:build`` ->
    ``mypkg.nets_build``, ``path/to/mynet.py:build`` -> ``mynet_build`` (the file, not its folder or suffix)."""
    source, colon, function = text.rpartition(":") if ":" in text else (text, "", "")
    if source.endswith(".py"):
        source = Path(source).stem
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{source}_{function}" if colon else source).lstrip(".-")
    return name[:NAME_BYTES] or "model"


@dataclass
class RepositoryPlan:
    """The version folder and config a request writes, decided (and checked) before anything is written."""

    model_dir: Path
    version: int
    config: str
    files: dict[str, bytes] = field(repr=False)

    def to_json(self) -> dict:
        return {"repository": str(self.model_dir.parent), "model": self.model_dir.name,
                "version": self.version, "config_file": str(self.model_dir / CONFIG), "config": self.config}


def plan_repository(request: TritonRequest, served: ServedModel) -> RepositoryPlan:
    if request.name is None:
        raise ValueError("plan_repository needs the request's model name")
    model_dir = request.repo / request.name
    config = model_config(request, served)
    check_output_dir(request.repo)
    existing = _existing_config(model_dir)
    if existing is not None:
        _check_same_model(existing, config, model_dir)
    return RepositoryPlan(model_dir, _next_version(model_dir), config, served.files)


@functools.cache
def schema() -> ModuleType:
    """Triton's ``ModelConfig`` schema as tritonclient ships it, loaded from its file: the package around it
    would import grpc, which writing a config does not need."""
    package = importlib.util.find_spec("tritonclient")
    folders = list(package.submodule_search_locations or []) if package is not None else []
    path = Path(folders[0]) / "grpc" / "model_config_pb2.py" if folders else None
    if path is None or not path.is_file():
        raise RFDeployError(SCHEMA_HINT)
    spec = importlib.util.spec_from_file_location("rfdeploy_triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(request: TritonRequest, served: ServedModel) -> str:
    max_batch = _max_batch(request, served)
    kind = request.kind or served.default_kind
    if served.platform == "tensorrt_plan" and kind != "gpu":
        raise RFDeployError("--kind cpu: a TensorRT engine runs on a GPU only; serve the ONNX model on CPU")
    triton = schema()
    config = triton.ModelConfig(name=request.name, platform=served.platform, max_batch_size=max_batch)
    for tensors, field_of in ((served.signature.inputs, config.input), (served.signature.outputs, config.output)):
        for tensor in tensors:
            field_of.add(name=tensor.name, data_type=triton.DataType.Value(tensor.data_type),
                         dims=tensor.dims[1:] if max_batch > 0 else tensor.dims)
    if max_batch > 0:
        config.dynamic_batching.SetInParent()
    config.instance_group.add(count=request.instances,
                              kind=triton.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    if served.platform == "onnxruntime_onnx":
        # inter-op 1 as rfdeploy times onnxruntime; intra-op as tuning found best, else onnxruntime's default
        settings = {"inter_op_thread_count": 1, **({"intra_op_thread_count": served.threads} if served.threads else {})}
        for key, value in settings.items():
            config.parameters[key].string_value = str(value)
    return text_format.MessageToString(config)


def _max_batch(request: TritonRequest, served: ServedModel) -> int:
    if not served.signature.dynamic_batch or (served.platform == "tensorrt_plan" and served.batch_limit is None):
        if request.max_batch:
            raise RFDeployError(f"--max-batch {request.max_batch}: the model has a static batch dimension "
                                f"(export with --dynamic-batch, and a TensorRT profile from batch 1)")
        return 0
    limit = served.batch_limit
    wanted = DEFAULT_MAX_BATCH if request.max_batch is None else request.max_batch
    if limit is not None and wanted > limit:
        if request.max_batch is not None:
            raise RFDeployError(f"--max-batch {wanted}: the TensorRT engine's profile takes batches up to {limit}")
        wanted = limit
    return wanted


def _existing_config(model_dir: Path) -> str | None:
    if not model_dir.exists():
        return None
    config = model_dir / CONFIG
    if not model_dir.is_dir() or not config.is_file():
        if model_dir.is_dir() and not any(model_dir.iterdir()):
            return None
        raise RFDeployError(f"{model_dir}: exists but is not a Triton model folder (no {CONFIG}); "
                            f"choose another model name")
    try:
        return config.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise RFDeployError(f"{config}: cannot be read ({error})") from None


IDENTITY = ("platform", "max_batch_size", "input", "output")  # what says which model a config serves


def _check_same_model(existing: str, config: str, model_dir: Path) -> None:
    """The platform, batching, inputs and outputs must be those already served under this name."""
    triton = schema()
    try:
        theirs = text_format.Parse(existing, triton.ModelConfig())
    except text_format.ParseError as error:
        raise RFDeployError(f"{model_dir / CONFIG}: not a Triton model config ({first_line(error)}); "
                            f"choose another model name") from None
    ours = text_format.Parse(config, triton.ModelConfig())
    differing = next((key for key in IDENTITY if getattr(ours, key) != getattr(theirs, key)), None)
    if differing is not None:
        mine = triton.ModelConfig(**{differing: getattr(ours, differing)})
        raise RFDeployError(f"{model_dir / CONFIG}: holds a different model under this name (this one has "
                            f"'{text_format.MessageToString(mine, as_one_line=True)}'); choose another model name")


def _next_version(model_dir: Path) -> int:
    versions = [int(entry.name) for entry in model_dir.iterdir() if VERSION.fullmatch(entry.name)] \
        if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def write_repository(plan: RepositoryPlan) -> list[Path]:
    """The version folder staged under a hidden name and renamed into place, then the config: nothing
    half-written, and a failure removes what this call created."""
    created = _topmost_missing(plan.model_dir)  # the repository itself, where it does not exist yet
    version_dir = plan.model_dir / str(plan.version)
    try:
        plan.model_dir.mkdir(parents=True, exist_ok=True)
        _write_version(version_dir, plan.files)
        try:
            config = write_all(plan.model_dir, {CONFIG: plan.config.encode()})
        except BaseException:
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
    except (OSError, RFDeployError) as error:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(error, RFDeployError):
            raise
        raise RFDeployError(f"Triton repository {plan.model_dir.parent}: cannot write "
                            f"({error.strerror or error})") from None
    return [version_dir / name for name in plan.files] + config


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist (and making ``path`` would create), or None."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _write_version(version_dir: Path, files: dict[str, bytes]) -> None:
    staging = version_dir.with_name(f".{version_dir.name}.{secrets.token_hex(4)}.tmp")
    staging.mkdir()  # unlike mkdtemp's 0700, as the umask says: Triton may run as another user
    try:
        write_all(staging, files)
        staging.rename(version_dir)  # refused (not empty) if another writer took this version meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
