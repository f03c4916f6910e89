"""Set-up on a normal machine: the torch build the Makefile installs, a warning-free install, ignored outputs."""

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
needs_git = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git clone")


def planned_commands(*arguments: str, tmp_path: Path) -> str:
    venv = tmp_path / "venv"
    result = subprocess.run(["make", "-n", f"VENV={venv}", *arguments, f"{venv}/.ready"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return result.stdout


@needs_make
def test_make_installs_the_cpu_torch_by_default_and_falls_back_to_the_plain_pin(tmp_path):
    commands = planned_commands(tmp_path=tmp_path)
    first, _, fallback = commands.partition("||")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in first
    assert "--timeout 5 --retries 0" in first  # an unreachable index fails fast instead of hanging
    assert "pip install -q torch==2.13.0" in fallback


@needs_make
def test_make_torch_build_cuda_installs_the_plain_pin(tmp_path):
    commands = planned_commands("TORCH_BUILD=cuda", tmp_path=tmp_path)
    assert "whl/cpu" not in commands
    assert "pip install -q torch==2.13.0" in commands


def test_pyproject_has_no_setuptools_deprecation():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")


@needs_git
@pytest.mark.parametrize("output", ["rfdeploy-demo/structure.json", "rfdeploy-out/model.onnx"])
def test_default_output_folders_are_ignored_by_git(output):
    assert subprocess.run(["git", "check-ignore", "-q", output], cwd=ROOT, check=False).returncode == 0
