"""Lowering chosen by measurement for the searched convs of an ONNX graph: each one timed as
``tuning.tune`` times a PyTorch model's layers, at the input shape ONNX shape inference gives it."""

from __future__ import annotations

import onnx
import torch

from rfdeploy.compiler.ir import ConvIR
from rfdeploy.compiler.onnx_match import find_searched_convs
from rfdeploy.loader.onnx_graph import import_graph
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.measure.timing import Tick
from rfdeploy.measure.verify_onnx import Shape, tensor_shapes
from rfdeploy.tuning.tune import TuningResult, tune_layers


def searched_conv(ir: ConvIR) -> SearchedConv:
    """The searched op an IR read from a graph stands for (its alphas are already normalised)."""
    first = ir.branches[0]
    return SearchedConv(first.weight, first.bias, torch.tensor([b.alpha for b in ir.branches]),
                        [b.rate for b in ir.branches], [b.padding for b in ir.branches], ir.stride, ir.groups,
                        ir.branch_relu, always_mix=True)


def tune_graph(model: onnx.ModelProto, input_shapes: list[Shape], backend: str,
               tick: Tick | None = None) -> TuningResult:
    """Per searched conv of ``model`` whose input shape is known, the lowering that ran fastest."""
    known = tensor_shapes(model, input_shapes)
    layers = [(found.ir.name, searched_conv(found.ir), known[found.input.name])
              for found in find_searched_convs(import_graph(model)) if found.input.name in known]
    return tune_layers(layers, backend, tick=tick)
