"""Loading untrusted checkpoints: tensors only, no pickled code ever runs.

``.safetensors`` files go through safetensors. Pickle-based ``.pth`` files load with
``torch.load(weights_only=True)``; a real mmengine checkpoint also carries training metadata objects
(``message_hub`` history buffers, numpy scalars) that torch's weights-only unpickler rejects, so those load
through ``_InertUnpickler``: torch's own allow-list of tensor-rebuilding globals, and every other global
replaced by an inert placeholder that stores its arguments and executes nothing.
"""

from __future__ import annotations

import json
import pickle
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import _weights_only_unpickler

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.input_file import looks_like, regular_file

StateDict = dict[str, torch.Tensor]


class Opaque:
    """Stands in for an object of a class the checkpoint names but rfdeploy does not trust."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _weights_only_unpickler._get_allowed_globals()
        if f"{module}.{name}" in allowed:
            return allowed[f"{module}.{name}"]
        return type(name, (Opaque,), {"__module__": f"rfdeploy.opaque.{module}"})


_inert_pickle = types.ModuleType("rfdeploy_inert_pickle")
_inert_pickle.Unpickler = _InertUnpickler  # type: ignore[attr-defined]
_inert_pickle.load = lambda file, **kwargs: _InertUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a global outside torch's allow-list: load it inert instead
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert_pickle)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise ValueError(f"the header names tensor '{repeated}' twice")
    return dict(pairs)


def _check_safetensors_header(path: Path) -> None:
    """What safetensors' own parser lets pass: a header naming one tensor twice (the last one would win)."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        size = int.from_bytes(prefix, "little")
        if size > path.stat().st_size - 8:
            raise ValueError(f"header of {size} bytes runs past the end of the file")
        json.loads(file.read(size), object_pairs_hook=_unique_keys)


def _read(path: Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        _check_safetensors_header(path)
        return load_file(str(path))
    _check_zip_crcs(path)
    return _torch_load(path)


def _check_zip_crcs(path: Path) -> None:
    """torch reads a zip checkpoint's records without checking their CRCs: a flipped bit would load."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"record '{damaged}' fails its CRC check")


def state_dict_of(payload, path: Path) -> StateDict:
    """The model weights inside an mmengine checkpoint (``state_dict``), a ``model`` wrapper, or a bare dict."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload:
        raise RFDeployError(f"{path}: holds no state dict (expected a mapping of names to tensors)")
    tensors = {key_name(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not any(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise RFDeployError(f"{path}: holds no tensors under string names")
    for key, tensor in tensors.items():
        if tensor.is_meta:
            raise RFDeployError(f"{path}: '{key}' is a tensor on the meta device: a shape without values")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex():
            kind = "quantized" if tensor.is_quantized else "complex" if tensor.is_complex() else str(tensor.layout)
            raise RFDeployError(f"{path}: '{key}' is a {kind} tensor; rfdeploy takes dense real weights")
    return tensors


def key_name(key) -> str:
    """A state dict key as a name: a non-string key (``7``) becomes one no layer can have (``<int key 7>``),
    so that it is counted with the other tensors that fit no layer, not dropped unseen."""
    return key if isinstance(key, str) else f"<{type(key).__name__} key {key!r}>"


@dataclass(frozen=True)
class TrainingProgress:
    """How far training had got when the checkpoint was saved: completed epochs and iterations."""

    epoch: int | None = None
    iteration: int | None = None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(container, key: str) -> dict:
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, dict) else {}


def progress_of(payload) -> TrainingProgress:
    """mmengine's ``meta`` (``epoch``: completed epochs, ``iter``), else its message hub's runtime info,
    whose ``epoch`` is the 0-based epoch that was running when the checkpoint was saved."""
    meta, hub = _mapping(payload, "meta"), _mapping(payload, "message_hub")
    runtime = _mapping(hub, "runtime_info")
    epoch, iteration = _count(meta.get("epoch")), _count(meta.get("iter"))
    running = _count(runtime.get("epoch"))
    if epoch is None and running is not None:
        epoch = running + 1
    return TrainingProgress(epoch, iteration if iteration is not None else _count(runtime.get("iter")))


def load_checkpoint(path: str | Path) -> StateDict:
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[StateDict, TrainingProgress]:
    """The checkpoint's weights and how far training had got when it was saved."""
    path = regular_file(path, "checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about raw pickles; the error line must stay the only line
            warnings.simplefilter("ignore")
            payload = _read(path)
    except Exception as error:  # noqa: BLE001  # corrupt bytes reach torch, zipfile and pickle in many ways
        if looks_like(path) == "structure file":
            raise RFDeployError(f"{path}: not a checkpoint, it looks like a structure file (JSON); give it to "
                                f"--structure and the .pth to --ckpt") from None
        detail = first_line(error).split(". ")[0]
        raise RFDeployError(f"{path}: not a readable checkpoint, truncated or corrupt? ({detail[:160]})") from None
    return state_dict_of(payload, path), progress_of(payload)
