"""The compiler: every searched conv of a model through the pass pipeline, into plain modules."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import onnx
from torch import nn

from rfdeploy.compiler.ir import ConvIR, NotApplicable, from_searched, to_module
from rfdeploy.compiler.passes.base import Pass, Preserves, check_order
from rfdeploy.compiler.passes.choose_lowering import MODES, choose_lowering
from rfdeploy.compiler.passes.drop_zero_branches import drop_zero_branches
from rfdeploy.compiler.passes.fold_alphas import fold_alphas
from rfdeploy.compiler.passes.fold_batchnorm import fold_batchnorm
from rfdeploy.compiler.passes.fold_channel_scales import fold_channel_scales
from rfdeploy.compiler.passes.keep_strongest_branch import keep_strongest_branch
from rfdeploy.compiler.passes.lower_multi import lower_multi
from rfdeploy.compiler.passes.lower_single import lower_single
from rfdeploy.compiler.passes.merge_biases import merge_biases
from rfdeploy.compiler.passes.merge_equal_rates import merge_equal_rates
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
# On the whole model once every searched conv is lowered: nn.Module -> (nn.Module, changed, note).
MODEL_PIPELINE = (
    Pass("fold_batchnorm", fold_batchnorm, Preserves.ROUNDING),
)
# On the exported ONNX graph, before it is verified: onnx.ModelProto -> (onnx.ModelProto, changed, note).
GRAPH_PIPELINE = (
    Pass("fold_channel_scales", fold_channel_scales, Preserves.ROUNDING),
)
# Not in the compiler's pipelines: the single-branch cost reference of ``bench --with-plain``.
KEEP_STRONGEST_BRANCH = Pass("keep_strongest_branch", keep_strongest_branch, Preserves.NOTHING)
check_order(LAYER_PIPELINE)
check_order(MODEL_PIPELINE)
check_order(GRAPH_PIPELINE)

AfterPass = Callable[[Pass, ConvIR, ConvIR], None]


@dataclass
class LayerReport:
    name: str
    kernel_size: list[int]
    rates: list[list[int]]
    alphas: list[float]
    lowering: str
    branches_after: int
    notes: list[str] = field(default_factory=list)


@dataclass
class CompileResult:
    model: nn.Module
    layers: list[LayerReport]
    folded_batchnorms: list[str]
    batchnorm_note: str | None


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


ModelPassResults = dict[str, tuple[list[Any], str | None]]
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
                  choices: dict[str, str] | None = None) -> CompileResult:
    """A copy of ``searched`` with every ``SearchedConv`` lowered to plain convs (BatchNorms folded)."""
    model = copy.deepcopy(searched).eval()
    reports = []
    for name, layer in searched_layers(model):
        ir = from_searched(name, layer)
        lowered = lower_layer(ir, mode, choices)
        set_submodule(model, name, to_module(lowered))
        reports.append(LayerReport(
            name=name,
            kernel_size=list(layer.kernel_size),
            rates=[list(r) for r in layer.rates],
            alphas=[round(b.alpha, 6) for b in ir.branches],
            lowering=lowered.lowering or "plain",
            branches_after=len(lowered.branches),
            notes=list(lowered.notes),
        ))
    folded: list[str] = []
    bn_note = None
    if fold_bn:
        model, results = run_model_passes(model)
        folded, bn_note = results["fold_batchnorm"]
    return CompileResult(model, reports, folded, bn_note)
