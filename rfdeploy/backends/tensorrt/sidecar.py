"""The JSON sidecar next to an engine: the TensorRT version and GPU it was built for (an engine loads on
no other), its precision and profile; an engine whose sidecar names another setup is refused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rfdeploy.backends.tensorrt.lib import require_cuda, require_tensorrt, trt
from rfdeploy.backends.tensorrt.profile import InputProfile
from rfdeploy.errors import RFDeployError

SIDECAR_SUFFIX = ".json"


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
    return Setup(trt.__version__, torch.cuda.get_device_name())
