"""The model zoo: plain (unsearched) architectures under mmdet / mmpretrain module names.

Every entry builds the network the search *started from*, with deterministic random weights, so that
a real structure file and a real checkpoint's backbone weights apply without renaming.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rfdeploy.errors import RFDeployError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    component: str = "backbone"  # prefix of this part in a detector's checkpoint / structure file


_REGISTRY: dict[str, ZooEntry] = {}
_MODULES = ("convnext", "resnet", "res2net", "rednet", "hrnet", "pvt", "mstcn")


def register(input_shape: tuple[int, ...], description: str, component: str = "backbone"):
    """Decorator: add a zero-argument builder to the zoo under its own name; a name is taken once."""

    def add(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"zoo model '{name}' is registered twice: in {_REGISTRY[name].builder.__module__} "
                             f"and in {builder.__module__}")
        _REGISTRY[name] = ZooEntry(name, builder, tuple(input_shape), description, component)
        return builder

    return add


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def entries() -> list[ZooEntry]:
    _load_all()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get(name: str) -> ZooEntry:
    _load_all()
    if name not in _REGISTRY:
        raise RFDeployError(f"unknown zoo model '{name}' (known: {', '.join(sorted(_REGISTRY))}); your own "
                            f"network: package.module:callable or path/to/file.py:callable")
    return _REGISTRY[name]


def build(name: str, seed: int = 0) -> nn.Module:
    """The plain zoo model ``name`` in eval mode, its random initialisation fixed by ``seed``."""
    entry = get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.builder()
    return model.eval()
