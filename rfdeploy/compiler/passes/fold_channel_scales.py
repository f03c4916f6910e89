"""fold_channel_scales: a ``Mul`` by a per-channel constant folds into the ``Conv`` / ``MatMul`` / ``Gemm``
that computes what it scales, on the ONNX graph (ConvNeXt's layer scale ``x * gamma``, written in a
forward, where no model pass can remove it).

Matched: ``Mul(y, s)`` in either input order, ``s`` a float32 initializer or ``Constant`` whose broadcast
shape is 1 everywhere except, at most, at the channel axis of ``y``, where it is the channel count; ``y``
computed from a ``Conv`` (channels on axis 1), ``MatMul(x, W)`` (the last axis) or ``Gemm`` with a
float32 constant weight used by that node only, through any of:

- ``Add`` of a float32 constant (a bias: ``(z + b) s = z s + b s``, right-aligned broadcasting keeps an
  axis counted from the end, so the channel axis is the same on both sides);
- ``Transpose``, which moves the channel axis to ``perm.index(axis)``;
- ``Reshape`` by a constant shape, where it provably keeps each element's channel: an element's channel
  is ``floor(i / P) mod C`` of its row-major index ``i``, ``P`` the product of the dims after the channel
  axis, so an output axis of size ``C`` with the same product ``P`` after it holds the same channel
  (``P`` is 1 for a last-axis channel, else read from ONNX shape inference);
- ``Identity``.

Every tensor from the weighted node to ``y`` is read once, by the next node, and is not a graph output
(nor read inside a subgraph). The weight's output-channel slices and every bias on the way are scaled in
float64 and rounded once to float32; the ``Mul`` goes and the node before it writes the ``Mul``'s output
tensor, so every tensor that is left keeps its name, and every tensor outside ``FoldedScale.scaled``
keeps its values. A bias that other nodes also read (the exporter shares equal initializers) gets a
scaled copy of its own; a shared weight is left alone (a copy would duplicate it), as are non-constant
or non-per-channel scales, other dtypes (in fp16, ``W s`` can underflow where ``(x W) s`` does not:
ConvNeXt's initial layer scale 1e-6 is subnormal there), graphs before opset 7 (broadcasting by
attributes) and any other node on the way.

Preserves outputs up to rounding: ``(x W) s = x (W s)``, one float32 rounding of ``W s`` instead of one
of the product.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rfdeploy.compiler.graph_edit import GraphEdit, default_opset
from rfdeploy.compiler.onnx_match import constant_of

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
LAYOUT_OPS = ("Transpose", "Reshape", "Identity")


@dataclass(frozen=True)
class FoldedScale:
    mul: str  # the removed Mul node
    into: str  # the Conv / MatMul / Gemm node whose weight took the scale
    through: list[str]  # the nodes between them, in order
    input: str  # ``into``'s data input: where the folded part of the graph begins
    output: str  # the Mul's output, now written by the last node before it
    scaled: list[str]  # the tensors between ``into`` and the Mul: their values are scaled now, or gone


@dataclass(frozen=True)
class _Channel:
    """Where the output channels are in a tensor on the way from the weighted node to the Mul."""

    axis: int  # negative, counted from the last dim
    rank: int | None  # None where the graph does not say
    size: int


@dataclass(frozen=True)
class _Chain:
    weighted: gs.Node
    steps: list[gs.Node]  # from the weighted node's consumer to the Mul's input, in data order


class _Graph:
    """The graph with what the pass asks of it: constants, readers, and static dims on demand."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.edit = model, GraphEdit(model)
        self.graph, self.outputs, self.inputs = self.edit.graph, self.edit.outputs, self.edit.inputs
        self.read_in_subgraphs = _names_read_in_subgraphs(self.graph)
        self.names = set(self.graph.tensors())
        self._inferred: dict[str, list[int]] | None = None

    def read_only_by(self, tensor: gs.Tensor, node: gs.Node) -> bool:
        return (len(tensor.outputs) == 1 and tensor.outputs[0] is node and tensor.name not in self.outputs
                and tensor.name not in self.read_in_subgraphs)

    def constant(self, tensor: gs.Tensor) -> gs.Constant | None:
        return constant_of(tensor, self.inputs)

    def float32(self, tensor: gs.Tensor) -> np.ndarray | None:
        constant = self.constant(tensor)
        if constant is None or constant.dtype != np.float32 or constant.export_dtype != np.float32:
            return None
        return np.asarray(constant.values)

    def dims(self, tensor: gs.Tensor) -> list[int] | None:
        """``tensor``'s static dims, from the graph or else ONNX shape inference (run once, when first asked)."""
        if tensor.shape is not None and all(isinstance(d, int) and d >= 0 for d in tensor.shape):
            return [int(d) for d in tensor.shape]
        if self._inferred is None:
            self._inferred = _inferred_dims(self.model)
        return self._inferred.get(tensor.name)

    def fresh_name(self, stem: str) -> str:
        name, index = f"{stem}/scaled", 0
        while name in self.names:
            index += 1
            name = f"{stem}/scaled_{index}"
        self.names.add(name)
        return name


def _names_read_in_subgraphs(graph: gs.Graph) -> set[str]:
    """Tensors that an ``If`` / ``Loop`` / ``Scan`` body reads from the enclosing graph (or its own)."""
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            for body in value if isinstance(value, list) else [value]:
                if isinstance(body, gs.Graph):
                    names |= {t.name for inner in body.nodes for t in inner.inputs} | _names_read_in_subgraphs(body)
    return names


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  # a graph shape inference cannot follow: no dims from it
        return {}
    known = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in shape.dim):
            known[value.name] = [d.dim_value for d in shape.dim]
    return known


# --- finding the chain from the Mul back to the weighted node ----------------------------------------

def _data_input(graph: _Graph, node: gs.Node) -> gs.Tensor | None:
    """The one non-constant input a step passes on (an ``Add``'s other input must be a constant)."""
    if node.op in LAYOUT_OPS:
        return node.inputs[0] if node.inputs and graph.constant(node.inputs[0]) is None else None
    variables = [tensor for tensor in node.inputs if graph.constant(tensor) is None]
    return variables[0] if len(node.inputs) == 2 and len(variables) == 1 and not node.attrs else None


def _chain(graph: _Graph, scaled: gs.Tensor, mul: gs.Node) -> _Chain | None:
    steps: list[gs.Node] = []
    tensor, reader = scaled, mul
    while graph.read_only_by(tensor, reader) and len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        if node.op in WEIGHTED_OPS:
            return _Chain(node, steps[::-1])
        data = _data_input(graph, node) if node.op in (*LAYOUT_OPS, "Add") and len(node.outputs) == 1 else None
        if data is None:
            return None
        steps.append(node)
        tensor, reader = data, node
    return None


# --- the channel axis from the weighted node to the Mul ----------------------------------------------

def _weight_axis(graph: _Graph, node: gs.Node) -> int | None:
    """The axis of the weight (negative) that indexes the node's output channels, if it can be scaled."""
    if len(node.inputs) < 2 or graph.constant(node.inputs[0]) is not None:
        return None
    weight = graph.float32(node.inputs[1])
    if weight is None or not graph.read_only_by(node.inputs[1], node):
        return None
    bias = _bias_of(node)
    if bias is not None and graph.float32(bias) is None:
        return None  # a bias computed in the graph would not be scaled
    if node.op == "Conv" and weight.ndim >= 3:
        return -weight.ndim
    if node.op == "MatMul" and weight.ndim >= 2:
        return -1
    if node.op == "Gemm" and weight.ndim == 2:
        return -2 if node.attrs.get("transB", 0) else -1
    return None


def _bias_of(node: gs.Node) -> gs.Tensor | None:
    """A Conv's bias or a Gemm's C, where given."""
    bias = node.inputs[2] if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 else None
    return None if bias is None or bias.is_empty() else bias


def _weighted_channel(graph: _Graph, node: gs.Node, weight_axis: int) -> _Channel:
    weight = graph.float32(node.inputs[1])
    assert weight is not None
    size = weight.shape[weight_axis]
    if node.op == "Conv":
        return _Channel(1 - weight.ndim, weight.ndim, size)
    return _Channel(-1, 2 if node.op == "Gemm" else None, size)  # a MatMul's rank is its input's


def _through_transpose(node: gs.Node, channel: _Channel) -> _Channel | None:
    perm = node.attrs.get("perm")
    if perm is None:
        if channel.rank is None:
            return None
        perm = list(range(channel.rank))[::-1]
    rank = len(perm)
    if channel.rank not in (None, rank) or -channel.axis > rank:
        return None
    return _Channel(list(perm).index(rank + channel.axis) - rank, rank, channel.size)


def _through_reshape(graph: _Graph, node: gs.Node, channel: _Channel) -> _Channel | None:
    shape = graph.constant(node.inputs[1]) if len(node.inputs) == 2 else None
    if shape is None:
        return None
    target = [int(d) for d in np.asarray(shape.values).reshape(-1)]
    dims_in = graph.dims(node.inputs[0]) if channel.axis != -1 or 0 in target else None
    if channel.axis == -1:
        after = 1
    elif dims_in is not None and -channel.axis <= len(dims_in) and dims_in[channel.axis] == channel.size:
        after = prod(dims_in[channel.axis + 1:])
    else:
        return None
    resolved = _resolved_shape(target, dims_in, copies=not node.attrs.get("allowzero", 0))
    for j, size in enumerate(resolved):
        rest = [d for d in resolved[j + 1:] if d is not None]
        if size == channel.size and len(rest) == len(target) - j - 1 and prod(rest) == after:
            return _Channel(j - len(target), len(target), channel.size)
    return None


def _resolved_shape(target: list[int], dims_in: list[int] | None, copies: bool) -> list[int | None]:
    """A Reshape's output dims: its literal sizes, a 0 as the input's dim there (unless ``allowzero``),
    and a -1 from the element count where every other dim is known; None where the graph does not say."""
    resolved: list[int | None] = [
        d if d > 0 else dims_in[j] if d == 0 and copies and dims_in and j < len(dims_in) else None
        for j, d in enumerate(target)]
    known = [d for d in resolved if d is not None]
    if dims_in is not None and -1 in target and len(known) == len(target) - 1 and prod(known) > 0:
        resolved[target.index(-1)] = prod(dims_in) // prod(known)
    return resolved


def _through_add(graph: _Graph, node: gs.Node, channel: _Channel) -> _Channel | None:
    bias = next((graph.float32(t) for t in node.inputs if graph.constant(t) is not None), None)
    if bias is None or (bias.ndim >= -channel.axis and bias.shape[channel.axis] not in (1, channel.size)):
        return None  # not float32, or it would broadcast a one-channel output to more channels
    return _Channel(channel.axis, None if channel.rank is None else max(channel.rank, bias.ndim), channel.size)


def _channels(graph: _Graph, chain: _Chain, weight_axis: int) -> list[_Channel] | None:
    """The channel on the weighted node's output, then on each step's output; None where one is unproven."""
    channels = [_weighted_channel(graph, chain.weighted, weight_axis)]
    for node in chain.steps:
        channel = channels[-1]
        moved = (_through_transpose(node, channel) if node.op == "Transpose"
                 else _through_reshape(graph, node, channel) if node.op == "Reshape"
                 else _through_add(graph, node, channel) if node.op == "Add" else channel)
        if moved is None:
            return None
        channels.append(moved)
    return channels


def _per_channel(scale: np.ndarray, channel: _Channel) -> np.ndarray | None:
    """The scale as a vector over the channels (or one value for all), if it scales nothing else."""
    if scale.ndim > (channel.rank if channel.rank is not None else -channel.axis):
        return None  # it would add dims to the output
    at = scale.ndim + channel.axis
    others = [n for i, n in enumerate(scale.shape) if i != at]
    if any(n != 1 for n in others) or (at >= 0 and scale.shape[at] not in (1, channel.size)):
        return None
    return scale.reshape(-1)


# --- the fold --------------------------------------------------------------------------------------------

def _scaled(values: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``values * scale`` with ``scale`` along ``axis`` (negative), in float64, rounded once."""
    vector = scale.astype(np.float64).reshape((-1,) + (1,) * (-axis - 1))
    return (values.astype(np.float64) * vector).astype(values.dtype)


def _replace_constant(graph: _Graph, node: gs.Node, index: int, scale: np.ndarray, axis: int) -> None:
    """``node``'s constant input ``index`` scaled: in place where only ``node`` reads that initializer,
    else as a new initializer of ``node``'s own (the old one stays for its other readers)."""
    tensor = node.inputs[index]
    values = graph.float32(tensor)
    assert values is not None
    scaled = _scaled(values, scale, axis)
    if scaled.shape == values.shape and np.array_equal(scaled, values):
        return  # a zero bias (the exporter shares equal ones) stays shared
    if isinstance(tensor, gs.Constant) and graph.read_only_by(tensor, node):
        tensor.values = scaled
        return
    node.inputs[index] = gs.Constant(graph.fresh_name(tensor.name), scaled)
    _drop_if_unread(graph, tensor)


def _drop_if_unread(graph: _Graph, tensor: gs.Tensor) -> None:
    """A ``Constant`` node whose value nothing reads any more goes."""
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if (producer is not None and producer.op == "Constant" and not tensor.outputs
            and tensor.name not in graph.outputs and tensor.name not in graph.read_in_subgraphs):
        producer.outputs.clear()
        graph.graph.nodes.remove(producer)


def _fold(graph: _Graph, mul: gs.Node, chain: _Chain, scale: np.ndarray, weight_axis: int,
          channels: list[_Channel]) -> FoldedScale:
    weighted = chain.weighted
    _replace_constant(graph, weighted, 1, scale, weight_axis)
    if _bias_of(weighted) is not None:
        _replace_constant(graph, weighted, 2, scale, -1)  # a Conv bias is [C]; a Gemm C broadcasts to [M, C]
    for node, channel in zip(chain.steps, channels[1:]):
        if node.op == "Add":
            index = next(i for i, t in enumerate(node.inputs) if graph.constant(t) is not None)
            _replace_constant(graph, node, index, scale, channel.axis)
    last = chain.steps[-1] if chain.steps else weighted
    tensors = [node.outputs[0].name for node in (weighted, *chain.steps)]
    output, constant = mul.outputs[0], next(t for t in mul.inputs if graph.constant(t) is not None)
    mul.inputs.clear()
    mul.outputs.clear()
    graph.graph.nodes.remove(mul)
    _drop_if_unread(graph, constant)
    last.outputs[0] = output
    return FoldedScale(mul.name, weighted.name, [node.name for node in chain.steps], weighted.inputs[0].name,
                       output.name, tensors)


def _try_fold(graph: _Graph, mul: gs.Node) -> FoldedScale | None:
    if len(mul.inputs) != 2 or len(mul.outputs) != 1 or mul.attrs:
        return None
    scales = [graph.float32(t) for t in mul.inputs]
    if sum(graph.constant(t) is not None for t in mul.inputs) != 1 or all(s is None for s in scales):
        return None
    scale = next(s for s in scales if s is not None)
    scaled = mul.inputs[1 if scales[0] is not None else 0]
    chain = _chain(graph, scaled, mul)
    weight_axis = _weight_axis(graph, chain.weighted) if chain is not None else None
    if chain is None or weight_axis is None:
        return None
    channels = _channels(graph, chain, weight_axis)
    channel = channels[-1] if channels else None
    if channel is not None and channel.rank is None and scale.ndim > -channel.axis:
        dims = graph.dims(scaled)  # asked only here: shape inference runs on the whole graph
        channel = _Channel(channel.axis, len(dims), channel.size) if dims is not None else None
    vector = _per_channel(scale, channel) if channel is not None else None
    if vector is None or channels is None:
        return None
    return _fold(graph, mul, chain, vector, weight_axis, channels)


def fold_channel_scales(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[FoldedScale], str | None]:
    """The graph with every foldable scale folded (``model`` itself untouched, and returned as it is when
    nothing folds); what folded; why nothing did, or None."""
    if default_opset(model) < 7:
        return model, [], "opset below 7: Mul, Add and Gemm broadcast by attributes there"
    graph = _Graph(model)
    folded = [fold for node in list(graph.graph.nodes) if node.op == "Mul" and (fold := _try_fold(graph, node))]
    if not folded:
        return model, [], "no Mul by a per-channel constant after a Conv, MatMul or Gemm that folds"
    return graph.edit.exported(), folded, None


def boundaries_after(boundaries: list[tuple[str, str, str]],
                     graph_passes: dict[str, tuple[list, str | None]]) -> list[tuple[str, str, str]]:
    """Verification boundaries ``(name, input, output)`` of a graph rewritten, then put through the graph
    passes (``graph_passes``: their results): each fold's own, and a rewrite that ends on a tensor a fold
    scaled ends where that fold ends instead."""
    folds = [fold for changed, _ in graph_passes.values() for fold in changed if isinstance(fold, FoldedScale)]
    ends = {tensor: fold.output for fold in folds for tensor in fold.scaled}
    return ([(name, start, ends.get(end, end)) for name, start, end in boundaries]
            + [(fold.mul, fold.input, fold.output) for fold in folds])
