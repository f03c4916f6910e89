"""The plain modules of a lowered layer (``to_module``'s output, BatchNorm folded) as ONNX nodes.

Node for node what the TorchScript exporter writes for them: a ``Conv`` per conv (its own weight and,
where ``to_module`` put one, bias), a ``Relu`` after each for G2L, and ``BranchSum`` as a chain of ``Add``
in its forward's order, its own bias as a ``[C, 1, ...]`` constant added to the first conv's output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rfdeploy.compiler.ir import BranchSum, ConvReLU

Namer = Callable[[str], str]  # a name for a new node or tensor, unique in the graph


def _array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _conv(conv: _ConvNd, x: gs.Tensor, y: gs.Tensor, name: Namer) -> gs.Node:
    padding = [int(p) for p in conv.padding]  # type: ignore[union-attr]  # never a string in to_module's convs
    attrs = {"dilations": list(conv.dilation), "group": conv.groups, "kernel_shape": list(conv.kernel_size),
             "pads": padding + padding, "strides": list(conv.stride)}
    inputs = [x, gs.Constant(name("weight"), _array(conv.weight))]
    if conv.bias is not None:
        inputs.append(gs.Constant(name("bias"), _array(conv.bias)))
    return gs.Node("Conv", name("Conv"), attrs, inputs, [y])


def _variable(name: Namer, stem: str, like: gs.Tensor) -> gs.Variable:
    return gs.Variable(name(stem), dtype=like.dtype)


def _branch(conv: _ConvNd, relu: bool, x: gs.Tensor, y: gs.Tensor, name: Namer) -> list[gs.Node]:
    if not relu:
        return [_conv(conv, x, y, name)]
    inner = _variable(name, "conv_output", y)
    return [_conv(conv, x, inner, name), gs.Node("Relu", name("Relu"), inputs=[inner], outputs=[y])]


def _add(a: gs.Tensor, b: gs.Tensor, y: gs.Tensor, name: Namer) -> gs.Node:
    return gs.Node("Add", name("Add"), inputs=[a, b], outputs=[y])


def _branch_sum(module: BranchSum, x: gs.Tensor, y: gs.Tensor, name: Namer) -> list[gs.Node]:
    nodes: list[gs.Node] = []
    terms: list[gs.Tensor] = []
    for index, conv in enumerate(module.convs):
        assert isinstance(conv, _ConvNd)
        output = _variable(name, "branch_output", y)
        nodes += _branch(conv, module.branch_relu, x, output, name)
        if module.scales is not None:
            product = _variable(name, "scaled_output", y)
            alpha = gs.Constant(name("alpha"), np.array(module.scales[index], dtype=_array(conv.weight).dtype))
            nodes.append(gs.Node("Mul", name("Mul"), inputs=[output, alpha], outputs=[product]))
            output = product
        terms.append(output)
        spatial = conv.weight.dim() - 2
    if module.bias is not None:
        bias = _array(module.bias).reshape(-1, *(1,) * spatial)
        terms.insert(1, gs.Constant(name("bias"), bias))
    assert len(terms) > 1, "to_module makes a BranchSum of two branches or more"
    total = terms[0]
    for index, term in enumerate(terms[1:], start=2):
        out = y if index == len(terms) else _variable(name, "partial_sum", y)
        nodes.append(_add(total, term, out, name))
        total = out
    return nodes


def emit(module: nn.Module, x: gs.Tensor, y: gs.Tensor, name: Namer) -> list[gs.Node]:
    """Nodes computing ``y = module(x)`` for a module ``to_module`` makes."""
    if isinstance(module, BranchSum):
        return _branch_sum(module, x, y, name)
    if isinstance(module, ConvReLU):
        conv = module[0]
        assert isinstance(conv, _ConvNd)
        return _branch(conv, True, x, y, name)
    if isinstance(module, _ConvNd):
        return [_conv(module, x, y, name)]
    raise TypeError(f"no ONNX emitter for {type(module).__name__}")
