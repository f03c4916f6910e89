"""The compiler: every searched conv of a model through the pass pipeline, into plain modules."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from rfdeploy.compiler.ir import ConvIR, NotApplicable, from_searched, to_module
from rfdeploy.compiler.passes.choose_lowering import choose_lowering
from rfdeploy.compiler.passes.drop_zero_branches import drop_zero_branches
from rfdeploy.compiler.passes.fold_alphas import fold_alphas
from rfdeploy.compiler.passes.fold_batchnorm import fold_batchnorm
from rfdeploy.compiler.passes.merge_biases import merge_biases
from rfdeploy.compiler.passes.merge_equal_rates import merge_equal_rates
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.modules import set_submodule

PIPELINE = (merge_equal_rates, drop_zero_branches, fold_alphas, merge_biases)


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


def lower_layer(ir: ConvIR, mode: str = "auto", choices: dict[str, str] | None = None) -> ConvIR:
    """The pass pipeline for one layer; ``choices`` (from measurement) overrides ``mode`` per layer."""
    for compiler_pass in PIPELINE:
        try:
            ir = compiler_pass(ir)
        except NotApplicable as reason:
            ir = ir.noted(f"{compiler_pass.__name__} not applied: {reason}")
    return choose_lowering(ir, (choices or {}).get(ir.name, mode))


def searched_layers(model: nn.Module) -> list[tuple[str, SearchedConv]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SearchedConv)]


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
        model, folded, bn_note = fold_batchnorm(model)
    return CompileResult(model, reports, folded, bn_note)
