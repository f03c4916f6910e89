"""Timing: runs interleaved after a warm-up, their medians and spreads, and the settings they run under.

A CPU run is timed by the wall clock; a CUDA run by CUDA events around the call, with PyTorch in full
fp32 (no TF32; see ``torch_settings``).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rfdeploy.backends import Runner, make_runner

Tick = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """Something to time: the torch module, and the ONNX model an ONNX backend runs (None: exported)."""

    module: nn.Module | None
    onnx_model: onnx.ModelProto | None = None


@contextlib.contextmanager
def opened_runners(candidates: dict[str, Candidate], backend: str, example: list[torch.Tensor], device: str = "cpu",
                   threads: int = 0, precision: str = "fp32") -> Iterator[dict[str, Runner]]:
    """A fresh runner (session) of each candidate on ``backend``, all closed on leaving."""
    with contextlib.ExitStack() as stack:
        yield {label: stack.enter_context(
                   make_runner(backend, c.module, example, device, threads, c.onnx_model, precision))
               for label, c in candidates.items()}


def median_ms(runners: dict[str, Runner], example: list[torch.Tensor], warmup: int, iters: int,
              device: str = "cpu") -> dict[str, float]:
    """Each runner's median milliseconds on ``example``, timed interleaved after ``warmup`` rounds."""
    for runner in runners.values():
        runner.load(example)
    samples = time_interleaved({label: runner.run for label, runner in runners.items()}, warmup, iters, device)
    return {label: summarize(values).p50_ms for label, values in samples.items()}


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
