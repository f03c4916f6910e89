"""fold_batchnorm: an eval-mode BatchNorm that only ever reads one conv's output folds into that conv.

Preserves outputs up to rounding: ``bn(conv(x)) == conv'(x)`` with ``W' = W * g/sqrt(v+eps)`` per output
channel and ``b' = (b - m) * g/sqrt(v+eps) + beta``. Works on plain convs and on multi-branch lowerings
without a per-branch nonlinearity (every branch scales, the bias shift goes to one branch). The graph
comes from torch.fx; the model keeps its own classes and forward code, only the folded BatchNorms become
``nn.Identity``. A model fx cannot trace is left as it is, with the reason.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from rfdeploy.ir import BranchSum, ConvReLU
from rfdeploy.searched import SearchedConv

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, (BranchSum, ConvReLU, SearchedConv)) or super().is_leaf_module(module, qualname)


def _foldable_convs(module: nn.Module) -> list[nn.Module] | None:
    if isinstance(module, _CONVS):
        return [module]
    if isinstance(module, BranchSum) and not module.branch_relu:
        return list(module.convs)
    return None


@torch.no_grad()
def _fold(convs: list[nn.Module], bn: nn.Module) -> None:
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var.double())
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    shape = (-1,) + (1,) * (convs[0].weight.dim() - 1)
    for index, conv in enumerate(convs):
        conv.weight.copy_(conv.weight.double() * scale.view(shape))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = beta - bn.running_mean.double() * scale if index == 0 else 0.0
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(new_bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) for every BatchNorm fed only by a conv used nowhere else."""
    graph = _LeafTracer().trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BATCHNORMS):
            continue
        source = node.args[0]
        if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1
                and _foldable_convs(model.get_submodule(source.target)) is not None):
            pairs.append((source.target, node.target))
    return pairs


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str], str | None]:
    """Folds in place; returns the model, the folded BatchNorms' names, and why nothing folded (or None)."""
    if model.training:
        return model, [], "model is in training mode"
    try:
        pairs = conv_bn_pairs(model)
    except Exception as error:  # fx raises many types on untraceable control flow
        return model, [], f"not traceable by torch.fx ({type(error).__name__}: {str(error).splitlines()[0]})"
    folded = []
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        if bn.running_var is None:  # track_running_stats=False normalises with batch statistics
            continue
        _fold(_foldable_convs(model.get_submodule(conv_name)), bn)
        _set_submodule(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return model, folded, None
