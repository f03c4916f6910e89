"""Timing: runs interleaved after a warm-up, their medians and spreads, the settings they run under, and the
one rule every choice made by timing decides by (``decide``).

A CPU run is timed by the wall clock; a CUDA run by CUDA events around the call, with PyTorch in full
fp32 (no TF32; see ``torch_settings``).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rfdeploy.backends import Runner, make_runner
from rfdeploy.precision import SNR_MARGIN_DB

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


def timed_rounds(runners: dict[str, Runner], example: list[torch.Tensor], warmup: int, iters: int,
                 device: str = "cpu") -> dict[str, list[float]]:
    """Each runner's milliseconds on ``example`` in each of ``iters`` interleaved rounds, after ``warmup``."""
    for runner in runners.values():
        runner.load(example)
    return time_interleaved({label: runner.run for label, runner in runners.items()}, warmup, iters, device)


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


SPEED, ACCURACY, SIMPLICITY = "speed", "accuracy", "simplicity"
SNR_TIE_DB = 0.1  # SNRs closer than this (2% of the noise power) are the same accuracy


@dataclass(frozen=True)
class Decision:
    """A choice made by timing: what was kept, which rule decided (``SPEED``, ``ACCURACY``, ``SIMPLICITY``)
    and why, with the figures it was decided on."""

    kept: str
    decided_by: str
    why: str
    median_ms: dict[str, float]
    spread_ms: dict[str, float]  # each candidate's interquartile range of per-round times
    rounds: int
    snr_db: dict[str, float | None] | None = None

    def to_json(self) -> dict:
        return {"kept": self.kept, "decided_by": self.decided_by, "why": self.why, "median_ms": self.median_ms,
                "spread_ms": self.spread_ms, "rounds": self.rounds, "snr_db": self.snr_db}


def interquartile_ms(samples_ms: list[float]) -> float:
    low, high = np.percentile(np.asarray(samples_ms, dtype=np.float64), (25, 75))
    return float(high - low)


def decide(rounds_ms: dict[str, list[float]], simplest_first: Sequence[str],
           snr: dict[str, float | None] | None = None) -> Decision:
    """The candidate to keep, from each one's per-round times (interleaved rounds, see ``time_interleaved``).

    1. Accuracy first rules out what costs too much: a candidate more than ``SNR_MARGIN_DB`` below the best SNR
       is not kept (``snr`` None, or a candidate's SNR None: exact, no difference).
    2. Speed: the fastest median wins only where every other candidate's median is slower by more than the
       spread of the rounds, the larger of the two candidates' interquartile ranges. A difference inside that
       spread is what load alone moves (issue 24: a 0.5% margin flipped the int8 op set with machine load).
    3. Among the candidates tied on speed, the most accurate, where its SNR is more than ``SNR_TIE_DB`` above
       the others'; then the simplest, the first of them in ``simplest_first``.
    """
    medians = {label: summarize(values).p50_ms for label, values in rounds_ms.items()}
    spreads = {label: interquartile_ms(values) for label, values in rounds_ms.items()}
    options = list(rounds_ms)

    def db(label: str) -> float:
        value = None if snr is None else snr.get(label)
        return float("inf") if value is None else value

    best_db = max(db(label) for label in options)
    acceptable = [label for label in options if db(label) >= best_db - SNR_MARGIN_DB]
    fastest = min(acceptable, key=medians.__getitem__)
    tied = [label for label in acceptable
            if medians[label] - medians[fastest] <= max(spreads[fastest], spreads[label])]

    def decision(kept: str, decided_by: str, why: str) -> Decision:
        return Decision(kept, decided_by, why, medians, spreads, min(map(len, rounds_ms.values())), snr)

    if tied == [fastest]:
        return decision(fastest, *_won_on_speed(fastest, options, acceptable, medians, spreads, db))
    most_accurate = max(tied, key=db)
    as_accurate = [label for label in tied if db(label) >= db(most_accurate) - SNR_TIE_DB]
    within = f"{', '.join(tied)} ran within the spread of their rounds of each other"
    if len(as_accurate) == 1:
        return decision(most_accurate, ACCURACY, f"{within}; {most_accurate} is the most accurate "
                                                 f"({db(most_accurate):.1f} dB)")
    simplest = min(as_accurate, key=lambda label: list(simplest_first).index(label))
    return decision(simplest, SIMPLICITY, f"{within}" + ("" if snr is None else " and as accurate")
                    + f"; {simplest} is the simplest graph")


def _won_on_speed(fastest: str, options: list[str], acceptable: list[str], medians: dict[str, float],
                  spreads: dict[str, float], db: Callable[[str], float]) -> tuple[str, str]:
    """Which rule kept the clearly fastest acceptable candidate, and why: speed, or accuracy where a faster one
    was ruled out for its SNR."""
    faster = [label for label in options if label not in acceptable and medians[label] < medians[fastest]]
    if faster:
        worse = faster[0]
        return ACCURACY, (f"{worse} ran {medians[fastest] / medians[worse]:.2f}x faster but is "
                          f"{db(fastest) - db(worse):.1f} dB less accurate (more than {SNR_MARGIN_DB:g} dB)")
    others = [label for label in acceptable if label != fastest]
    if not others:
        return ACCURACY, f"the others are more than {SNR_MARGIN_DB:g} dB less accurate"
    runner_up = min(others, key=medians.__getitem__)
    spread = max(spreads[fastest], spreads[runner_up])
    return SPEED, (f"faster than {runner_up} by {medians[runner_up] - medians[fastest]:.3g} ms "
                   f"({medians[runner_up] / medians[fastest]:.2f}x), more than the spread of the rounds "
                   f"({spread:.3g} ms)" + ("" if len(acceptable) == len(options) else
                                          f", within {SNR_MARGIN_DB:g} dB of the best SNR"))


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
