"""fold_batchnorm: an eval-mode BatchNorm that only ever reads one conv's output folds into that conv.

Preserves outputs up to rounding: ``bn(conv(x)) == conv'(x)`` with ``W' = W * g/sqrt(v+eps)`` per output
channel and ``b' = (b - m) * g/sqrt(v+eps) + beta``. Works on plain convs and on multi-branch lowerings
without a per-branch nonlinearity (every branch scales; the bias shift goes to one place: a conv with
a bias already, else the least dilated conv, or the ``BranchSum``'s own bias when every conv is
dilated). The graph comes from torch.fx; the model keeps its own classes and forward code, only the
folded BatchNorms become ``nn.Identity``. A model fx cannot trace is left as it is, with the reason.
"""

from __future__ import annotations

import inspect
from math import prod

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from rfdeploy.compiler.involution_ir import LoweredInvolution
from rfdeploy.compiler.ir import BranchSum, ConvReLU, is_dilated
from rfdeploy.errors import first_line
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.modules import set_submodule

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return (isinstance(module, (BranchSum, ConvReLU, SearchedConv, LoweredInvolution))
                or super().is_leaf_module(module, qualname))


def _foldable_convs(module: nn.Module) -> list[_ConvNd] | None:
    if isinstance(module, _CONVS):
        return [module]
    if isinstance(module, BranchSum) and not module.branch_relu:
        return [conv for conv in module.convs if isinstance(conv, _ConvNd)]
    return None


def _bias_home(module: nn.Module, convs: list[_ConvNd]) -> nn.Module:
    """Where the BatchNorm's shift goes: a conv with a bias, else the least dilated conv; a ``BranchSum``
    of dilated convs only (see its docstring) takes it itself."""
    if isinstance(module, BranchSum) and (module.bias is not None or all(is_dilated(c) for c in convs)):
        return module
    return min(convs, key=lambda conv: (conv.bias is None, prod(conv.dilation)))


@torch.no_grad()
def _fold(module: nn.Module, convs: list[_ConvNd], bn: _BatchNorm) -> None:
    assert bn.running_var is not None and bn.running_mean is not None
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var.double())
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = beta - bn.running_mean.double() * scale
    shape = (-1,) + (1,) * (convs[0].weight.dim() - 1)
    for conv in convs:
        conv.weight.copy_(conv.weight.double() * scale.view(shape))
    home = _bias_home(module, convs)
    for owner in {*convs, module}:
        bias = owner.bias
        if isinstance(bias, torch.Tensor):
            bias.copy_(bias.double() * scale + (shift if owner is home else 0.0))
    if home.bias is None:  # branches without a bias keep none: the shift goes to one place only
        home.bias = nn.Parameter(shift.to(convs[0].weight.dtype))


def traced_graph(model: nn.Module) -> fx.Graph:
    """The graph of ``model(*inputs)``: every forward argument that has a default is fixed to it, as when
    rfdeploy runs the model, so that a detector's ``mode="tensor"`` branch is the one traced."""
    parameters = inspect.signature(model.forward).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return _LeafTracer().trace(model, concrete_args=defaults or None)


def conv_bn_pairs(model: nn.Module, prefix: str = "") -> list[tuple[str, str]]:
    """(conv name, batchnorm name) for every BatchNorm fed only by a conv used nowhere else.

    Where fx cannot trace ``model``, each child is traced on its own (a detector whose top-level forward
    fx cannot follow still has a backbone, neck and head that it can); fx's error is raised when no part
    traces. A child is then judged by its own forward: the export's verification is what would catch a
    parent that also calls a child's conv directly.
    """
    try:
        graph = traced_graph(model)
    except Exception:  # fx raises many types on untraceable control flow
        pairs: list[tuple[str, str]] = []
        traced = False
        for name, child in model.named_children():
            try:
                pairs += conv_bn_pairs(child, f"{prefix}{name}.")
                traced = True
            except Exception:  # noqa: BLE001,S112  # that part stays unfolded
                continue
        if not traced:
            raise
        return pairs
    return [(prefix + conv, prefix + bn) for conv, bn in _pairs(model, graph)]


def _pairs(model: nn.Module, graph: fx.Graph) -> list[tuple[str, str]]:
    module_calls = [node for node in graph.nodes if node.op == "call_module"]
    calls: dict[str, int] = {}
    for node in module_calls:
        calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in module_calls:
        bn_name = str(node.target)
        source = node.args[0]
        if not isinstance(model.get_submodule(bn_name), _BATCHNORMS) or not isinstance(source, fx.Node):
            continue
        conv_name = str(source.target)
        if (source.op == "call_module" and len(source.users) == 1 and calls[conv_name] == 1
                and calls[bn_name] == 1 and _foldable_convs(model.get_submodule(conv_name)) is not None):
            pairs.append((conv_name, bn_name))
    return pairs


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str], str | None]:
    """Folds in place; returns the model, the folded BatchNorms' names, and why nothing folded (or None)."""
    if model.training:
        return model, [], "model is in training mode"
    try:
        pairs = conv_bn_pairs(model)
    except Exception as error:  # noqa: BLE001  # fx raises many types on untraceable control flow
        return model, [], f"not traceable by torch.fx ({type(error).__name__}: {first_line(error, limit=1000)})"
    folded = []
    for conv_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        convs = _foldable_convs(model.get_submodule(conv_name))
        if not isinstance(bn, _BatchNorm) or bn.running_var is None or not convs:
            continue  # track_running_stats=False normalises with batch statistics: nothing to fold
        _fold(model.get_submodule(conv_name), convs, bn)
        set_submodule(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return model, folded, None
