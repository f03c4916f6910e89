"""Lowering chosen by measurement: each searched layer's or involution's exact lowerings, timed alone on the
target backend.

A layer is timed at the input shape it really sees (captured by forward hooks on one run of the searched
model), as a one-layer model: exported to ONNX for onnxruntime / TensorRT, eager for torch. Its
candidates (``single``: one merged conv; ``multi``: one conv per branch; for an involution, each aggregation of
``choose_aggregation``) and, as a reference, the op as written (the search op; the involution with its
``nn.Unfold``) run interleaved after a warm-up, one run of each per round.

This is repeated in several fresh sessions, and each candidate keeps its best session (its lowest median): on
onnxruntime CPU a one-layer session was seen to stay up to 1.5x slower than an identical one for all of
its runs (we did not find why), which would otherwise decide close calls. ``measure.timing.decide`` then keeps
a candidate on speed only where its best session's rounds beat the others' by more than their spread;
otherwise the more accurate, then the simpler (``SIMPLEST_FIRST``).

At a lower precision the candidates are timed in it (at int8 each one-layer model, the searched op's
too, is quantized on the layer's own inputs from the calibration batches), and each one's SNR against the
searched op's fp32 output is measured as well: ``single`` sums the branches' weights before they are
rounded, ``multi`` rounds each branch's, so the two can quantize differently. No candidate more than
``SNR_MARGIN_DB`` worse than the most accurate is kept (``rfdeploy.precision``); the report says which rule
decided and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rfdeploy.backends import BACKENDS, cuda_available, make_runner
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.compiler import involution_ir
from rfdeploy.compiler.ir import from_searched, to_module
from rfdeploy.compiler.passes.choose_aggregation import CANDIDATES as AGGREGATIONS
from rfdeploy.compiler.pipeline import lower_involution, lower_layer, searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.involution import involution_layers, involution_parts
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.measure.timing import (
    Candidate,
    Tick,
    decide,
    device_name,
    opened_runners,
    summarize,
    timed_rounds,
    torch_settings,
)
from rfdeploy.measure.verify import InputSet, compare_on, finite_db, random_inputs
from rfdeploy.quantize.int8 import quantize_int8

CANDIDATES = ("single", "multi")
SIMPLEST_FIRST = ("single", "multi", "shifts", "rows", "taps")  # fewest ONNX nodes first
REFERENCE = "searched"
CALIBRATION_SETS = 4  # per layer, at int8


@dataclass
class LayerTiming:
    name: str
    input_shape: list[int]
    kernel_size: list[int]
    groups: int
    rates: list[list[int]]  # an involution: its dilation
    median_ms: dict[str, float]  # per candidate lowering, and the searched op as a reference: best session
    session_medians_ms: dict[str, list[float]]
    ratio_to_searched: dict[str, float]  # per candidate: its median_ms / the searched op's
    chosen: str
    op: str = "searched conv"  # or "involution"
    precision: str = "fp32"
    snr_db: dict[str, float | None] | None = None  # below fp32: per candidate, against the op as written in fp32
    why: str = "fastest"
    decided_by: str = "speed"  # the rule that decided (``measure.timing.decide``)
    spread_ms: dict[str, float] = field(default_factory=dict)  # interquartile range of the best session's rounds


@dataclass
class TuningResult:
    backend: str
    device: str
    device_name: str
    threads: int
    warmup: int
    iters: int
    sessions: int
    layers: list[LayerTiming] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def choices(self) -> dict[str, str]:
        """Layer name -> the measured fastest lowering, for ``compile_model(..., choices=)``."""
        return {layer.name: layer.chosen for layer in self.layers if layer.chosen in CANDIDATES + AGGREGATIONS}

    def to_json(self) -> dict:
        return asdict(self)


UNTUNABLE = {"torch-compile": "compiling each candidate of each layer would take minutes per layer; "
                              "tune on torch (the same convolution kernels, eager) instead"}


def parse_target(target: str, precision: str = "fp32") -> tuple[str, str]:
    """``BACKEND[:DEVICE]`` -> (backend, device); a GPU-only backend defaults to CUDA."""
    backend, _, device = target.partition(":")
    if backend not in BACKENDS:
        raise RFDeployError(f"--tune: unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend in UNTUNABLE:
        raise RFDeployError(f"--tune {backend}: not supported: {UNTUNABLE[backend]}")
    device = device or BACKENDS[backend].devices[0]
    if device not in BACKENDS[backend].devices:  # said in --tune's own terms, not bench's --device
        raise RFDeployError(f"--tune {target}: the {backend} backend runs on {', '.join(BACKENDS[backend].devices)}"
                            f" only: give --tune {backend}:{BACKENDS[backend].devices[0]}")
    try:
        BACKENDS[backend].require(device, precision)  # a missing package first, named as `rfdeploy build` names it
    except RFDeployError as error:
        raise RFDeployError(f"--tune {target}: {error}") from None
    if device == "cuda" and not cuda_available():  # export and optimize have no --device to blame
        raise RFDeployError(f"--tune {target}: it runs on a CUDA GPU, and PyTorch sees none on this machine")
    return backend, device


def tunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Searched convs and involutions: the layers with lowerings to choose from."""
    return [*searched_layers(model), *involution_layers(model)]


def layer_inputs(searched: nn.Module, input_sets: list[list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Each tunable layer's input in a forward of the whole model on each input set."""
    seen: dict[str, list[torch.Tensor]] = {}

    def recorder(name: str):
        def record(module: nn.Module, args: tuple) -> None:  # returns None: the inputs stay as they are
            seen.setdefault(name, []).append(args[0].detach().clone())
        return record

    hooks = [layer.register_forward_pre_hook(recorder(name)) for name, layer in tunable_layers(searched)]
    try:
        with torch.no_grad():
            for inputs in input_sets:
                searched(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def layer_input_shapes(searched: nn.Module, input_shapes: list[tuple[int, ...]], seed: int = 0) -> dict[str, tuple]:
    """The shape each tunable layer's input has in one forward of the whole model."""
    seen = layer_inputs(searched, [random_inputs(input_shapes, seed)])
    return {name: tuple(tensors[0].shape) for name, tensors in seen.items()}


def candidates(name: str, layer: nn.Module) -> dict[str, nn.Module]:
    """Each distinct exact lowering of the layer (one entry when ``single`` cannot apply)."""
    parts = involution_parts(layer)
    if parts is not None:
        involution = involution_ir.from_involution(name, parts)
        return {aggregation: involution_ir.to_module(lower_involution(involution, aggregation))
                for aggregation in AGGREGATIONS}
    assert isinstance(layer, SearchedConv)
    ir = from_searched(name, layer)
    lowered = {mode: lower_layer(ir, mode) for mode in CANDIDATES}
    distinct: dict[str, nn.Module] = {}
    for mode, result in lowered.items():
        if result.lowering == mode:
            distinct[mode] = to_module(result)
    return distinct


def prepared(modules: dict[str, nn.Module], example: list[torch.Tensor], precision: str,
             calibration: list[torch.Tensor], backend: str) -> dict[str, Candidate]:
    """At int8, each module exported and quantized on the layer's own inputs, in the int8 format of the backend
    that times it; else the modules as they are."""
    if precision != "int8":
        return {label: Candidate(module) for label, module in modules.items()}
    sets = [InputSet(f"layer input {i}", (tensor,)) for i, tensor in enumerate(calibration)]
    activations = BACKENDS[backend].int8_activations
    return {label: Candidate(module, quantize_int8(export_onnx(module, example), sets, activations=activations))
            for label, module in modules.items()}


def session_rounds(candidates: dict[str, Candidate], example: list[torch.Tensor], backend: str, device: str,
                   threads: int, warmup: int, iters: int, precision: str = "fp32") -> dict[str, list[float]]:
    """Milliseconds of each candidate per round, timed interleaved in fresh runners (sessions)."""
    with opened_runners(candidates, backend, example, device, threads, precision) as runners:
        return timed_rounds(runners, example, warmup, iters, device)


def best_session(sessions: list[dict[str, list[float]]], label: str) -> list[float]:
    """``label``'s rounds in the session where its median was lowest."""
    return min((session[label] for session in sessions), key=lambda values: summarize(values).p50_ms)


def candidate_snr(candidates: dict[str, Candidate], reference: nn.Module, held_out: torch.Tensor, backend: str,
                  device: str, precision: str) -> dict[str, float | None]:
    """Each candidate's SNR at ``precision`` against the searched op's fp32 output on ``held_out``."""
    sets = [InputSet("held-out layer input", (held_out,))]
    snr: dict[str, float | None] = {}
    for label, c in candidates.items():
        with make_runner(backend, c.module, [held_out], device, 1, c.onnx_model, precision) as runner:
            snr[label] = finite_db(compare_on(runner, reference, sets).snr_db)
    return snr


def geometry(layer: nn.Module) -> tuple[list[int], int, list[list[int]], str]:
    """Kernel, groups, rates (dilations) and kind of a tunable layer, for the report."""
    parts = involution_parts(layer)
    if parts is not None:
        k, d = parts.kernel_size, parts.dilation
        return [k, k], parts.groups, [[d, d]], "involution"
    assert isinstance(layer, SearchedConv)
    return list(layer.kernel_size), layer.groups, [list(r) for r in layer.rates], "searched conv"


def time_layer(name: str, layer: nn.Module, shape: tuple, backend: str, device: str, threads: int,
               warmup: int, iters: int, sessions: int, precision: str = "fp32",
               inputs: list[torch.Tensor] | None = None) -> LayerTiming | None:
    """``inputs``: the layer's inputs in the whole model, needed below fp32 (the first ones calibrate int8,
    the last is held out for the SNR)."""
    options = candidates(name, layer)
    if len(options) < 2:
        return None
    modules = {**options, REFERENCE: layer.eval()}
    example = [inputs[0] if inputs else torch.randn(*shape)]
    ready = prepared(modules, example, precision, (inputs or example)[:-1] or example, backend)
    timed = [session_rounds(ready, example, backend, device, threads, warmup, iters, precision)
             for _ in range(sessions)]
    per_session = {label: [round(summarize(s[label]).p50_ms, 5) for s in timed] for label in modules}
    best = {label: min(values) for label, values in per_session.items()}
    snr = None
    if precision != "fp32":
        snr = candidate_snr(ready, layer.eval(), (inputs or example)[-1], backend, device, precision)
    decision = decide({label: best_session(timed, label) for label in options}, SIMPLEST_FIRST,
                      None if snr is None else {label: snr[label] for label in options})
    kernel, groups, rates, op = geometry(layer)
    return LayerTiming(name, list(shape), kernel, groups, rates, best, per_session,
                       {label: round(best[label] / best[REFERENCE], 4) for label in options}, decision.kept, op,
                       precision, snr, decision.why, decision.decided_by,
                       {label: round(value, 5) for label, value in decision.spread_ms.items()})


LayerToTune = tuple[str, nn.Module, tuple]


def tune_layers(layers: Iterable[LayerToTune], backend: str, warmup: int = 3, iters: int = 15,
                threads: int | None = None, sessions: int = 3, tick: Tick | None = None, precision: str = "fp32",
                inputs: dict[str, list[torch.Tensor]] | None = None) -> TuningResult:
    """Per (name, tunable layer, its input shape) with two exact lowerings, the one that ran fastest (at a
    lower precision: unless it is much less accurate; ``inputs`` per layer, see ``time_layer``)."""
    backend, device = parse_target(backend, precision)
    threads = threads or torch.get_num_threads()
    tick = tick or (lambda text: None)
    result = TuningResult(backend, device, device_name(device), threads, warmup, iters, sessions, precision=precision)
    with torch_settings(threads):
        for name, layer, shape in layers:
            timing = time_layer(name, layer, shape, backend, device, threads, warmup, iters, sessions, precision,
                                (inputs or {}).get(name))
            if timing is not None:
                result.layers.append(timing)
                tick(f"{name}: {timing.chosen}")
    return result


def tune_lowerings(searched: nn.Module, input_shapes: list[tuple[int, ...]], backend: str, warmup: int = 3,
                   iters: int = 15, threads: int | None = None, seed: int = 0, sessions: int = 3,
                   tick: Tick | None = None, precision: str = "fp32",
                   calibration: list[InputSet] | None = None) -> TuningResult:
    """Per searched layer or involution with two exact lowerings, the one that ran fastest on ``backend[:device]`` at
    ``precision`` (below fp32, the layers' inputs come from ``calibration``, else from seeded inputs)."""
    parse_target(backend, precision)  # an unknown or unusable backend fails before the model runs
    sets = [list(s.tensors) for s in (calibration or [])[:CALIBRATION_SETS]]
    if precision != "fp32" and len(sets) < 2:
        sets = [random_inputs(input_shapes, seed + i) for i in range(CALIBRATION_SETS)]
    seen = layer_inputs(searched, sets or [random_inputs(input_shapes, seed)])
    layers = [(name, layer, tuple(seen[name][0].shape)) for name, layer in tunable_layers(searched)
              if name in seen]  # not on the forward path of this input otherwise
    return tune_layers(layers, backend, warmup, iters, threads, sessions, tick, precision,
                       seen if precision != "fp32" else None)
