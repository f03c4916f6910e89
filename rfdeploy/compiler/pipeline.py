"""The compiler: every searched conv and every involution of a model through its pass pipeline, into plain
modules."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import onnx
import torch
from torch import nn

from rfdeploy.compiler import involution_ir
from rfdeploy.compiler.involution_ir import InvolutionIR, from_involution
from rfdeploy.compiler.ir import ConvIR, NotApplicable, from_searched, to_module
from rfdeploy.compiler.passes.base import Pass, Preserves, check_order
from rfdeploy.compiler.passes.choose_aggregation import AUTO, choose_aggregation
from rfdeploy.compiler.passes.choose_lowering import MODES, choose_lowering
from rfdeploy.compiler.passes.drop_zero_branches import drop_zero_branches
from rfdeploy.compiler.passes.fold_alphas import fold_alphas
from rfdeploy.compiler.passes.fold_batchnorm import fold_batchnorm
from rfdeploy.compiler.passes.fold_channel_scales import fold_channel_scales
from rfdeploy.compiler.passes.fold_kernel_batchnorm import fold_kernel_batchnorm
from rfdeploy.compiler.passes.keep_strongest_branch import keep_strongest_branch
from rfdeploy.compiler.passes.lower_multi import lower_multi
from rfdeploy.compiler.passes.lower_single import lower_single
from rfdeploy.compiler.passes.merge_biases import merge_biases
from rfdeploy.compiler.passes.merge_equal_rates import merge_equal_rates
from rfdeploy.compiler.passes.sink_transposes import sink_transposes
from rfdeploy.loader.involution import involution_layers, involution_parts
from rfdeploy.loader.searched_conv import searched_layers
from rfdeploy.modules import set_submodule

# Per searched conv, ConvIR -> ConvIR, in this order (the README's pass table follows it).
LAYER_PIPELINE = (
    Pass("merge_equal_rates", merge_equal_rates, Preserves.ROUNDING),
    Pass("drop_zero_branches", drop_zero_branches, Preserves.EXACT),
    Pass("fold_alphas", fold_alphas, Preserves.ROUNDING),
    Pass("merge_biases", merge_biases, Preserves.ROUNDING, after=("fold_alphas",)),
    Pass("choose_lowering", choose_lowering, Preserves.ROUNDING, options=("mode",), chooses=(
        Pass("lower_single", lower_single, Preserves.ROUNDING),
        Pass("lower_multi", lower_multi, Preserves.EXACT),
    )),
)
# Per involution, InvolutionIR -> InvolutionIR, in this order.
INVOLUTION_PIPELINE = (
    Pass("fold_kernel_batchnorm", fold_kernel_batchnorm, Preserves.ROUNDING),
    Pass("choose_aggregation", choose_aggregation, Preserves.SUMMATION_ORDER,
         options=("aggregation", "output_positions")),
)
# On the whole model once every searched conv and involution is lowered: nn.Module -> (nn.Module, changed, note).
MODEL_PIPELINE = (
    Pass("fold_batchnorm", fold_batchnorm, Preserves.ROUNDING),
)
# On the exported ONNX graph, before it is verified: onnx.ModelProto -> (onnx.ModelProto, changed, note).
GRAPH_PIPELINE = (
    Pass("fold_channel_scales", fold_channel_scales, Preserves.ROUNDING),
)
# After GRAPH_PIPELINE, where measurement says so (``tuning.layout``): it speeds one backend up and slows
# another down.
SINK_TRANSPOSES = Pass("sink_transposes", sink_transposes, Preserves.ROUNDING)
# Not in the compiler's pipelines: the single-branch cost reference of ``bench --with-plain``.
KEEP_STRONGEST_BRANCH = Pass("keep_strongest_branch", keep_strongest_branch, Preserves.NOTHING)
check_order(LAYER_PIPELINE)
check_order(INVOLUTION_PIPELINE)
check_order(MODEL_PIPELINE)
check_order(GRAPH_PIPELINE)

AfterPass = Callable[[Pass, ConvIR, ConvIR], None]
ModelPassResults = dict[str, tuple[list[Any], str | None]]
# Chooses the graph's layout (``SINK_TRANSPOSES`` or not) by measurement: graph -> (graph kept, the record why).
LayoutChooser = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, dict]]
Exporter = Callable[[nn.Module], onnx.ModelProto]
AfterInvolutionPass = Callable[[Pass, InvolutionIR, InvolutionIR], None]


@dataclass
class LayerReport:
    """One searched conv as the compiler lowered it, from a model or from an ONNX graph (``nodes`` on: where
    in the graph it was and what replaced it)."""

    name: str
    kernel_size: list[int]
    rates: list[list[int]]
    alphas: list[float]
    lowering: str
    branches_after: int
    notes: list[str] = field(default_factory=list)
    nodes: list[str] | None = None  # the graph's nodes it replaced (its BatchNorm's too, where folded)
    input: str | None = None
    output: str | None = None
    batchnorm: str | None = None  # the folded BatchNormalization node

    @classmethod
    def of(cls, ir: ConvIR, lowered: ConvIR, **placed: Any) -> LayerReport:
        """The report of ``ir`` lowered to ``lowered``; ``placed``: its graph fields."""
        return cls(name=ir.name, kernel_size=list(ir.branches[0].kernel_size), rates=[list(b.rate) for b in ir.branches],
                   alphas=[round(b.alpha, 6) for b in ir.branches], lowering=lowered.lowering or "plain",
                   branches_after=len(lowered.branches), notes=list(lowered.notes), **placed)

    def to_json(self) -> dict:
        fields = asdict(self)
        return fields if self.nodes is not None else {k: v for k, v in fields.items() if k not in _GRAPH_FIELDS}


_GRAPH_FIELDS = ("nodes", "input", "output", "batchnorm")


@dataclass
class InvolutionReport:
    name: str
    channels: int
    kernel_size: int
    stride: int
    dilation: int
    groups: int
    lowering: str
    chosen_by: str  # "cost model", "measurement" or "forced"
    folded_batchnorm: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class CompileResult:
    model: nn.Module
    layers: list[LayerReport]
    folded_batchnorms: list[str]
    batchnorm_note: str | None
    involutions: list[InvolutionReport] = field(default_factory=list)
    onnx_model: onnx.ModelProto | None = None  # with an exporter: the exported graph after its pipelines
    graph_passes: ModelPassResults = field(default_factory=dict)
    layout: dict | None = None  # the layout chooser's record


def lower_layer(ir: ConvIR, mode: str = "auto", choices: dict[str, str] | None = None,
                after_each: AfterPass | None = None) -> ConvIR:
    """``LAYER_PIPELINE`` on one layer; ``choices`` (from measurement) overrides ``mode`` per layer.

    A pass that cannot keep this layer's outputs equal leaves it as it is, with a note saying why.
    ``after_each(pass, before, after)`` sees every step (the property tests check equality there).
    """
    mode = (choices or {}).get(ir.name, mode)
    if mode not in MODES:
        raise ValueError(f"unknown lowering mode {mode!r}")
    for step in LAYER_PIPELINE:
        before = ir
        try:
            ir = step.apply(ir, f"layer {ir.name}", mode=mode)
        except NotApplicable as reason:
            ir = ir.noted(f"{step.name} not applied: {reason}")
        if after_each is not None:
            after_each(step, before, ir)
    return ir


def share_weights(ir: ConvIR) -> ConvIR:
    """The exact passes of ``LAYER_PIPELINE`` alone (equal rates merged, zero alphas dropped), alphas kept apart for
    ``to_shared_module``: the shared-weight form of ``optimize --weights shared``."""
    for step in LAYER_PIPELINE[:2]:
        ir = step.apply(ir, f"layer {ir.name}")
    return ir.with_branches(ir.branches, lowering="shared")


def lower_involution(ir: InvolutionIR, aggregation: str = AUTO, output_positions: int | None = None,
                     after_each: AfterInvolutionPass | None = None) -> InvolutionIR:
    """``INVOLUTION_PIPELINE`` on one involution; ``aggregation`` is a lowering's name or ``auto``."""
    for step in INVOLUTION_PIPELINE:
        before = ir
        try:
            ir = step.apply(ir, f"involution {ir.name}", aggregation=aggregation, output_positions=output_positions)
        except NotApplicable as reason:
            ir = ir.noted(f"{step.name} not applied: {reason}")
        if after_each is not None:
            after_each(step, before, ir)
    return ir


def output_positions(model: nn.Module, names: list[str], input_shapes: list[tuple[int, ...]] | None) -> dict[str, int]:
    """Output positions (height x width) of each named module in one forward at ``input_shapes`` (none without)."""
    if not input_shapes or not names:
        return {}
    seen: dict[str, int] = {}

    def recorder(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, int(output.shape[-2] * output.shape[-1]))
        return record

    hooks = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        with torch.no_grad():
            model(*(torch.zeros(shape) for shape in input_shapes))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def lower_involutions(model: nn.Module, choices: dict[str, str] | None = None,
                      input_shapes: list[tuple[int, ...]] | None = None) -> list[InvolutionReport]:
    """Every involution of ``model`` replaced, in place, by its lowering: measured ``choices`` where given, else
    the cost model at the output size ``input_shapes`` gives it."""
    found = involution_layers(model)
    positions = output_positions(model, [name for name, _ in found], input_shapes)
    reports = []
    for name, module in found:
        parts = involution_parts(module)
        assert parts is not None
        chosen = (choices or {}).get(name, AUTO)
        lowered = lower_involution(from_involution(name, parts), chosen, positions.get(name))
        set_submodule(model, name, involution_ir.to_module(lowered))
        by = "cost model" if chosen == AUTO else "measurement" if choices and name in choices else "forced"
        reports.append(InvolutionReport(name, parts.channels, parts.kernel_size, parts.stride, parts.dilation,
                                        parts.groups, lowered.lowering or "unfold", by,
                                        parts.reduce_norm is not None and lowered.reduce_norm is None,
                                        list(lowered.notes)))
    return reports


Whole = TypeVar("Whole", nn.Module, onnx.ModelProto)


def _run_whole(subject: Whole, pipeline: Sequence[Pass], where: str) -> tuple[Whole, ModelPassResults]:
    results: ModelPassResults = {}
    for step in pipeline:
        subject, changed, note = step.apply(subject, where)
        results[step.name] = (changed, note)
    return subject, results


def run_model_passes(model: nn.Module, pipeline: Sequence[Pass] = MODEL_PIPELINE) -> tuple[nn.Module, ModelPassResults]:
    """Model-level passes in order. Each returns ``(model, what it changed, why it changed nothing or
    None)``; the last two are returned per pass name."""
    return _run_whole(model, pipeline, "the model")


def run_graph_passes(model: onnx.ModelProto,
                     pipeline: Sequence[Pass] = GRAPH_PIPELINE) -> tuple[onnx.ModelProto, ModelPassResults]:
    """Graph passes in order, as ``run_model_passes`` runs model passes: ``(graph, results per pass)``."""
    return _run_whole(model, pipeline, "the ONNX graph")


def graph_pass_report(results: ModelPassResults) -> dict[str, list[dict]]:
    """What each graph pass changed, for a report."""
    return {name: [asdict(item) for item in changed] for name, (changed, _) in results.items()}


def plain_model(searched: nn.Module) -> nn.Module:
    """The single-branch network of the same shape as ``searched``, BatchNorms folded: a cost reference."""
    return run_model_passes(searched, (KEEP_STRONGEST_BRANCH, *MODEL_PIPELINE))[0]


def compile_model(searched: nn.Module, mode: str = "auto", fold_bn: bool = True,
                  choices: dict[str, str] | None = None, input_shapes: list[tuple[int, ...]] | None = None,
                  export: Exporter | None = None, layout: LayoutChooser | None = None) -> CompileResult:
    """A copy of ``searched`` with every ``SearchedConv`` lowered to plain convs and every involution to plain
    ops (BatchNorms folded). ``choices`` (layer name -> lowering) come from measurement; ``input_shapes`` lets
    the involutions' cost model see their real sizes. With ``export``, the compiled model is exported and its
    graph goes through the graph pipelines too (``run_graph_pipelines``, ``layout`` choosing the layout)."""
    model = copy.deepcopy(searched).eval()
    involutions = lower_involutions(model, choices, input_shapes)
    reports = []
    for name, layer in searched_layers(model):
        ir = from_searched(name, layer)
        lowered = lower_layer(ir, mode, choices)
        set_submodule(model, name, to_module(lowered))
        reports.append(LayerReport.of(ir, lowered))
    folded: list[str] = []
    bn_note = None
    if fold_bn:
        model, results = run_model_passes(model)
        folded, bn_note = results["fold_batchnorm"]
    result = CompileResult(model, reports, folded, bn_note, involutions)
    if export is not None:
        result.onnx_model, result.graph_passes, result.layout = run_graph_pipelines(export(model), layout)
    return result


def run_graph_pipelines(model: onnx.ModelProto, layout: LayoutChooser | None = None
                        ) -> tuple[onnx.ModelProto, ModelPassResults, dict | None]:
    """``GRAPH_PIPELINE``, then the layout ``layout`` chooses (none: the graph's as it is)."""
    model, results = run_graph_passes(model)
    if layout is None:
        return model, results, None
    model, record = layout(model)
    return model, results, record
