"""A clone with nothing beside it: the tests that read the published structure files pass in a copy of
the project placed where no ``../shared`` (or anything else) sits next to it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from zoo_util import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
READERS_OF_PUBLISHED_FILES = [
    "tests/test_zoo_hrnet_mstcn.py::test_hrnet_names_match_published_structure",
    "tests/test_zoo_resnets.py::test_published_structure_names_the_searchable_convs",
    "tests/test_zoo_convnext_pvt.py::test_published_structure_names_exactly_the_searchable_convs",
]


def test_published_structures_are_inside_the_project():
    assert PUBLISHED.is_relative_to(ROOT)
    assert len(list(PUBLISHED.glob("*.json"))) == 5
    assert "Apache-2.0" in (PUBLISHED / "README.md").read_text()


def test_tests_pass_in_a_copy_with_nothing_beside_it(tmp_path):
    clone = tmp_path / "alone" / "rfdeploy"
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for part in ("rfdeploy", "tests"):
        shutil.copytree(ROOT / part, clone / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", clone)
    env = dict(os.environ, PYTHONPATH=str(clone), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *READERS_OF_PUBLISHED_FILES], cwd=clone, env=env, capture_output=True, text=True, check=False,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-1]
