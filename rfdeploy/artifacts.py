"""Where files go. Outputs appear whole or not at all: written under a temporary name, then moved into
place. Caches that outlive a run (TensorRT timing and engine caches) live under the user's cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_all(directory: Path, files: dict[str, bytes]) -> list[Path]:
    """Every file complete under a temporary name first; then each moved into place."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, data in files.items():
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            staged.append((name, Path(temporary)))
        for name, staged_path in staged:
            os.replace(staged_path, directory / name)
    except BaseException:
        for _, staged_path in staged:
            staged_path.unlink(missing_ok=True)
        raise
    return [directory / name for name in files]


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/rfdeploy/NAME`` (default ``~/.cache/rfdeploy/NAME``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfdeploy" / name
