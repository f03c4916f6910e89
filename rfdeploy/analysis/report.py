"""``analyze``: every layer's receptive field, and whether it still adds context at a given input size.

Definitions (after the Receptive Field Analysis toolbox, Richter et al. 2021, "Should You Go Deeper?"):

- A layer's *receptive field* is the input window one of its output positions depends on; where paths
  meet, a position sees as far as its farthest input path. A searched layer reaches as far as its widest
  dilation branch.
- A layer is *unproductive* at input size ``n`` when the receptive field of its *input* already exceeds
  ``n`` (strictly, in every spatial dim): each input position already sees more than the whole input, so
  the layer cannot add novel context.
- A *border* layer is a productive layer whose own receptive field exceeds ``n`` in every dim: the last
  that adds context on its path. The network's *border layer* is the first of them in execution order;
  every layer fed (only) from past the border is unproductive.
- Global layers (global pooling, dense layers on flattened maps, attention) see everything by design;
  they are never counted unproductive.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import torch
from torch import nn

from rfdeploy.analysis import receptive_field as rf
from rfdeploy.analysis.ops import Global, Input, Layer, Pointwise, Reduce, Resample, Reshape, Step, Window
from rfdeploy.analysis.receptive_field import Field, Size, Stride
from rfdeploy.analysis.trace import trace
from rfdeploy.errors import RFDeployError

INPUT = "input"


@dataclass(frozen=True)
class LayerRF:
    name: str
    op: str
    kernel: Size | None
    stride: Stride | None  # fractional: an adaptive pool to a size that does not divide its input
    dilation: Size | None  # of the widest branch
    rates: tuple[Size, ...] | None  # every branch, for a searched layer
    rf: Size  # of the layer's output
    input_rf: Size
    jump: tuple[Fraction, ...]  # cumulative stride of the output, in input pixels
    feature_map: Size  # spatial size of the output
    flops: int
    inputs: tuple[str, ...]  # the layers / joins / "input" that feed it
    is_global: bool
    productive: bool
    border: bool
    order: int  # position in the traced graph's execution order


@dataclass(frozen=True)
class JoinRF:
    """Where paths meet (add, cat, mul): drawn in the graph, not judged."""

    name: str
    op: str
    inputs: tuple[str, ...]
    rf: Size
    order: int


@dataclass
class RFReport:
    input_size: Size
    receptive_field: Size
    layers: list[LayerRF]
    joins: list[JoinRF] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tracer: str = "torch.fx"

    @property
    def border_layer(self) -> str | None:
        return next((layer.name for layer in self.layers if layer.border), None)

    @property
    def unproductive(self) -> list[LayerRF]:
        return [layer for layer in self.layers if not layer.productive]

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def unproductive_flops_share(self) -> float:
        total = self.total_flops
        return sum(layer.flops for layer in self.unproductive) / total if total else 0.0

    def to_json(self) -> dict:
        """A JSON-able dict: the summary, then one entry per layer."""
        return {
            "input_size": list(self.input_size),
            "receptive_field": list(self.receptive_field),
            "border_layer": self.border_layer,
            "unproductive_layers": len(self.unproductive),
            "unproductive_flops_share": round(self.unproductive_flops_share, 6),
            "total_flops": self.total_flops,
            "layers": [_layer_json(layer) for layer in self.layers],
            "joins": [asdict(join) | {"rf": list(join.rf)} for join in self.joins],
            "notes": list(self.notes),
            "tracer": self.tracer,
        }


def _layer_json(layer: LayerRF) -> dict:
    def listed(values):
        return None if values is None else [_number(v) for v in values]

    return {
        "name": layer.name,
        "op": layer.op,
        "kernel": listed(layer.kernel),
        "stride": listed(layer.stride),
        "dilation": listed(layer.dilation),
        "rates": None if layer.rates is None else [list(rate) for rate in layer.rates],
        "rf": list(layer.rf),
        "input_rf": list(layer.input_rf),
        "jump": listed(layer.jump),
        "feature_map": list(layer.feature_map),
        "flops": layer.flops,
        "inputs": list(layer.inputs),
        "global": layer.is_global,
        "productive": layer.productive,
        "border": layer.border,
    }


def _number(value):
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    return value


def analyze(
    model: nn.Module,
    input_size: Sequence[int],
    dilations: Mapping[str, Sequence[Sequence[int] | int]] | None = None,
    in_channels: int | None = None,
) -> RFReport:
    """The receptive-field report of ``model`` at spatial ``input_size`` (``(H, W)``, or ``(T,)`` for 1-D).

    ``dilations`` maps a conv's module name to its searched branch rates (each a dilation per spatial dim),
    overriding the conv's own dilation: a structure file alone is enough, no weights are needed.
    """
    input_size = tuple(int(n) for n in input_size)
    if not input_size or min(input_size) < 1:
        raise RFDeployError(f"input size {list(input_size)} must be positive, one number per spatial dim")
    channels = in_channels or _input_channels(model)
    was_training = model.training
    model.eval()
    try:
        traced = trace(model, channels, input_size)
    finally:
        model.train(was_training)
    walk = _Walk(input_size, traced.shape_size, dict(dilations or {}), traced.notes)
    return walk.run(traced.steps, traced.tracer)


def receptive_field_report(model: nn.Module, input_shape: Sequence[int],
                           dilations: Mapping[str, Sequence[Sequence[int] | int]] | None = None) -> dict:
    """``analyze(...).to_json()`` at a full ``(N, C, *space)`` input shape, for another command's report:
    a model the analysis cannot trace gives ``{"error": "..."}`` instead of failing that command."""
    try:
        return analyze(model, tuple(input_shape[2:]), dilations, in_channels=int(input_shape[1])).to_json()
    except RFDeployError as error:
        return {"error": str(error)}


def _input_channels(model: nn.Module) -> int:
    """The input channels of the model's first conv or dense layer (in definition order)."""
    for module in model.modules():
        for attribute in ("in_channels", "in_features"):
            if isinstance(getattr(module, attribute, None), int):
                return getattr(module, attribute)
        weight = getattr(module, "weight", None)  # a searched conv keeps only its weight
        if isinstance(weight, torch.Tensor) and weight.dim() >= 3:
            return int(weight.shape[1]) * int(getattr(module, "groups", 1))
    raise RFDeployError(f"{type(model).__name__}: no conv or linear layer to read the input channels from")


SEARCHED_OP = "SearchedConv"  # rfdeploy.loader.searched_conv's class, as the searched model holds it


class _Walk:
    """Fields through the steps in execution order, then each layer judged against the input size."""

    def __init__(self, input_size: Size, shape_size: Size, dilations: dict, notes: list[str]):
        self.input_size = input_size
        self.shape_size = shape_size  # where the model cannot run at input_size, shapes come from here
        self.dilations = dilations
        self.fields: dict[str, Field] = {}
        self.sources: dict[str, tuple[str, ...]] = {}  # the drawn nodes that feed each step's tensor
        self.layers: list[LayerRF] = []
        self.joins: list[JoinRF] = []
        self.notes: list[str] = list(notes)
        self.used_names: set[str] = set()
        self.calls: Counter[str] = Counter()

    def run(self, steps: list[Step], tracer: str) -> RFReport:
        for order, step in enumerate(steps):
            self.visit(step, order)
        unmatched = sorted(set(self.dilations) - self.used_names)
        if unmatched:
            self.note(f"{len(unmatched)} searched layer(s) not in the model, e.g. '{unmatched[0]}'")
        spatial = [f.size for f in self.fields.values() if not f.is_global]
        network = tuple(math.ceil(max(sizes)) for sizes in zip(*spatial)) if spatial else self.input_size
        return RFReport(self.input_size, network, self.layers, self.joins, self.notes, tracer)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def visit(self, step: Step, order: int) -> None:
        if step.effect is None:
            return
        if isinstance(step.effect, Input):
            self.fields[step.id] = Field.of_input(self.input_size).with_extent(self.shape_size)
            self.sources[step.id] = (INPUT,)
            return
        inputs = [name for name in step.inputs if name in self.fields]
        if not inputs:  # computed from constants only
            return
        for text in step.notes:
            self.note(text)
        merged = rf.merge([self.fields[name] for name in inputs])
        if merged.jumps_disagree and not isinstance(step.effect, Global):
            self.note(f"{step.id}: paths on different grids meet; the coarser jump is kept")
        if merged.pooled_context_ignored:
            self.note(f"{step.id}: a globally pooled context (e.g. squeeze-excitation) is broadcast onto a "
                      "spatial path; the receptive field follows the spatial path")
        feeding = tuple(dict.fromkeys(s for name in inputs for s in self.sources[name]))
        layer = self.searched(step.layer) if step.layer is not None else None
        out = self.apply(step, layer, merged.field)
        self.fields[step.id] = out
        if layer is not None:
            self.sources[step.id] = (self.add_layer(layer, merged.field, out, feeding, order),)
        elif len(feeding) > 1 and len(inputs) > 1 and isinstance(step.effect, Pointwise):
            self.joins.append(JoinRF(step.id, step.op, feeding, out.pixels, order))
            self.sources[step.id] = (step.id,)
        else:
            self.sources[step.id] = feeding

    def searched(self, layer: Layer) -> Layer:
        """The layer with its searched rates, where ``dilations`` names it."""
        rates = self.dilations.get(layer.name)
        if rates is None or layer.kernel is None:
            return layer
        self.used_names.add(layer.name)
        dims = len(layer.kernel)
        per_dim = []
        for rate in rates:
            rate = (int(rate),) * dims if isinstance(rate, int) else tuple(int(r) for r in rate)
            rate = rate * dims if len(rate) == 1 else rate
            if len(rate) != dims or min(rate) < 1:
                raise RFDeployError(f"layer '{layer.name}': searched rate {list(rate)} does not fit its "
                                    f"{dims}-d kernel {list(layer.kernel)}")
            per_dim.append(rate)
        if not per_dim:
            raise RFDeployError(f"layer '{layer.name}': no searched rates given")
        # the searched model as a checkpoint builds it: one SearchedConv running every branch
        return Layer(layer.name, SEARCHED_OP, layer.flops * len(per_dim), layer.kernel, layer.stride, tuple(per_dim))

    def apply(self, step: Step, layer: Layer | None, field_in: Field) -> Field:
        effect = step.effect
        if isinstance(effect, Window):
            rates = list(layer.rates if layer is not None and layer.rates else effect.rates)
            move = rf.transposed_window if effect.transposed else rf.window
            return move(field_in, effect.kernel, effect.stride, rates, effect.extent)
        if isinstance(effect, Resample):
            return rf.resample(field_in, effect.scale, effect.taps, effect.extent)
        if isinstance(effect, Global):
            return field_in if field_in.is_global and effect.pooled else Field.everything(self.input_size, effect.pooled)
        if field_in.is_global or isinstance(effect, Reshape):
            return field_in
        if isinstance(effect, Reduce):
            axes = spatial_axes(field_in.extent, effect.input_shape)
            if effect.dims is None or axes is None or set(effect.dims) & axes:
                return Field.everything(self.input_size, pooled=True)
            return field_in
        if isinstance(effect, Pointwise):
            return self.pointwise(step, effect, field_in)
        raise AssertionError(f"unhandled effect {effect!r}")

    def pointwise(self, step: Step, effect: Pointwise, field_in: Field) -> Field:
        if effect.dense_input is not None:
            axes = spatial_axes(field_in.extent, effect.dense_input)
            last = len(effect.dense_input) - 1
            return Field.everything(self.input_size) if axes is None or last in axes else field_in
        if effect.resizes and len(effect.shape) == len(field_in.extent) + 2:
            return field_in.with_extent(effect.shape[2:])
        if (effect.shape != effect.input_shape and spatial_axes(field_in.extent, effect.input_shape) is not None
                and spatial_axes(field_in.extent, effect.shape) is None):
            self.note(f"{step.id} ({step.op}) changes the spatial size; its receptive field is carried over")
        return field_in

    def add_layer(self, layer: Layer, field_in: Field, out: Field, feeding: tuple[str, ...], order: int) -> str:
        self.calls[layer.name] += 1
        calls = self.calls[layer.name]
        name = layer.name if calls == 1 else f"{layer.name}#{calls}"  # a module called more than once
        is_global = out.is_global
        sees_all_in = not field_in.is_global and _exceeds(field_in.pixels, self.input_size)
        sees_all_out = not is_global and _exceeds(out.pixels, self.input_size)
        productive = is_global or not sees_all_in
        self.layers.append(LayerRF(
            name=name,
            op=layer.op,
            kernel=layer.kernel,
            stride=layer.stride,
            dilation=rf.widest(layer.kernel, list(layer.rates)) if layer.kernel and layer.rates else None,
            rates=layer.rates if layer.rates and len(layer.rates) > 1 else None,
            rf=out.pixels,
            input_rf=field_in.pixels,
            jump=out.jump,
            feature_map=out.extent,
            flops=int(layer.flops),
            inputs=feeding,
            is_global=is_global,
            productive=productive,
            border=productive and sees_all_out,
            order=order,
        ))
        return name


def _exceeds(size: Size, input_size: Size) -> bool:
    return all(r > n for r, n in zip(size, input_size))


def spatial_axes(extent: Size, shape: Size) -> set[int] | None:
    """The axes of ``shape`` that hold the feature map's positions (``None``: not recognisable).

    The positions show as the spatial sizes in order (``N, C, H, W`` or channels-last ``N, H, W, C``), or as
    one axis of ``H * W`` positions (tokens, ``N, HW, C``); the last match wins, as layouts end in space.
    """
    if not extent or all(size == 1 for size in extent):
        return set()
    width = len(extent)
    for start in range(len(shape) - width, 0, -1):
        if tuple(shape[start:start + width]) == tuple(extent):
            return set(range(start, start + width))
    positions = math.prod(extent)
    for axis in range(len(shape) - 1, 0, -1):
        if shape[axis] == positions:
            return {axis}
    return None
