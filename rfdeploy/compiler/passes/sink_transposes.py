"""sink_transposes: a channels-last stretch between two layout ``Transpose``s runs channels-first instead.

A model that permutes NCHW to NHWC to run ``nn.Linear`` / ``nn.LayerNorm`` over channels (ConvNeXt's
block: ``permute -> LayerNorm -> Linear -> GELU -> Linear -> permute back``) exports as
``Transpose(0,2,3,1) -> ... -> Transpose(0,3,1,2)``. Both transposes, and the layout reorders the
backends add around them, go when every node in between has a channels-first form:

- ``MatMul`` by a constant ``[C_in, C_out]`` weight -> a 1x1 ``Conv`` with weight ``W^T``;
- ``LayerNormalization`` over the last axis, constant scale and bias -> the same normalisation over axis 1
  from ``ReduceMean``, ``Sub``, ``Mul``, ``Add``, ``Sqrt``, ``Div`` (what ``LayerNormalization`` is
  defined as), scale and bias as ``[C, 1, 1]``;
- ``Add`` / ``Sub`` / ``Mul`` / ``Div`` / ``Pow`` whose other input is in the stretch too, a scalar
  constant, or a constant vector over the channels (made ``[C, 1, 1]``);
- elementwise ops (``Erf``, ``Relu``, ``Sigmoid``, ``Tanh``, ``Gelu``, ...).

The stretch is every node reachable from the first transpose's output up to inverse transposes; each of
its tensors is read only inside it (or by those transposes) and is no graph output. Anything else in it,
and the graph is left as it is. Whether that is faster depends on the backend (``tuning.layout`` times
both and keeps the faster).

Preserves outputs up to rounding: the same products, summed in another order (a 1x1 conv for a matmul),
and the normalisation's formula in separate ops instead of one fused kernel.

The normalisation's ops are marked to stay in fp32 (``graph_edit.keep_in_fp32``), which the int8 quantizer
honours: quantized, the mean, variance and division of ConvNeXt-T's channels-first graph cost 3.8-7 dB of SNR
(issue 24), where ``LayerNormalization`` as one op is not quantized at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rfdeploy.compiler.graph_edit import GraphEdit, keep_in_fp32, reroute_readers, swap
from rfdeploy.compiler.onnx_match import constant_of

TO_CHANNELS_LAST = [0, 2, 3, 1]
TO_CHANNELS_FIRST = [0, 3, 1, 2]
ELEMENTWISE = ("Erf", "Relu", "Sigmoid", "Tanh", "Gelu", "Identity", "Sqrt", "Abs", "Neg", "Exp", "HardSigmoid",
               "HardSwish", "Softplus", "Elu", "LeakyRelu", "Selu", "Mish")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow")


@dataclass(frozen=True)
class SunkTranspose:
    entry: str  # the Transpose to channels-last that went
    exits: list[str]  # the Transposes back to channels-first that went
    converted: list[str]  # the nodes in between, now channels-first


class _Stretch:
    """The nodes between an entry transpose and its exits: every reader reachable from the entry's output,
    stopping at transposes back to channels-first."""

    def __init__(self, entry: gs.Node, outputs: set[str], inputs: set[str]):
        self.entry = entry
        self.graph_inputs = inputs
        self.nodes: list[gs.Node] = []
        self.exits: list[gs.Node] = []
        self.tensors: set[str] = set()  # channels-last tensors: the entry's output and every node's outputs
        self.graph_outputs = outputs

    def collect(self) -> bool:
        """True when the stretch ends at exits only and every node in it converts."""
        pending = [self.entry.outputs[0]]
        while pending:
            tensor = pending.pop()
            if tensor.name in self.tensors:
                continue
            self.tensors.add(tensor.name)
            if tensor.name in self.graph_outputs or not tensor.outputs:
                return False
            for reader in tensor.outputs:
                if any(reader is known for known in self.nodes + self.exits):
                    continue
                if reader.op == "Transpose" and reader.attrs.get("perm") == TO_CHANNELS_FIRST:
                    self.exits.append(reader)
                else:
                    self.nodes.append(reader)
                    pending.extend(reader.outputs)
        return bool(self.exits) and all(_convertible(node, self.tensors, self.graph_inputs)
                                    for node in self.nodes)


def _constant(tensor: gs.Tensor, graph_inputs: set[str]) -> np.ndarray | None:
    value = constant_of(tensor, graph_inputs)
    return None if value is None else np.asarray(value.values)


def _convertible(node: gs.Node, inside: set[str], graph_inputs: set[str]) -> bool:
    """``node`` has a channels-first form, and reads nothing from outside the stretch but constants."""
    data, *rest = node.inputs
    if data.name not in inside:
        return (node.op in BINARY and _binary_operand(data, inside, graph_inputs)
                and _binary_operand(rest[0], inside, graph_inputs))
    if node.op in ELEMENTWISE:
        return not rest
    if node.op == "MatMul":
        weight = _constant(rest[0], graph_inputs)
        return weight is not None and weight.ndim == 2
    if node.op == "LayerNormalization":
        scale = _constant(rest[0], graph_inputs)
        bias = _constant(rest[1], graph_inputs) if len(rest) > 1 else np.zeros(1)
        return (node.attrs.get("axis", -1) in (-1, 3) and len(node.outputs) == 1 and scale is not None
                and bias is not None and scale.ndim == 1)
    return node.op in BINARY and _binary_operand(rest[0], inside, graph_inputs)


def _binary_operand(tensor: gs.Tensor, inside: set[str], graph_inputs: set[str]) -> bool:
    """Inside the stretch, a scalar constant, or a constant vector over the channels (the last axis)."""
    if tensor.name in inside:
        return True
    value = _constant(tensor, graph_inputs)
    return value is not None and (value.size == 1 or value.ndim == 1)


def _channel_vector(values: np.ndarray) -> np.ndarray:
    """A constant over the last axis of a channels-last tensor, as ``[C, 1, 1]`` for channels-first."""
    return values.reshape(-1, 1, 1) if values.size > 1 else values


class _Rewriter:
    def __init__(self, graph: gs.Graph, opset: int, graph_inputs: set[str]):
        self.graph, self.opset, self.graph_inputs = graph, opset, graph_inputs
        self.taken = set(graph.tensors())
        self.layer_norm_nodes: list[str] = []  # every node a LayerNormalization became: kept in fp32

    def name(self, stem: str) -> str:
        name, index = stem, 0
        while name in self.taken:
            index += 1
            name = f"{stem}_{index}"
        self.taken.add(name)
        return name

    def constant(self, stem: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.name(stem), np.ascontiguousarray(values))

    def node(self, op: str, stem: str, inputs: list[gs.Tensor], attrs: dict | None = None) -> gs.Variable:
        output = gs.Variable(self.name(f"{stem}_output"), dtype=np.float32)
        self.graph.nodes.append(gs.Node(op, self.name(stem), attrs or {}, inputs, [output]))
        self.layer_norm_nodes.append(self.graph.nodes[-1].name)  # the only nodes made: a normalisation's
        return output

    def mean_over_channels(self, x: gs.Tensor, stem: str) -> gs.Variable:
        if self.opset >= 18:
            return self.node("ReduceMean", stem, [x, self.constant(f"{stem}_axes", np.array([1], np.int64))],
                             {"keepdims": 1})
        return self.node("ReduceMean", stem, [x], {"axes": [1], "keepdims": 1})

    def convert(self, node: gs.Node) -> None:
        if node.op == "MatMul":
            weight = _constant(node.inputs[1], self.graph_inputs)
            assert weight is not None
            node.op = "Conv"
            node.inputs[1] = self.constant(f"{node.name}_weight", weight.T.reshape(*weight.T.shape, 1, 1))
            node.attrs = {"kernel_shape": [1, 1]}
        elif node.op in BINARY:
            for index, tensor in enumerate(node.inputs):
                value = _constant(tensor, self.graph_inputs)
                if value is not None and value.ndim == 1 and value.size > 1:
                    node.inputs[index] = self.constant(f"{tensor.name}_channels_first", _channel_vector(value))
        elif node.op == "LayerNormalization":
            self.decompose_layer_norm(node)
        for output in node.outputs:
            output.shape = None  # its dims are channels-first now

    def decompose_layer_norm(self, node: gs.Node) -> None:
        x, stem = node.inputs[0], node.name
        scale = _constant(node.inputs[1], self.graph_inputs)
        bias = _constant(node.inputs[2], self.graph_inputs) if len(node.inputs) > 2 else None
        assert scale is not None
        epsilon = np.array(node.attrs.get("epsilon", 1e-5), np.float32)
        mean = self.mean_over_channels(x, f"{stem}/mean")
        centred = self.node("Sub", f"{stem}/centred", [x, mean])
        variance = self.mean_over_channels(self.node("Mul", f"{stem}/square", [centred, centred]), f"{stem}/variance")
        deviation = self.node("Sqrt", f"{stem}/deviation",
                              [self.node("Add", f"{stem}/plus_epsilon", [variance, self.constant(f"{stem}_eps", epsilon)])])
        normalised = self.node("Div", f"{stem}/normalised", [centred, deviation])
        scaled = self.node("Mul", f"{stem}/scaled", [normalised, self.constant(f"{stem}_scale", _channel_vector(scale))])
        inputs = [scaled] + ([self.constant(f"{stem}_bias", _channel_vector(bias))] if bias is not None else [])
        node.op, node.attrs, node.inputs = ("Add", {}, inputs) if bias is not None else ("Identity", {}, [scaled])
        self.layer_norm_nodes.append(node.name)


def _bypass(transpose: gs.Node) -> None:
    """Readers of the transpose's output read its input instead."""
    reroute_readers(transpose.outputs[0], transpose.inputs[0])
    transpose.outputs.clear()
    transpose.inputs.clear()


def _exit_bypass(transpose: gs.Node, outputs: set[str]) -> None:
    """The exit's output keeps its name (it may be a graph output): the node before the exit writes it."""
    source, result = transpose.inputs[0], transpose.outputs[0]
    producer = source.inputs[0]
    if len(source.outputs) == 1 and source.name not in outputs:
        swap(producer.outputs, source, result)
        transpose.outputs.clear()
        transpose.inputs.clear()
    else:
        transpose.op, transpose.attrs = "Identity", {}


def sink_transposes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[SunkTranspose], str | None]:
    """The graph with every convertible channels-last stretch made channels-first (``model`` untouched, and
    returned as it is when nothing changes); what changed; why nothing did, or None."""
    edit = GraphEdit(model)
    if edit.opset < 17:
        return model, [], "opset below 17: no LayerNormalization to recognise"
    graph, outputs = edit.graph, edit.outputs
    rewriter = _Rewriter(graph, edit.opset, edit.inputs)
    sunk = []
    for entry in [n for n in graph.nodes if n.op == "Transpose" and n.attrs.get("perm") == TO_CHANNELS_LAST]:
        if not entry.outputs:
            continue
        stretch = _Stretch(entry, outputs, rewriter.graph_inputs)
        if not stretch.collect():
            continue
        for node in stretch.nodes:
            rewriter.convert(node)
        sunk.append(SunkTranspose(entry.name, [e.name for e in stretch.exits], [n.name for n in stretch.nodes]))
        _bypass(entry)
        for exit_node in stretch.exits:
            _exit_bypass(exit_node, outputs)
    if not sunk:
        return model, [], "no channels-last stretch between layout transposes that converts"
    graph.cleanup().toposort()
    rewritten = edit.exported()
    if rewriter.layer_norm_nodes:
        keep_in_fp32(rewritten, rewriter.layer_norm_nodes)
    return rewritten, sunk, None
