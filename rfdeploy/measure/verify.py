"""Proof of equality: an artifact against the searched PyTorch forward, on seeded random inputs (and the
user's own, where given).

``max_abs_err`` is the largest absolute difference over every output element; ``max_rel_err`` divides
each output's largest difference by that output's largest magnitude (relative to the output's scale,
so that values near zero do not dominate). A run passes when every output's difference is within
``atol + rtol * scale``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from rfdeploy.backends.base import Runner, flat_outputs, run_once


@dataclass(frozen=True)
class OutputError:
    """One output: its largest absolute difference, and its scale (largest magnitude of the expected)."""

    max_abs: float
    scale: float

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def within(self, atol: float, rtol: float) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= atol + rtol * self.scale


MISMATCH = (OutputError(float("inf"), 0.0),)  # outputs of different count or shape: nothing compares


@dataclass(frozen=True)
class Comparison:
    """Actual against expected outputs: the errors of each, judged by ``within(atol, rtol)``."""

    outputs: tuple[OutputError, ...]

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def within(self, atol: float, rtol: float) -> bool:
        return all(o.within(atol, rtol) for o in self.outputs)

    def __add__(self, other: Comparison) -> Comparison:
        """Both comparisons' outputs: the worst of several trials is that of their sum."""
        return Comparison(self.outputs + other.outputs)


def compare(actual: list[np.ndarray], expected: list[np.ndarray]) -> Comparison:
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return Comparison(MISMATCH)
    errors = []
    for a, e in zip(actual, expected):
        diff = float(np.max(np.abs(a.astype(np.float64) - e))) if a.size else 0.0
        errors.append(OutputError(diff, float(np.max(np.abs(e))) if e.size else 0.0))
    return Comparison(tuple(errors))


@dataclass(frozen=True)
class InputSet:
    """The inputs of one verification trial, and where they come from (``seed 3``, or a file)."""

    source: str
    tensors: tuple[torch.Tensor, ...]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self.tensors]

    @property
    def key(self) -> tuple:
        return self.source, tuple(self.shapes)


def random_inputs(shapes: list[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def seeded_inputs(shapes: list[tuple[int, ...]], seed: int = 0, trials: int = 2) -> list[InputSet]:
    return [InputSet(f"seed {seed + trial}", tuple(random_inputs(shapes, seed + trial))) for trial in range(trials)]


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
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def reference_outputs(model: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().double().numpy() for t in flat_outputs(model(*inputs))]


class Reference:
    """What verification compares against (the searched PyTorch model, or another runner), its outputs
    computed once per input set and kept: one export checks several backends against the same inputs, and
    a detector-sized searched forward takes seconds."""

    def __init__(self, source: nn.Module | Runner):
        self.source = source
        self.computed: dict[tuple, list[np.ndarray]] = {}

    def outputs(self, inputs: InputSet) -> list[np.ndarray]:
        if inputs.key not in self.computed:
            tensors = list(inputs.tensors)
            self.computed[inputs.key] = (reference_outputs(self.source, tensors) if isinstance(self.source, nn.Module)
                                         else [a.astype(np.float64) for a in run_once(self.source, tensors)])
        return self.computed[inputs.key]


def verify(runner: Runner, reference: Reference | nn.Module | Runner, shapes: list[tuple[int, ...]],
           atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0, trials: int = 2) -> Verification:
    """``runner`` against ``reference`` on ``trials`` seeded random inputs of these shapes."""
    return verify_on(runner, reference, seeded_inputs(shapes, seed, trials), atol, rtol, seed)


def verify_on(runner: Runner, reference: Reference | nn.Module | Runner, inputs: list[InputSet],
              atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> Verification:
    """``runner`` against ``reference`` on each input set, reported under the runner's name (``seed``: that
    of the random sets among them, for the record)."""
    if not isinstance(reference, Reference):
        reference = Reference(reference)
    comparisons = [compare(run_once(runner, list(s.tensors)), reference.outputs(s)) for s in inputs]
    worst = sum(comparisons[1:], comparisons[0])
    return Verification(runner.name, worst.max_abs, worst.max_rel, worst.within(atol, rtol), atol, rtol, seed,
                        len(inputs), [list(shape) for shape in inputs[0].shapes], [s.source for s in inputs])
