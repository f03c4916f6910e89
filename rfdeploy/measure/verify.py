"""Proof of equality: an artifact against the searched PyTorch forward, on seeded random inputs (and the
user's own, where given).

``max_abs_err`` is the largest absolute difference over every output element; ``max_rel_err`` divides
each output's largest difference by that output's largest magnitude (relative to the output's scale,
so that values near zero do not dominate). An fp32 run passes when every output's difference is within
``atol + rtol * scale``. A lower-precision run passes on its signal-to-noise ratio instead
(``snr_db``: ``10 log10(sum e^2 / sum (a - e)^2)``, the worst output of the worst input set; see
``rfdeploy.precision``); ``cosine`` is the worst cosine similarity, as polygraphy reports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdeploy.backends.base import Runner, flat_outputs, run_once


@dataclass(frozen=True)
class OutputError:
    """One output: its largest absolute difference, its scale (largest magnitude of the expected), the
    energies of the expected values and of the difference, and the cosine of the two."""

    max_abs: float
    scale: float
    signal: float = 0.0  # sum of expected^2
    noise: float = 0.0  # sum of (actual - expected)^2
    cosine: float = 1.0

    @property
    def snr_db(self) -> float:
        """Infinite where nothing differs; minus infinity where there is noise and no signal."""
        if self.noise == 0:
            return math.inf
        ratio = self.signal / self.noise if self.signal > 0 else 0.0
        return 10 * math.log10(ratio) if ratio > 0 else -math.inf  # NaN (infinite outputs) is the worst too

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    def within(self, atol: float, rtol: float) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= atol + rtol * self.scale


MISMATCH = (OutputError(math.inf, 0.0, 0.0, math.inf, 0.0),)  # outputs of different count or shape: nothing compares


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

    @property
    def snr_db(self) -> float:
        return min((o.snr_db for o in self.outputs), default=math.inf)

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def within(self, atol: float, rtol: float) -> bool:
        return all(o.within(atol, rtol) for o in self.outputs)

    def meets(self, min_snr_db: float) -> bool:
        """Every output finite and at least ``min_snr_db`` above its noise."""
        return all(math.isfinite(o.max_abs) for o in self.outputs) and self.snr_db >= min_snr_db

    def __add__(self, other: Comparison) -> Comparison:
        """Both comparisons' outputs: the worst of several trials is that of their sum."""
        return Comparison(self.outputs + other.outputs)


def compare(actual: list[np.ndarray], expected: list[np.ndarray]) -> Comparison:
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return Comparison(MISMATCH)
    return Comparison(tuple(output_error(a, e) for a, e in zip(actual, expected)))


def output_error(actual: np.ndarray, expected: np.ndarray) -> OutputError:
    """Every figure in float64, from two float64 arrays and dot products (a detector's outputs are tens of millions
    of values: each temporary costs a pass over them). ``actual . expected`` and ``|actual|^2`` follow from
    ``actual = expected + difference``."""
    if not actual.size:
        return OutputError(0.0, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):  # infinite outputs give NaN errors, which fail; no warning
        expected64 = np.ascontiguousarray(expected, dtype=np.float64).ravel()
        difference = np.subtract(actual, expected, dtype=np.float64).ravel()
        signal, noise = float(np.dot(expected64, expected64)), float(np.dot(difference, difference))
        cross = float(np.dot(expected64, difference))
        norms = math.sqrt(max(signal + 2 * cross + noise, 0.0)) * math.sqrt(signal)  # |actual| |expected|
        cosine = (signal + cross) / norms if norms > 0 else float(norms == 0)
        max_abs = float(np.maximum(difference.max(), -difference.min()))  # NaN where any difference is NaN
        scale = float(np.maximum(expected64.max(), -expected64.min()))
        return OutputError(max_abs, scale, signal, noise, cosine)


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
    precision: str = "fp32"
    snr_db: float | None = None  # None: no difference at all
    cosine: float = 1.0
    min_snr_db: float | None = None  # the SNR it was judged by; None: judged by atol and rtol
    outputs: list[dict] = field(default_factory=list)  # per output: max_abs_err, max_rel_err, snr_db, cosine

    def to_json(self) -> dict:
        return asdict(self)


def reference_outputs(model: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    return kept_outputs(returned_value(model, inputs))


def returned_value(model: nn.Module, inputs: list[torch.Tensor]) -> Any:
    with torch.no_grad():
        return model(*inputs)


def kept_outputs(returned: Any) -> list[np.ndarray]:
    return [t.detach().double().numpy() for t in flat_outputs(returned)]


class Reference:
    """What verification compares against (the searched PyTorch model, or another runner), its outputs
    computed once per input set and kept: one export checks several backends against the same inputs, and
    a detector-sized searched forward takes seconds. For a module, also how its return value nests its
    outputs (``structure``: each tensor an empty one), which names an export's outputs."""

    def __init__(self, source: nn.Module | Runner, name: str | None = None):
        self.source = source
        self.name = name if name is not None else str(getattr(source, "name", "torch"))  # as a check of it reports
        self.computed: dict[tuple, list[np.ndarray]] = {}
        self.structure: Any = None

    def outputs(self, inputs: InputSet) -> list[np.ndarray]:
        if inputs.key not in self.computed:
            tensors = list(inputs.tensors)
            if isinstance(self.source, nn.Module):
                self.keep(inputs, returned_value(self.source, tensors))
            else:
                self.computed[inputs.key] = [a.astype(np.float64) for a in run_once(self.source, tensors)]
        return self.computed[inputs.key]

    def keep(self, inputs: InputSet, returned: Any) -> None:
        """A module's return value on ``inputs``: its outputs for later checks, and how it nests them."""
        self.computed[inputs.key] = kept_outputs(returned)
        self.structure = structure_of(returned)

    @contextmanager
    def watching(self, inputs: InputSet) -> Iterator[None]:
        """The module's next forward inside the block (an exporter's trace, which runs the real ops) kept as its
        outputs on ``inputs``."""
        assert isinstance(self.source, nn.Module)
        seen: list[Any] = []
        handle = self.source.register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            yield
        finally:
            handle.remove()
        if seen:
            self.keep(inputs, seen[0])


def structure_of(returned: Any) -> Any:
    """``returned`` with each tensor an empty one: the nesting (dict keys, namedtuple fields) of its outputs."""
    if isinstance(returned, torch.Tensor):
        return torch.empty(0)
    if isinstance(returned, dict):
        return {key: structure_of(value) for key, value in returned.items()}
    if getattr(returned, "_fields", None):
        return type(returned)(*map(structure_of, returned))
    return [structure_of(value) for value in returned]


def outputs_of(source: Runner | Reference, inputs: InputSet) -> list[np.ndarray]:
    """What ``source`` outputs on ``inputs``: a runner runs, a reference gives what it computed or computes it."""
    return source.outputs(inputs) if isinstance(source, Reference) else run_once(source, list(inputs.tensors))


def verify(runner: Runner, reference: Reference | nn.Module | Runner, shapes: list[tuple[int, ...]],
           atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0, trials: int = 2) -> Verification:
    """``runner`` against ``reference`` on ``trials`` seeded random inputs of these shapes."""
    return verify_on(runner, reference, seeded_inputs(shapes, seed, trials), atol, rtol, seed)


def compare_each(runner: Runner | Reference, reference: Reference | nn.Module | Runner,
                 inputs: list[InputSet]) -> list[Comparison]:
    """``runner``'s outputs against ``reference``'s, per input set."""
    if not isinstance(reference, Reference):
        reference = Reference(reference)
    return [compare(outputs_of(runner, s), reference.outputs(s)) for s in inputs]


def compare_on(runner: Runner, reference: Reference | nn.Module | Runner, inputs: list[InputSet]) -> Comparison:
    """The worst of ``runner``'s outputs against ``reference``'s over these input sets."""
    comparisons = compare_each(runner, reference, inputs)
    return sum(comparisons[1:], comparisons[0])


def per_output(comparisons: list[Comparison]) -> list[dict]:
    """Per output, its worst figures over the input sets (polygraphy's per-output error statistics)."""
    counts = {len(c.outputs) for c in comparisons}
    if len(counts) != 1:
        return []
    rows = []
    for index in range(counts.pop()):
        errors = [c.outputs[index] for c in comparisons]
        rows.append({"max_abs_err": max(e.max_abs for e in errors), "max_rel_err": max(e.max_rel for e in errors),
                     "snr_db": finite_db(min(e.snr_db for e in errors)), "cosine": min(e.cosine for e in errors)})
    return rows


def verify_on(runner: Runner | Reference, reference: Reference | nn.Module | Runner, inputs: list[InputSet],
              atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0, precision: str = "fp32",
              min_snr_db: float | None = None) -> Verification:
    """``runner`` (or the outputs a ``Reference`` keeps) against ``reference`` on each input set, reported under the
    runner's name (``seed``: that
    of the random sets among them, for the record). Judged by ``atol`` and ``rtol``, or with ``min_snr_db``
    by the signal-to-noise ratio."""
    comparisons = compare_each(runner, reference, inputs)
    worst = sum(comparisons[1:], comparisons[0])
    passed = worst.meets(min_snr_db) if min_snr_db is not None else worst.within(atol, rtol)
    return Verification(runner.name, worst.max_abs, worst.max_rel, passed, atol, rtol, seed, len(inputs),
                        [list(shape) for shape in inputs[0].shapes], [s.source for s in inputs], precision,
                        finite_db(worst.snr_db), worst.cosine, min_snr_db, per_output(comparisons))


NO_SIGNAL_DB = -999.0  # noise on an output expected to be all zero: JSON has no minus infinity


def finite_db(value: float) -> float | None:
    """An SNR for JSON: None where nothing differs (infinite), else rounded to 0.01 dB."""
    if value == math.inf:
        return None
    return round(value, 2) if math.isfinite(value) else NO_SIGNAL_DB
