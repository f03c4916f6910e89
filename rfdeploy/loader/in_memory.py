"""Searched models already in memory: the search ops a training script left in the model, read in place.

rfdeploy cannot import the users' search classes, so each op is recognised by the attributes its forward
reads, and its rates come from the op itself (nothing is re-derived):

- mmcv >= 2 ``BaseConvRFSearchOp`` (``Conv2dRFSearchOp``): ``op_layer``, ``dilation_rates``, ``branch_weights``;
- the older research op and G2L's ``Conv1dOp``: ``op_layer``, ``rates`` (ints), ``weights``; a Conv1d
  ``op_layer`` is G2L's (a ReLU inside each branch), a Conv2d one the research op's;
- RF-Next's ``RFConv2d``: a conv with ``sample_weights`` and the buffers ``rates`` and ``num_rates``.

Each becomes the ``SearchedConv`` a checkpoint of the same format loads into, so everything after loading
is the same as for files.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rfdeploy.errors import RFDeployError
from rfdeploy.loader.rates import centred_padding, mmcv_padding, research_padding
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.modules import set_submodule


def search_op_format(module: nn.Module) -> str | None:
    """The format of the search op ``module`` ("mmcv", "research", "g2l", "rfconv"), or None for any other module."""
    if isinstance(getattr(module, "op_layer", None), _ConvNd):
        if hasattr(module, "dilation_rates") and hasattr(module, "branch_weights"):
            return "mmcv"
        if hasattr(module, "rates") and hasattr(module, "weights"):
            return "g2l" if isinstance(module.op_layer, nn.Conv1d) else "research"
    if isinstance(module, _ConvNd) and all(hasattr(module, key) for key in ("sample_weights", "rates", "num_rates")):
        return "rfconv"
    return None


def _tensor(module: nn.Module, key: str) -> torch.Tensor:
    return torch.as_tensor(getattr(module, key))


def _conv_rates(conv: _ConvNd, rates, name: str) -> list[tuple[int, ...]]:
    """Rates as tuples of one int per spatial dim; a bare int applies to every dim."""
    dims = len(conv.kernel_size)
    try:
        tuples = [tuple(int(v) for v in (r if isinstance(r, (list, tuple)) else [r] * dims)) for r in rates]
    except (TypeError, ValueError):
        raise RFDeployError(f"layer '{name}': its search op holds rates {rates!r}, not dilations") from None
    if not tuples or any(len(r) != dims or min(r) < 1 for r in tuples):
        raise RFDeployError(f"layer '{name}': its search op holds rates {rates!r}, not {dims}-D dilations >= 1")
    return tuples


def searched_conv_of(name: str, module: nn.Module) -> SearchedConv:
    """The ``SearchedConv`` computing what the search op ``module`` computes."""
    kind = search_op_format(module)
    conv = cast(_ConvNd, module if kind == "rfconv" else module.op_layer)
    kernel_size, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if kind == "rfconv":
        count = int(_tensor(module, "num_rates").reshape(-1)[0])
        if count == 1:  # its forward is nn.Conv2d's: the dilation and padding its estimate() set
            if isinstance(conv.padding, str):
                raise RFDeployError(f"layer '{name}': padding '{conv.padding}' where a size was expected")
            rates, paddings = [tuple(conv.dilation)], [tuple(conv.padding)]
        else:
            rates = _conv_rates(conv, _tensor(module, "rates")[:count].tolist(), name)
            paddings = [centred_padding(kernel_size, r) for r in rates]
        alphas, relu, mix = module.sample_weights, False, count > 1
    elif kind == "mmcv":
        rates = _conv_rates(conv, module.dilation_rates, name)
        paddings = [mmcv_padding(kernel_size, stride, r) for r in rates]
        alphas, relu, mix = module.branch_weights, False, False
    else:
        rates = _conv_rates(conv, module.rates, name)
        padding = (lambda r: r) if kind == "g2l" else (lambda r: research_padding(kernel_size, r[0]))
        paddings = [padding(r) for r in rates]
        alphas, relu, mix = module.weights, kind == "g2l", True
    alphas = torch.as_tensor(alphas).detach().reshape(-1)
    if alphas.numel() < len(rates):
        raise RFDeployError(f"layer '{name}': {alphas.numel()} alphas for {len(rates)} rates")
    if not alphas.is_floating_point():
        raise RFDeployError(f"layer '{name}': its alphas are {alphas.dtype}, not floating point")
    bias = None if conv.bias is None else conv.bias.detach().float()
    return SearchedConv(conv.weight.detach().float(), bias, alphas.float(), rates, paddings, stride, conv.groups,
                        relu, mix)


def search_ops(model: nn.Module) -> dict[str, str]:
    """Layer name -> format, for every search op in ``model`` (not looking inside one)."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in found):
            continue
        kind = search_op_format(module)
        if kind is not None:
            found[name] = kind
    return found


def adopt_search_ops(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` with every search op replaced by its ``SearchedConv``, and layer name -> format."""
    found = search_ops(model)
    searched = copy.deepcopy(model).eval()
    for name in found:
        replacement = searched_conv_of(name, searched.get_submodule(name))
        set_submodule(searched, name, replacement)
    return searched, found
