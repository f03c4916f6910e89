"""A deployment's outputs: checked before any work from the files its stages declare, written only when every
verification passed (each whole, under a temporary name first), the report written either way.

A deployment owns the artifact names of its folder: a successful run removes those it did not write this time
(an int8 model of an earlier export beside a new fp32 one would otherwise pass for this model's), and an earlier
``failed-report.json``. A failing run writes ``failed-report.json`` alone and leaves earlier outputs untouched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rfdeploy.artifacts import check_output_dir, check_output_file, write_all
from rfdeploy.stages.base import Run, Stage, planned_files

REPORT_FILE, FAILED_REPORT = "report.json", "failed-report.json"


class Outputs:
    def __init__(self, out: str | Path, owned: Sequence[str], stages: Sequence[Stage], request: Any):
        self.out, self.owned = Path(out), tuple(owned)
        planned = planned_files(stages, request)
        inside = tuple(path.name for path in planned if path.parent == self.out)
        check_output_dir(self.out, (*inside, REPORT_FILE, FAILED_REPORT))
        for path in planned:
            if path.parent != self.out:
                check_output_file(path)

    def write(self, run: Run) -> list[Path]:
        report = json.dumps(run.report, indent=2).encode()
        if not run.passed:
            return write_all(self.out, {FAILED_REPORT: report})
        files = {**run.files, self.out / REPORT_FILE: report}
        folders: dict[Path, dict[str, bytes]] = {}
        for path, data in files.items():
            folders.setdefault(path.parent, {})[path.name] = data() if callable(data) else data
        written = [path for folder, named in folders.items() for path in write_all(folder, named)]
        for name in (*self.owned, FAILED_REPORT):  # what no longer describes this folder
            stale = self.out / name
            if stale not in files and stale.is_file():
                stale.unlink()
        return written
