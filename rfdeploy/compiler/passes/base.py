"""What a pass is, as data: its name, its function, what it preserves, and what must run before it.

The pipelines (``rfdeploy.compiler.pipeline``) are lists of these records. Their order constraints are
checked once, when the pipeline is declared; a pass never has to discover at run time that another
one has not run yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rfdeploy.compiler.ir import NotApplicable
from rfdeploy.errors import first_line


class Preserves(Enum):
    """How equal a pass keeps the outputs."""

    EXACT = "exactly"  # the same products, summed in the same order
    SUMMATION_ORDER = "up to summation order"  # the same products, summed in another order
    ROUNDING = "up to rounding"  # weights or biases combined in float64, rounded once to their dtype
    NOTHING = "not: a cost reference"  # outputs differ by design


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[..., Any]
    preserves: Preserves
    after: tuple[str, ...] = ()  # passes that must have run before this one
    options: tuple[str, ...] = ()  # keyword arguments it takes from the pipeline's settings (``mode``)
    chooses: tuple[Pass, ...] = ()  # passes it picks between, run by it rather than by the pipeline

    def apply(self, subject: Any, where: str, **settings: Any) -> Any:
        """``run`` on ``subject``; ``NotApplicable`` passes through, any other error names this pass and
        ``where`` (a layer, or the model)."""
        try:
            return self.run(subject, **{name: settings[name] for name in self.options})
        except NotApplicable:
            raise
        except Exception as error:
            raise PassError(self.name, where, error) from error


class PassError(RuntimeError):
    """An unexpected error inside a pass: a bug, or an input the pass does not foresee."""

    def __init__(self, pass_name: str, where: str, error: Exception):
        super().__init__(f"pass {pass_name} failed on {where}: {type(error).__name__}: {first_line(error, 1000)}")
        self.pass_name, self.where = pass_name, where


def check_order(pipeline: Sequence[Pass]) -> None:
    """Raise ``ValueError`` where a pass comes before one it needs, or needs one the pipeline lacks."""
    seen: set[str] = set()
    for step in pipeline:
        missing = [name for name in step.after if name not in seen]
        if missing:
            raise ValueError(f"pass {step.name} needs {', '.join(missing)} to run before it")
        seen.add(step.name)


def flattened(pipeline: Sequence[Pass]) -> list[Pass]:
    """Every pass of the pipeline in order, each one's choices just before it."""
    return [p for step in pipeline for p in (*flattened(step.chooses), step)]
