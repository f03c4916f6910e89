"""Where files go. Outputs appear whole or not at all: written under a temporary name, then moved into
place, with the permissions the umask gives a new file. An output folder is checked before any work, so
that a bad ``--out`` fails in a second, not after minutes of compiling. Caches that outlive a run
(TensorRT timing and engine caches) live under the user's cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rfdeploy.errors import RFDeployError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output_dir(directory: str | Path, names: tuple[str, ...] = ()) -> Path:
    """``directory`` can hold the files ``names``: a folder (or one that can be made) that this user can
    write, with none of ``names`` taken by a folder. Raises the one-line error otherwise; writes nothing."""
    directory = Path(directory)
    existing = _nearest_existing(directory.absolute())
    if existing.is_symlink() and not existing.exists():
        raise RFDeployError(f"output folder {directory}: {existing} is a dangling symbolic link")
    if not existing.is_dir():
        what = "is" if existing == directory.absolute() else f"is under {existing}, which is"
        raise RFDeployError(f"output folder {directory} {what} not a folder")
    for part in directory.absolute().relative_to(existing).parts + names:
        if len(os.fsencode(part)) > _name_max(existing):
            raise RFDeployError(f"output folder {directory}: the name '{part[:40]}...' is too long")
    for name in names:
        if (directory / name).is_dir():
            raise RFDeployError(f"output {directory / name} is a folder; it would be replaced by a file")
        if os.path.lexists(directory / name) and not (directory / name).is_file():
            raise RFDeployError(f"output {directory / name} is not a regular file; it would be replaced by one")
    try:  # the only sure test of writability (read-only mounts, immutable folders, root ignoring modes)
        tempfile.TemporaryDirectory(prefix=".rfdeploy-check.", dir=existing).cleanup()
    except OSError as error:
        raise RFDeployError(f"output folder {directory}: cannot write in {existing} ({error.strerror})") from None
    return directory


def write_all(directory: Path, files: dict[str, bytes]) -> list[Path]:
    """Every file complete under a temporary name first; then each moved into place."""
    check_output_dir(directory, tuple(files))
    staged: list[tuple[str, Path]] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            with os.fdopen(handle, "wb") as file:
                os.fchmod(file.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
                file.write(data)
            staged.append((name, Path(temporary)))
        for name, staged_path in staged:
            os.replace(staged_path, directory / name)
    except BaseException as error:
        for _, staged_path in staged:
            staged_path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise RFDeployError(f"cannot write {directory}: {error.strerror or error}") from None
        raise
    return [directory / name for name in files]


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/rfdeploy/NAME`` (default ``~/.cache/rfdeploy/NAME``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfdeploy" / name


def check_output_file(path: str | Path) -> Path:
    """``path`` can be written: its folder exists and takes a new file of that name."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RFDeployError(f"{path}: the folder {path.parent} does not exist")
    check_output_dir(path.parent, (path.name,))
    return path
