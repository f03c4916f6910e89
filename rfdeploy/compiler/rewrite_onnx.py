"""The compiler on an ONNX graph: each searched conv found in it goes through the same pass pipeline as
on the PyTorch path (``lower_layer``, ``to_module``, ``fold_batchnorm``) and its nodes are replaced by the
plain convs it lowers to. Every other node stays as it is, in its place; only the nodes that computed
the removed ones' alphas (and nothing else) go with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from rfdeploy.compiler.emit_onnx import Namer, emit
from rfdeploy.compiler.graph_edit import GraphEdit, share_equal_constants
from rfdeploy.compiler.ir import NotApplicable, to_module, to_shared_module
from rfdeploy.compiler.onnx_match import BatchNormParams, GraphSearchedConv, find_searched_convs
from rfdeploy.compiler.pipeline import (
    LayerReport,
    LayoutChooser,
    ModelPassResults,
    lower_layer,
    run_graph_pipelines,
    run_model_passes,
    share_weights,
)

_BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


@dataclass
class LeftAlone:
    name: str
    nodes: list[str]
    reason: str


@dataclass
class GraphCompileResult:
    model: onnx.ModelProto
    layers: list[LayerReport]
    left_alone: list[LeftAlone]
    graph_passes: ModelPassResults = field(default_factory=dict)
    shared_bytes: int = 0  # equal folded weights written once (``share_equal_constants``)


@dataclass
class _Replacement:
    anchor: gs.Node  # the removed node that wrote the layer's output: the new nodes take its place
    removed: list[gs.Node]
    added: list[gs.Node]


def namer(taken: set[str], prefix: str) -> Namer:
    def name(stem: str) -> str:
        candidate, index = f"{prefix}/{stem}", 0
        while candidate in taken:
            index += 1
            candidate = f"{prefix}/{stem}_{index}"
        taken.add(candidate)
        return candidate
    return name


def _batchnorm_module(params: BatchNormParams, spatial_dims: int, dtype: torch.dtype) -> nn.Module:
    norm = _BATCHNORMS[spatial_dims](len(params.mean), eps=params.epsilon).eval()
    with torch.no_grad():
        for target, values in ((norm.weight, params.scale), (norm.bias, params.bias),
                               (norm.running_mean, params.mean), (norm.running_var, params.var)):
            assert target is not None
            target.copy_(torch.from_numpy(values).to(dtype))
    return norm


def _fold(module: nn.Module, layer: GraphSearchedConv) -> tuple[nn.Module, bool]:
    """``module`` with the BatchNorm after the sum folded in by the PyTorch path's model passes, where it can."""
    if layer.batchnorm is None:
        return module, False
    weight = layer.ir.branches[0].weight
    pair = nn.Sequential(module, _batchnorm_module(layer.batchnorm, weight.dim() - 2, weight.dtype)).eval()
    folded, _ = run_model_passes(pair)[1]["fold_batchnorm"]
    return pair[0], bool(folded)


def _detach(nodes: list[gs.Node]) -> list[gs.Tensor]:
    """Cut ``nodes`` out of the graph; the tensors they read."""
    read = [tensor for node in nodes for tensor in node.inputs]
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()
    return read


def _now_dead(read: list[gs.Tensor], graph_outputs: set[str]) -> list[gs.Node]:
    """Producers of ``read`` that nothing reads any more (the alpha arithmetic), transitively."""
    dead: list[gs.Node] = []
    pending = list(read)
    while pending:
        tensor = pending.pop()
        for node in list(tensor.inputs):
            if any(out.outputs or out.name in graph_outputs for out in node.outputs):
                continue
            pending += _detach([node])
            dead.append(node)
    return dead


def _replace(graph: gs.Graph, layer: GraphSearchedConv, module: nn.Module, folded: bool,
             taken: set[str]) -> _Replacement:
    anchor = layer.batchnorm.node if folded and layer.batchnorm else layer.output.inputs[0]
    output = anchor.outputs[0]
    removed = [*layer.nodes, *([anchor] if folded else [])]
    read = _detach(removed)
    added = emit(module, layer.input, output, namer(taken, f"/{layer.ir.name}/rfdeploy"))
    return _Replacement(anchor, removed + _now_dead(read, {t.name for t in graph.outputs}), added)


def _report(layer: GraphSearchedConv, lowered, replacement: _Replacement, folded: bool) -> LayerReport:
    return LayerReport.of(layer.ir, lowered, nodes=[node.name for node in replacement.removed], input=layer.input.name,
                          output=replacement.added[-1].outputs[0].name,
                          batchnorm=layer.batchnorm.node.name if folded and layer.batchnorm else None)


def _reordered(nodes: list[gs.Node], replacements: list[_Replacement]) -> list[gs.Node]:
    """The graph's nodes in their order, each replacement's new nodes where its anchor was."""
    removed = {id(node) for r in replacements for node in r.removed}
    added = {id(r.anchor): r.added for r in replacements}
    ordered: list[gs.Node] = []
    for node in nodes:
        ordered += added.get(id(node), [])
        if id(node) not in removed:
            ordered.append(node)
    return ordered


WEIGHTS = ("folded", "shared")


def compile_graph(model: onnx.ModelProto, mode: str = "auto", choices: dict[str, str] | None = None,
                  layout: LayoutChooser | None = None, weights: str = "folded") -> GraphCompileResult:
    """Every searched conv of ``model`` lowered in place (``LAYER_PIPELINE``, the BatchNorm after it folded);
    where any was, the graph pipelines too (``run_graph_pipelines``). ``weights="shared"`` keeps one weight per
    searched conv instead, each branch's alpha a scale after its conv (``to_shared_module``; its BatchNorm stays)."""
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights form {weights!r}")
    edit = GraphEdit(model)
    graph = edit.graph
    taken = {node.name for node in graph.nodes} | set(graph.tensors())
    layers, left_alone, replacements = [], [], []
    for layer in find_searched_convs(graph):
        lowered = share_weights(layer.ir) if weights == "shared" else lower_layer(layer.ir, mode, choices)
        try:
            module = to_shared_module(lowered) if weights == "shared" else to_module(lowered)
        except NotApplicable as reason:
            left_alone.append(LeftAlone(layer.ir.name, [node.name for node in layer.nodes], str(reason)))
            continue
        module, folded = _fold(module, layer) if weights == "folded" else (module, False)
        replacement = _replace(graph, layer, module, folded, taken)
        replacements.append(replacement)
        layers.append(_report(layer, lowered, replacement, folded))
    graph.nodes = _reordered(graph.nodes, replacements)
    shared = share_equal_constants([node for replacement in replacements for node in replacement.added])
    rewritten = edit.exported()
    if not layers:
        return GraphCompileResult(rewritten, layers, left_alone)
    rewritten, graph_passes, _ = run_graph_pipelines(rewritten, layout)
    return GraphCompileResult(rewritten, layers, left_alone, graph_passes, shared)
