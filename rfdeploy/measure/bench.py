"""Benchmarks: the searched model as trained against rfdeploy's compiled model, per backend.

Every variant of a backend is timed in the same run, interleaved (one run of each in turn, the order
rotating every round) after a warm-up, so that drift in the machine's speed hits all variants alike.
A CPU run is timed by the wall clock; a CUDA run by CUDA events around the call, with PyTorch in full
fp32 (no TF32; see ``torch_settings``). Accuracy is measured against PyTorch's searched forward on the
same inputs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rfdeploy.backends import Runner, check_backends, make_runner
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.compiler.pipeline import compile_model, plain_model, searched_layers
from rfdeploy.measure.verify import compare, random_inputs, reference_outputs

VARIANTS = ("searched", "compiled")
Tick = Callable[[str], None]


# --- timing -------------------------------------------------------------------------------------------

@dataclass
class Stats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    iters: int


def summarize(samples_ms: list[float]) -> Stats:
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(np.percentile(values, q)) for q in (50, 90, 99))
    return Stats(p50, p90, p99, float(values.mean()), float(values.min()), len(values))


def wall_clock_ms(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def cuda_events_ms(run: Callable[[], None]) -> float:
    """Device time of ``run`` on the current stream; blocking calls (onnxruntime) count whole."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def clock_for(device: str) -> Callable[[Callable[[], None]], float]:
    return cuda_events_ms if device == "cuda" else wall_clock_ms


def time_interleaved(runs: dict[str, Callable[[], None]], warmup: int, iters: int, device: str = "cpu",
                     tick: Tick | None = None) -> dict[str, list[float]]:
    """Milliseconds per run of each entry: ``warmup`` untimed rounds, then ``iters`` rotated rounds."""
    clock, names = clock_for(device), list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
            if tick:
                tick(f"warm-up {name}")
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(iters):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(clock(runs[name]))
            if tick:
                tick(f"timing {name}")
    return samples


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def torch_settings(threads: int) -> Iterator[None]:
    """PyTorch as timed: ``threads`` intra-op threads; on CUDA, fp32 convs and matmuls in full fp32 and
    cuDNN's fastest algorithm per conv shape (chosen on the first run, which warm-up absorbs).

    PyTorch runs fp32 convs in TF32 by default on Ampere and later: 10 mantissa bits, errors near 1e-3,
    and a speed no fp32 deployment has. rfdeploy's fp32 TensorRT engines clear TF32 for the same reason.
    """
    cudnn = torch.backends.cudnn
    threads_before, matmul_before = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=True, deterministic=cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.set_num_threads(threads_before)
        torch.set_float32_matmul_precision(matmul_before)


# --- variants -----------------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    model: nn.Module
    exact: bool = True  # computes the searched function; else a cost reference, whose errors mean nothing
    onnx_model: onnx.ModelProto | None = None  # exported once, shared by the ONNX backends

    def onnx_for(self, example: list[torch.Tensor]) -> onnx.ModelProto:
        if self.onnx_model is None:
            # the searched model exports naively: every branch and the alpha arithmetic stay in the graph
            self.onnx_model = export_onnx(self.model, example)
        return self.onnx_model


def variants(searched: nn.Module, compiled: nn.Module, with_plain: bool = False) -> list[Variant]:
    chosen = [Variant("searched", searched), Variant("compiled", compiled)]
    return chosen + [Variant("plain", plain_model(searched), exact=False)] if with_plain else chosen


# --- the benchmark ------------------------------------------------------------------------------------

@dataclass
class BenchResult:
    backend: str
    variant: str
    device: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # inputs per second at the median latency
    max_abs_err: float | None  # None for a cost reference (not an exact model)
    max_rel_err: float | None
    iters: int


@dataclass
class BenchReport:
    model: str
    device: str
    device_name: str
    threads: int
    input_shapes: list[list[int]]
    warmup: int
    iters: int
    versions: dict[str, str]
    searched_layers: int = 0
    involutions: int = 0
    results: list[BenchResult] = field(default_factory=list)
    compile: dict = field(default_factory=dict)

    def speedups(self) -> dict[str, float]:
        """Per backend: searched median / compiled median (above 1: compiled is faster)."""
        p50 = {(r.backend, r.variant): r.p50_ms for r in self.results}
        return {backend: p50[(backend, "searched")] / p50[(backend, "compiled")]
                for backend, variant in p50 if variant == "compiled" and (backend, "searched") in p50}

    def to_json(self) -> dict:
        return asdict(self) | {"speedups": self.speedups()}


def versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def planned_ticks(backends: list[str], variant_count: int, warmup: int, iters: int) -> int:
    """How many times ``bench`` calls ``tick``: one set-up and one accuracy check per runner, plus runs."""
    return len(backends) * variant_count * (2 + warmup + iters)


def bench_backend(backend: str, chosen: list[Variant], inputs: list[torch.Tensor], expected: list[np.ndarray],
                  device: str, threads: int, warmup: int, iters: int, tick: Tick) -> list[BenchResult]:
    with contextlib.ExitStack() as open_runners:
        runners: dict[str, Runner] = {}
        for variant in chosen:
            tick(f"{backend}: preparing {variant.name}")
            onnx_model = None if backend == "torch" else variant.onnx_for(inputs)
            runners[variant.name] = open_runners.enter_context(
                make_runner(backend, variant.model, inputs, device, threads, onnx_model))
            runners[variant.name].load(inputs)
        errors: dict[str, tuple[float | None, float | None]] = {}
        for variant in chosen:
            tick(f"{backend}: checking {variant.name}")
            runners[variant.name].run()
            comparison = compare(runners[variant.name].fetch(), expected)
            errors[variant.name] = (comparison.max_abs, comparison.max_rel) if variant.exact else (None, None)
        samples = time_interleaved({name: runner.run for name, runner in runners.items()}, warmup, iters, device,
                                   lambda text: tick(f"{backend}: {text}"))
    batch = int(inputs[0].shape[0])
    results = []
    for name, values in samples.items():
        stats = summarize(values)
        results.append(BenchResult(backend, name, device, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.mean_ms,
                                   stats.min_ms, batch * 1e3 / stats.p50_ms, *errors[name], stats.iters))
    return results


def bench(searched: nn.Module, input_shapes: list[tuple[int, ...]], backends: list[str], device: str = "cpu",
          warmup: int = 10, iters: int = 50, threads: int = 1, mode: str = "auto",
          choices: dict[str, str] | None = None, seed: int = 0, with_plain: bool = False,
          model_name: str = "", tick: Tick | None = None) -> BenchReport:
    """Each backend runs the searched and the compiled model (and the plain one, if asked) on one input."""
    check_backends(backends, device)
    tick = tick or (lambda text: None)
    compiled = compile_model(searched, mode, choices=choices, input_shapes=input_shapes)
    chosen = variants(searched, compiled.model, with_plain)
    inputs = random_inputs(input_shapes, seed)
    expected = reference_outputs(searched, inputs)
    report = BenchReport(model_name, device, device_name(device), threads, [list(s) for s in input_shapes],
                         warmup, iters, versions(), len(compiled.layers), len(compiled.involutions))
    report.compile = {"mode": mode, "tuned_layers": len(choices or {}),
                      "lowerings": {layer.name: layer.lowering for layer in compiled.layers}
                      | {involution.name: involution.lowering for involution in compiled.involutions}}
    with torch_settings(threads):
        for backend in backends:
            report.results += bench_backend(backend, chosen, inputs, expected, device, threads, warmup, iters, tick)
    return report


def free_cores() -> tuple[int, int, float]:
    """``(free, usable, load)``: about how many of the cores this process may use are idle.

    ``usable`` is the affinity mask (what a container or taskset allows, often fewer than the machine's
    cores); ``load`` is the 1-minute load average, the machine's runnable tasks. It counts every core
    while the mask may not, so ``usable - load`` (at least 1) errs towards too few free cores: a warning
    too many costs nothing, while intra-op threads that wait for a core slow PyTorch down many times.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, round(usable - load)), usable, load


def randomize_alphas(searched: nn.Module, seed: int) -> int:
    """Trained-looking alphas (uniform in [0.05, 1.05)) for every searched conv; how many were set.

    For timing a structure file without its checkpoint: the cost of a layer does not depend on its alphas.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = searched_layers(searched)
    with torch.no_grad():
        for _, layer in layers:
            layer.alphas.copy_(torch.rand(layer.alphas.shape, generator=generator) + 0.05)
    return len(layers)
