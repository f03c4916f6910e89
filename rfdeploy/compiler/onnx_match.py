"""Searched convs in an ONNX graph, as a generic exporter writes them, turned into the compiler's ``ConvIR``.

A searched conv in ONNX: several ``Conv`` nodes read one input with one weight (and bias), same kernel,
stride and groups, at different dilations and paddings; each output (through a ``Relu`` for G2L) is
multiplied by a scalar, and the products are summed by a tree of ``Add`` / ``Sum`` nodes. The scalars
are the normalised alphas: folded constants, or the ``Abs``/``ReduceSum``/``Div``/``Gather`` chain over an
initializer; whatever computes them, they are read by evaluating the constant nodes in graph order. The rates
are the ``Conv`` nodes' dilations, so no structure file is needed.

Only what is exactly such a sum matches: a weight that differs between branches, a scale with more than
one element, a branch output used anywhere else, or branches whose outputs could differ in size leave
the nodes alone. A ``BatchNormalization`` (inference mode) that alone reads the sum is recorded with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import torch

from rfdeploy.compiler.ir import Branch, ConvIR
from rfdeploy.errors import RFDeployError, first_line

SUM_OPS = ("Add", "Sum")


@dataclass(frozen=True)
class BatchNormParams:
    node: gs.Node
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float


@dataclass(frozen=True)
class GraphSearchedConv:
    """One searched conv found in a graph: its IR, where it reads and writes, and the nodes it spans."""

    ir: ConvIR
    input: gs.Variable
    output: gs.Variable  # the sum
    nodes: tuple[gs.Node, ...]  # convs, ReLUs, scaling Muls and the sum tree
    batchnorm: BatchNormParams | None


@dataclass(frozen=True)
class _Term:
    conv: gs.Node
    relu: gs.Node | None
    mul: gs.Node
    scale: float


# The ops constant folding evaluates: what computes alphas and scales from initializers. Only broadcasting
# and gathering make an output larger than the inputs, and _output_size bounds those before evaluating.
FOLDABLE = frozenset({
    "Constant", "Identity", "Cast", "Abs", "Neg", "Relu", "Sigmoid", "Exp", "Log", "Sqrt", "Reciprocal", "Softmax",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Clip", "ReduceSum", "ReduceMean", "ReduceMax",
    "ReduceMin", "ReduceL1", "ReduceL2", "Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
    "Transpose", "Concat"})
FOLD_LIMIT = 1 << 24  # elements of a tensor constant folding may make


class ConstantValues:
    """Values of tensors that depend on constants only: initializers, ``Constant`` nodes and what
    ``FOLDABLE`` ops compute from them, evaluated node by node in graph order (which the checker made
    topological) with ONNX's reference evaluator. Other ops (custom domains, shapes of inputs) stay unknown."""

    def __init__(self, graph: gs.Graph):
        self.constants = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
        self.computed: dict[str, np.ndarray] = {}
        for node in graph.nodes:
            known = all(not t.name or t.name in self.constants or t.name in self.computed for t in node.inputs)
            if node.domain or node.op not in FOLDABLE or not known:
                continue
            inputs = [self.value(t.name) if t.name else None for t in node.inputs]
            if _output_size(node, inputs) <= FOLD_LIMIT:
                self.computed.update(zip((t.name for t in node.outputs), _evaluate(node, inputs, graph.opset)))

    def value(self, name: str) -> np.ndarray | None:
        """An initializer's or Constant's value (read when asked: most are weights), or a computed one."""
        if name in self.computed:
            return self.computed[name]
        constant = self.constants.get(name)
        return None if constant is None else np.asarray(constant.values)

    def __call__(self, tensor: gs.Tensor) -> np.ndarray | None:
        return self.value(tensor.name)


def _output_size(node: gs.Node, inputs: list[np.ndarray | None]) -> int:
    """An upper bound of the node's largest output, in elements."""
    arrays = [a for a in inputs if a is not None]
    if node.op == "Gather" and len(arrays) == 2:
        data, indices = arrays
        axis = int(node.attrs.get("axis", 0))
        slab = data.size // data.shape[axis] if data.ndim and -data.ndim <= axis < data.ndim and data.shape[axis] else 1
        return indices.size * slab
    if node.op in ("Concat", "Reshape", "Slice", "Gather") or not arrays:
        return sum(a.size for a in arrays)
    try:
        return int(np.prod(np.broadcast_shapes(*(a.shape for a in arrays))))
    except ValueError:  # shapes that do not broadcast: the evaluation says so
        return 0


def _evaluate(node: gs.Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator  # loads every reference op: only when a graph is read

    proto = gs.exporters.onnx_exporter.OnnxExporter.export_node(node)
    feeds = {name: value for name, value in zip(proto.input, inputs) if name}
    try:
        with np.errstate(all="ignore"):  # NaN from 0/0 is checked where it matters, with the layer's name
            return [np.asarray(v) for v in ReferenceEvaluator(proto, opsets={"": opset}).run(None, feeds)]
    except Exception as error:  # noqa: BLE001  # whatever the op's own checks raise
        raise RFDeployError(f"ONNX node '{node.name}' ({node.op}) fails on its constant inputs: "
                            f"{first_line(error)}") from None


def constant_of(tensor: gs.Tensor, graph_inputs: set[str]) -> gs.Constant | None:
    """The constant ``tensor`` holds: an initializer that is not also a graph input (a caller could feed
    another value), or a ``Constant`` node's value; None for anything computed."""
    if isinstance(tensor, gs.Constant):
        return None if tensor.name in graph_inputs else tensor
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    value = producer.attrs.get("value") if producer is not None and producer.op == "Constant" else None
    return value if isinstance(value, gs.Constant) else None


def _only_consumer(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    """The node that alone reads ``tensor`` (and the graph does not output it), else None."""
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _producer(tensor: gs.Tensor, op: str | tuple[str, ...]) -> gs.Node | None:
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    return node if node.op in ((op,) if isinstance(op, str) else op) and not node.domain else None


def sum_tree(node: gs.Node, graph_outputs: set[str]) -> tuple[list[gs.Node], list[gs.Tensor]]:
    """The sum nodes under ``node`` that only feed this sum (``node`` first, then depth first), and the
    tensors they add up, left to right. A loop, not recursion: a chain of a thousand ``Add`` nodes is a
    valid graph."""
    nodes: list[gs.Node] = []
    leaves: list[gs.Tensor] = []
    taken: set[int] = set()  # a cycle (which the checker refuses on reading) ends here too
    pending: list[gs.Node | gs.Tensor] = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, gs.Tensor):
            leaves.append(item)
            continue
        nodes.append(item)
        taken.add(id(item))
        parts = []
        for tensor in item.inputs:
            inner = _producer(tensor, SUM_OPS)
            inside = inner is not None and id(inner) not in taken and _only_consumer(tensor, graph_outputs) is item
            parts.append(inner if inside else tensor)
        pending.extend(reversed(parts))
    return nodes, leaves


def _scaled_term(tensor: gs.Tensor, values: ConstantValues) -> _Term | None:
    """``tensor = [Relu](Conv(x)) * s`` with ``s`` a constant of one element."""
    mul = _producer(tensor, "Mul")
    if mul is None or len(mul.inputs) != 2:
        return None
    for branch, scale_tensor in (mul.inputs, mul.inputs[::-1]):
        scale = values(scale_tensor)
        if scale is None or scale.size != 1:
            continue
        relu = _producer(branch, "Relu")
        conv = _producer(relu.inputs[0] if relu is not None else branch, "Conv")
        if conv is not None and scale.ndim <= _weight_rank(conv, values):
            return _Term(conv, relu, mul, float(scale.reshape(())))
    return None


def _read_inside(nodes: list[gs.Node], graph_outputs: set[str]) -> bool:
    """Whether every tensor the nodes write, but the last, is read by these nodes only.

    The exporter writes identical branches (G2L's ``[4, 4, 4]``) as one ``Conv`` and ``Relu`` read by
    several ``Mul`` nodes: such a conv counts once per ``Mul``, and its nodes once.
    """
    inside = {id(node) for node in nodes}
    written = [tensor for node in nodes for tensor in node.outputs][:-1]
    return all(t.name not in graph_outputs and all(id(c) in inside for c in t.outputs) for t in written)


def _weight_rank(conv: gs.Node, values: ConstantValues) -> int:
    weight = values(conv.inputs[1]) if len(conv.inputs) > 1 else None
    return -1 if weight is None else weight.ndim


@dataclass(frozen=True)
class _Geometry:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    rate: tuple[int, ...]
    padding: tuple[int, ...]


def _geometry(conv: gs.Node, weight: np.ndarray) -> _Geometry | None:
    """The conv's attributes with ONNX defaults; None where the IR cannot hold them (asymmetric pads, auto_pad)."""
    dims = weight.ndim - 2
    attrs = conv.attrs
    pads = list(attrs.get("pads", [0] * 2 * dims))
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or pads[:dims] != pads[dims:]:
        return None
    return _Geometry(tuple(attrs.get("kernel_shape", weight.shape[2:])), tuple(attrs.get("strides", [1] * dims)),
                     int(attrs.get("group", 1)), tuple(attrs.get("dilations", [1] * dims)), tuple(pads[:dims]))


def _same(arrays: list[np.ndarray | None]) -> bool:
    first = arrays[0]
    if first is None:
        return all(a is None for a in arrays)
    return all(a is not None and a.dtype == first.dtype and np.array_equal(a, first) for a in arrays)


def _branches(terms: list[_Term], values: ConstantValues) -> tuple[list[Branch], _Geometry] | None:
    """One IR branch per term and the shared geometry, or None unless every conv shares input, weight,
    bias, kernel, stride and groups, and every branch's output has the same size."""
    convs = [term.conv for term in terms]
    if len({id(conv.inputs[0]) for conv in convs}) != 1 or any(len(conv.inputs) < 2 for conv in convs):
        return None
    weights = [values(conv.inputs[1]) for conv in convs]
    has_bias = {len(conv.inputs) > 2 and bool(conv.inputs[2].name) for conv in convs}
    if len(has_bias) != 1:
        return None
    biases = [values(conv.inputs[2]) if True in has_bias else None for conv in convs]
    weight = weights[0]
    if weight is None or weight.ndim not in (3, 4) or not _same(weights) or not _same(biases):
        return None
    if True in has_bias and biases[0] is None:  # a bias that is not a constant
        return None
    geometries = [g for g in (_geometry(conv, weight) for conv in convs) if g is not None]
    kernel = weight.shape[2:]
    extents = {tuple(2 * p - r * (k - 1) for p, r, k in zip(g.padding, g.rate, kernel)) for g in geometries}
    shared = {(g.kernel, g.stride, g.groups) for g in geometries}
    if len(geometries) != len(convs) or len(shared) != 1 or geometries[0].kernel != kernel or len(extents) != 1:
        return None
    weight_tensor = torch.from_numpy(np.array(weight))
    bias = None if biases[0] is None else torch.from_numpy(np.array(biases[0]))
    branches = [Branch(g.rate, g.padding, term.scale, weight_tensor, bias) for g, term in zip(geometries, terms)]
    return branches, geometries[0]


def _batchnorm_after(tensor: gs.Tensor, values: ConstantValues, graph_outputs: set[str]) -> BatchNormParams | None:
    node = _only_consumer(tensor, graph_outputs)
    if node is None or node.op != "BatchNormalization" or node.domain or node.inputs[0] is not tensor:
        return None
    if int(node.attrs.get("training_mode", 0)) != 0 or len(node.outputs) != 1:
        return None
    params = [values(t) for t in node.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64) for p in params if p is not None)
    return BatchNormParams(node, scale, bias, mean, var, float(node.attrs.get("epsilon", 1e-5)))


def _check_values(name: str, terms: list[_Term], branches: list[Branch]) -> None:
    """A searched conv's scales (its normalised alphas: NaN where every alpha is 0) and weights must be
    numbers: said here, naming the layer, rather than as a failed verification."""
    scales = [term.scale for term in terms]
    if not all(np.isfinite(scales)) or not any(scales):
        raise RFDeployError(f"searched conv '{name}' ({terms[0].mul.name} ...): its branch scales {scales} are "
                            f"not finite or all zero (NaN, infinite or all-zero alphas)")
    for part, tensor in (("weight", branches[0].weight), ("bias", branches[0].bias)):
        if tensor is not None and not torch.isfinite(tensor).all():
            raise RFDeployError(f"searched conv '{name}' ({terms[0].conv.name}): its {part} holds NaN or "
                                f"infinite values")


def _layer_name(convs: list[gs.Node], taken: set[str]) -> str:
    """The scope the convs share (``/backbone/layer2/layer2.0/Conv_1`` -> ``backbone/layer2/layer2.0``)."""
    scope = os.path.commonprefix([conv.name for conv in convs]).rpartition("/")[0].strip("/")
    return scope if scope and scope not in taken else convs[0].name


def _match(root: gs.Node, values: ConstantValues, graph_outputs: set[str], taken: set[str]):
    sums, leaves = sum_tree(root, graph_outputs)
    terms = [_scaled_term(leaf, values) if _only_consumer(leaf, graph_outputs) else None for leaf in leaves]
    if len(terms) < 2 or any(t is None for t in terms):
        return None
    found = [t for t in terms if t is not None]
    if len({t.relu is None for t in found}) != 1:
        return None
    shared = _branches(found, values)
    if shared is None:
        return None
    branches, geometry = shared
    convs = [t.conv for t in found]
    name = _layer_name(convs, taken)
    _check_values(name, found, branches)
    ir = ConvIR(name, geometry.stride, geometry.groups, tuple(branches), found[0].relu is not None)
    relus = [t.relu for t in found if t.relu is not None]
    nodes = list({id(n): n for n in [*convs, *relus, *(t.mul for t in found), *sums[::-1]]}.values())
    if not _read_inside(nodes, graph_outputs):
        return None
    output = root.outputs[0]
    return GraphSearchedConv(ir, convs[0].inputs[0], output, tuple(nodes),
                             _batchnorm_after(output, values, graph_outputs))


def find_searched_convs(graph: gs.Graph, values: ConstantValues | None = None) -> list[GraphSearchedConv]:
    """Every searched conv of ``graph``, in graph order; the largest sum wins where sums nest."""
    values = values or ConstantValues(graph)
    graph_outputs = {t.name for t in graph.outputs}
    claimed: set[int] = set()
    found: list[GraphSearchedConv] = []
    taken: set[str] = set()
    for node in reversed(graph.nodes):  # consumers before producers: an outer sum is seen first
        if node.op not in SUM_OPS or node.domain or id(node) in claimed or len(node.outputs) != 1:
            continue
        match = _match(node, values, graph_outputs, taken)
        if match is not None:
            claimed.update(id(n) for n in match.nodes)
            taken.add(match.ir.name)
            found.append(match)
    return found[::-1]
