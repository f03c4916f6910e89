"""Input files are checked before they are opened: a folder, a FIFO or a device is refused, never read
(reading a FIFO blocks for ever)."""

from __future__ import annotations

from pathlib import Path

from rfdeploy.errors import RFDeployError


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path when it names a regular file (or a link to one); the one-line error otherwise."""
    path = Path(path)
    if not path.exists():
        raise RFDeployError(f"{path}: no such {what}")
    if path.is_dir():
        raise RFDeployError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise RFDeployError(f"{path}: not a regular file (a pipe or a device?), not a {what}")
    return path


def looks_like(path: Path) -> str | None:
    """What the first bytes say the file is, ``"structure file"`` (a JSON object) or ``"checkpoint"`` (a zip
    archive, as torch.save writes, or a pickle), for the error when one is given for the other."""
    with path.open("rb") as file:
        head = file.read(64)
    if head.lstrip()[:1] == b"{":
        return "structure file"
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return "checkpoint"
    return None
