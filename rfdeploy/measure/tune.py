"""Lowering chosen by measurement: each searched layer's or involution's exact lowerings, timed alone on the
target backend.

A layer is timed at the input shape it really sees (captured by forward hooks on one run of the searched
model), as a one-layer model: exported to ONNX for onnxruntime / TensorRT, eager for torch. Its
candidates (``single``: one merged conv; ``multi``: one conv per branch; for an involution, each aggregation of
``choose_aggregation``) and, as a reference, the op as written (the search op; the involution with its
``nn.Unfold``) run interleaved after a warm-up, one run of each per round.

This is repeated in several fresh sessions, and each candidate keeps its lowest median over them: on
onnxruntime CPU a one-layer session was seen to stay up to 1.5x slower than an identical one for all of
its runs (we did not find why), which would otherwise decide close calls. The candidate with the lowest
such median is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rfdeploy.backends import BACKENDS, check_backends, make_runner
from rfdeploy.compiler import involution_ir
from rfdeploy.compiler.ir import from_searched, to_module
from rfdeploy.compiler.passes.choose_aggregation import CANDIDATES as AGGREGATIONS
from rfdeploy.compiler.pipeline import lower_involution, lower_layer, searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.involution import involution_layers, involution_parts
from rfdeploy.loader.searched_conv import SearchedConv
from rfdeploy.measure.bench import Tick, device_name, summarize, time_interleaved, torch_settings
from rfdeploy.measure.verify import random_inputs

CANDIDATES = ("single", "multi")
REFERENCE = "searched"


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

    @property
    def choices(self) -> dict[str, str]:
        """Layer name -> the measured fastest lowering, for ``compile_model(..., choices=)``."""
        return {layer.name: layer.chosen for layer in self.layers if layer.chosen in CANDIDATES + AGGREGATIONS}

    def to_json(self) -> dict:
        return asdict(self)


UNTUNABLE = {"torch-compile": "compiling each candidate of each layer would take minutes per layer; "
                              "tune on torch (the same convolution kernels, eager) instead"}


def parse_target(target: str) -> tuple[str, str]:
    """``BACKEND[:DEVICE]`` -> (backend, device); a GPU-only backend defaults to CUDA."""
    backend, _, device = target.partition(":")
    if backend not in BACKENDS:
        raise RFDeployError(f"--tune: unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend in UNTUNABLE:
        raise RFDeployError(f"--tune {backend}: not supported: {UNTUNABLE[backend]}")
    device = device or BACKENDS[backend].devices[0]
    check_backends([backend], device)
    return backend, device


def tunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Searched convs and involutions: the layers with lowerings to choose from."""
    return [*searched_layers(model), *involution_layers(model)]


def layer_input_shapes(searched: nn.Module, input_shapes: list[tuple[int, ...]], seed: int = 0) -> dict[str, tuple]:
    """The shape each tunable layer's input has in one forward of the whole model."""
    seen: dict[str, tuple] = {}

    def recorder(name: str):
        def record(module: nn.Module, args: tuple) -> None:  # returns None: the inputs stay as they are
            seen.setdefault(name, tuple(args[0].shape))
        return record

    hooks = [layer.register_forward_pre_hook(recorder(name)) for name, layer in tunable_layers(searched)]
    try:
        with torch.no_grad():
            searched(*random_inputs(input_shapes, seed))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


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


def session_medians(modules: dict[str, nn.Module], example: list[torch.Tensor], backend: str, device: str,
                    threads: int, warmup: int, iters: int) -> dict[str, float]:
    """Median milliseconds of each module, timed interleaved in fresh runners (sessions)."""
    with contextlib.ExitStack() as open_runners:
        runners = {label: open_runners.enter_context(make_runner(backend, module, example, device, threads))
                   for label, module in modules.items()}
        for runner in runners.values():
            runner.load(example)
        samples = time_interleaved({label: runner.run for label, runner in runners.items()}, warmup, iters, device)
    return {label: summarize(values).p50_ms for label, values in samples.items()}


def geometry(layer: nn.Module) -> tuple[list[int], int, list[list[int]], str]:
    """Kernel, groups, rates (dilations) and kind of a tunable layer, for the report."""
    parts = involution_parts(layer)
    if parts is not None:
        k, d = parts.kernel_size, parts.dilation
        return [k, k], parts.groups, [[d, d]], "involution"
    assert isinstance(layer, SearchedConv)
    return list(layer.kernel_size), layer.groups, [list(r) for r in layer.rates], "searched conv"


def time_layer(name: str, layer: nn.Module, shape: tuple, backend: str, device: str, threads: int,
               warmup: int, iters: int, sessions: int) -> LayerTiming | None:
    options = candidates(name, layer)
    if len(options) < 2:
        return None
    modules = {**options, REFERENCE: layer.eval()}
    example = [torch.randn(*shape)]
    medians = [session_medians(modules, example, backend, device, threads, warmup, iters) for _ in range(sessions)]
    per_session = {label: [round(m[label], 5) for m in medians] for label in modules}
    best = {label: min(values) for label, values in per_session.items()}
    chosen = min(options, key=best.__getitem__)
    kernel, groups, rates, op = geometry(layer)
    return LayerTiming(name, list(shape), kernel, groups, rates, best, per_session,
                       {label: round(best[label] / best[REFERENCE], 4) for label in options}, chosen, op)


def tune_layers(layers: Iterable[tuple[str, nn.Module, tuple]], backend: str, warmup: int = 3, iters: int = 15,
                threads: int | None = None, sessions: int = 3, tick: Tick | None = None) -> TuningResult:
    """Per (name, searched layer, its input shape) with two exact lowerings, the one that ran fastest."""
    backend, device = parse_target(backend)
    threads = threads or torch.get_num_threads()
    tick = tick or (lambda text: None)
    result = TuningResult(backend, device, device_name(device), threads, warmup, iters, sessions)
    with torch_settings(threads):
        for name, layer, shape in layers:
            timing = time_layer(name, layer, shape, backend, device, threads, warmup, iters, sessions)
            if timing is not None:
                result.layers.append(timing)
                tick(f"{name}: {timing.chosen}")
    return result


def tune_lowerings(searched: nn.Module, input_shapes: list[tuple[int, ...]], backend: str, warmup: int = 3,
                   iters: int = 15, threads: int | None = None, seed: int = 0, sessions: int = 3,
                   tick: Tick | None = None) -> TuningResult:
    """Per searched layer or involution with two exact lowerings, the one that ran fastest on ``backend[:device]``."""
    parse_target(backend)  # an unknown or unusable backend fails before the model runs
    shapes = layer_input_shapes(searched, input_shapes, seed)
    layers = [(name, layer, shapes[name]) for name, layer in tunable_layers(searched)
              if name in shapes]  # not on the forward path of this input otherwise
    return tune_layers(layers, backend, warmup, iters, threads, sessions, tick)
