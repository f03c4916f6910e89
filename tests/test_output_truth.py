"""What rfdeploy prints and writes must be true (issue 22): stdout holds a command's output and nothing
else, names and counts say what the model is, and the messages name what went wrong."""

from __future__ import annotations

import subprocess
import sys

from cli_util import run_entry


def test_models_table_is_the_commands_output_on_stdout(tmp_path):
    run = run_entry(["models"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "resnet50" in run.stdout and "res2net50" in run.stdout
    assert run.stderr == ""


def test_models_json_into_a_pipe_closed_early_ends_normally(tmp_path):
    shell = f"{sys.executable} -m rfdeploy models --json | head -2"
    run = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["{", '  "models": [']
    assert run.stderr == ""
