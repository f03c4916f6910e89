"""Editing a torch module tree by dotted name, as the loader and the compiler's passes do."""

from __future__ import annotations

from torch import nn


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at ``name`` (``"layer1.0.conv2"``) in ``root``, replacing what is there."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
