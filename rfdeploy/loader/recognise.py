"""Which zoo architecture a checkpoint holds, from its parameter names and shapes alone."""

from __future__ import annotations

import functools

import torch

from rfdeploy import models
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.checkpoint import StateDict
from rfdeploy.loader.searched_model import ALPHA_KEYS, RFCONV_BUFFERS


def plain_signature(state: StateDict) -> dict[str, tuple[int, ...]]:
    """Name -> shape as a plain model would hold it: no ``module.``, no ``op_layer``, no alphas."""
    signature = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if key.rpartition(".")[2] in ALPHA_KEYS + RFCONV_BUFFERS:
            continue
        signature[key.replace(".op_layer.", ".")] = tuple(tensor.shape)
    return signature


@functools.cache
def _shapes_only(name: str) -> torch.nn.Module:
    """A zoo model without real weights: built on the meta device where its builder allows."""
    try:
        with torch.device("meta"):
            return models.get(name).builder()
    except Exception:  # noqa: BLE001  # builders that run a forward (e.g. BatchNorm calibration) need real tensors
        return models.build(name)


def zoo_signature(name: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a zoo model's state dict."""
    return {k: tuple(v.shape) for k, v in _shapes_only(name).state_dict().items()
            if not k.endswith("num_batches_tracked")}


def zoo_parameters(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(p.shape)) for k, p in _shapes_only(name).named_parameters()]


def _fits(entry: models.ZooEntry, signature: dict[str, tuple[int, ...]]) -> bool:
    expected = zoo_signature(entry.name)
    for prefix in {"", f"{entry.component}." if entry.component else ""}:
        local = {k[len(prefix):]: v for k, v in signature.items() if k.startswith(prefix)}
        local = {k: v for k, v in local.items() if not k.endswith("num_batches_tracked")}
        if local.keys() == expected.keys() and all(local[k] == expected[k] for k in expected):
            return True
    return False


def zoo_model_of(state: StateDict, path: str) -> str:
    signature = plain_signature(state)
    matches = [entry.name for entry in models.entries() if _fits(entry, signature)]
    if len(matches) != 1:
        found = f"it fits {', '.join(matches)}" if matches else "no zoo architecture fits it"
        raise RFDeployError(f"{path}: {found}; give --model (a zoo name or package.module:callable)")
    return matches[0]
