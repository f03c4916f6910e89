"""What a stage is, as data, and the one loop that runs a declared list of them.

A deployment (``export``, ``optimize``, ``bench``) is a sequence of ``Stage`` records, as a pipeline is a
sequence of ``Pass`` records: each names what it needs from the stages before it, the values it adds, the
report keys it owns and the files it will write. The declaration is checked once (``check_stages``); the loop
(``run_stages``) runs the stages that apply to the request, checks each returned exactly what it declared,
assembles the report from the sections the stages own, and names the stage that failed. The output folder is
checked before any work from the files the applicable stages declare (``planned_files``), and every file any
stage of the deployment can write is an artifact name the deployment owns (``declared_files`` for a request that
asks for every artifact).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfdeploy.errors import RFDeployError, first_line

Progress = Callable[[str], None]


def always(request: Any) -> bool:
    return True


def no_files(request: Any) -> tuple[Path, ...]:
    return ()


@dataclass
class Run:
    """One deployment in progress: the request, the values the stages have added, the report so far."""

    request: Any
    progress: Progress = field(default=lambda message: None)
    values: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    passed: bool = True  # every verification so far
    seconds: dict[str, float] = field(default_factory=dict)  # each stage's wall time, for the report
    # output path -> content, or what makes it at write time (a model serialised then is not held beside the
    # model while verification runs); written on success only
    files: dict[Path, bytes | Callable[[], bytes]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Run], dict[str, Any]]  # returns exactly ``adds`` + ``report`` by name
    needs: tuple[str, ...] = ()  # values earlier stages add
    adds: tuple[str, ...] = ()  # values it adds for later stages
    report: tuple[str, ...] = ()  # report keys it owns
    files: Callable[[Any], tuple[Path, ...]] = no_files  # the outputs it will write for this request
    when: Callable[[Any], bool] = always  # whether it applies to the request
    verified: bool = False  # runs only while every verification so far has passed
    progress: str | None = None  # the progress line, else its name


class StageError(RuntimeError):
    """An unexpected error inside a stage: a bug, or an input no check foresaw."""

    def __init__(self, stage: str, error: Exception):
        super().__init__(f"stage {stage} failed: {type(error).__name__}: {first_line(error, 1000)}")
        self.stage = stage


def check_stages(stages: Sequence[Stage]) -> Sequence[Stage]:
    """Raise ``ValueError`` where a stage needs a value no earlier stage adds, or two stages claim one value,
    report key or file; returns ``stages``."""
    added: set[str] = set()
    owned: set[str] = set()
    for stage in stages:
        missing = [name for name in stage.needs if name not in added]
        if missing:
            raise ValueError(f"stage {stage.name} needs {', '.join(missing)}, which no stage before it adds")
        twice = (set(stage.adds) & added) | (set(stage.report) & owned)
        if twice:
            raise ValueError(f"stage {stage.name} claims {', '.join(sorted(twice))}, which a stage before it owns")
        added |= set(stage.adds)
        owned |= set(stage.report)
    return stages


def applicable(stages: Sequence[Stage], request: Any) -> list[Stage]:
    return [stage for stage in stages if stage.when(request)]


def planned_files(stages: Sequence[Stage], request: Any) -> tuple[Path, ...]:
    """The files this request will write: those of every stage that applies to it."""
    return tuple(path for stage in applicable(stages, request) for path in stage.files(request))


def declared_files(stages: Sequence[Stage], request: Any) -> tuple[Path, ...]:
    """Every file a stage of ``stages`` declares for ``request``, whether it applies or not: with a request
    that asks for everything, the artifact names a deployment owns in its folder."""
    return tuple(dict.fromkeys(path for stage in stages for path in stage.files(request)))


def run_stages(stages: Sequence[Stage], run: Run) -> Run:
    """Each stage that applies, in order (a ``verified`` one only while everything so far passed)."""
    for stage in applicable(stages, run.request):
        if stage.verified and not run.passed:
            continue
        missing = [name for name in stage.needs if name not in run.values]
        if missing:  # a stage that applies needs a value only a skipped one adds: a declaration bug
            raise StageError(stage.name, KeyError(f"needs {', '.join(missing)}, which no stage that ran added"))
        run.progress(stage.progress or stage.name)
        started = time.perf_counter()
        try:
            added = stage.run(run)
        except (RFDeployError, KeyboardInterrupt):
            raise
        except Exception as error:
            raise StageError(stage.name, error) from error
        expected = set(stage.adds) | set(stage.report)
        if set(added) != expected:
            raise StageError(stage.name, KeyError(f"returned {sorted(added)}, declared {sorted(expected)}"))
        run.values.update((name, added[name]) for name in stage.adds)
        run.report.update((name, added[name]) for name in stage.report)
        run.seconds[stage.name] = round(time.perf_counter() - started, 3)
    return run
