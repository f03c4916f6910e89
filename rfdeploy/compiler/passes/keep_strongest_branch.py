"""keep_strongest_branch: each searched conv keeps only its largest-alpha branch, as RF-Next's
``fixed_single_branch`` deploys it.

Does not preserve outputs: it gives the single-branch network of the same shape, a cost reference for
``rfdeploy bench --with-plain``.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from rfdeploy.compiler.ir import from_searched, to_module
from rfdeploy.loader.searched_conv import searched_layers
from rfdeploy.modules import set_submodule


def keep_strongest_branch(searched: nn.Module) -> tuple[nn.Module, list[str], str | None]:
    """A copy of ``searched``, the names of the layers it changed, and no note."""
    model = copy.deepcopy(searched).eval()
    layers = searched_layers(model)
    for name, layer in layers:
        ir = from_searched(name, layer)
        best = max(ir.branches, key=lambda branch: branch.alpha)
        set_submodule(model, name, to_module(ir.with_branches([replace(best, alpha=1.0)])))
    return model, [name for name, _ in layers], None
