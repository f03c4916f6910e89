"""Proof of equality: an artifact against the searched PyTorch forward, on seeded random inputs.

``max_abs_err`` is the largest absolute difference over every output element; ``max_rel_err`` divides
each output's largest difference by that output's largest magnitude (relative to the output's scale,
so that values near zero do not dominate). A run passes when every output's difference is within
``atol + rtol * scale``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rfdeploy.backends import Runner
from rfdeploy.backends.onnx_export import flat_outputs


@dataclass
class Verification:
    backend: str
    max_abs_err: float
    max_rel_err: float
    passed: bool
    atol: float
    rtol: float
    seed: int
    trials: int
    input_shapes: list[list[int]]

    def to_json(self) -> dict:
        return asdict(self)


def random_inputs(shapes: list[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def compare(actual: list[np.ndarray], expected: list[np.ndarray], atol: float, rtol: float) -> tuple[float, float, bool]:
    if len(actual) != len(expected):
        return float("inf"), float("inf"), False
    max_abs, max_rel, passed = 0.0, 0.0, True
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return float("inf"), float("inf"), False
        diff = float(np.max(np.abs(a.astype(np.float64) - e))) if a.size else 0.0
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
        passed = passed and bool(np.isfinite(diff)) and diff <= atol + rtol * scale
    return max_abs, max_rel, passed


def reference_outputs(model: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().double().numpy() for t in flat_outputs(model(*inputs))]


def run_once(runner: Runner, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    runner.load(inputs)
    runner.run()
    return runner.fetch()


def verify(runner: Runner, reference: nn.Module | Runner, shapes: list[tuple[int, ...]], backend: str,
           atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0, trials: int = 2) -> Verification:
    """A backend's runner against ``reference`` (the searched PyTorch model, or another runner) on
    ``trials`` seeded random inputs."""
    worst_abs, worst_rel, passed = 0.0, 0.0, True
    for trial in range(trials):
        inputs = random_inputs(shapes, seed + trial)
        expected = (reference_outputs(reference, inputs) if isinstance(reference, nn.Module)
                    else [a.astype(np.float64) for a in run_once(reference, inputs)])
        max_abs, max_rel, ok = compare(run_once(runner, inputs), expected, atol, rtol)
        worst_abs, worst_rel, passed = max(worst_abs, max_abs), max(worst_rel, max_rel), passed and ok
    return Verification(backend, worst_abs, worst_rel, passed, atol, rtol, seed, trials, [list(s) for s in shapes])
