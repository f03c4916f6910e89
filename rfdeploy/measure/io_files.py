"""Verification on the user's own data, and its record: ``--inputs FILE.npz`` in, ``--save-io FILE.npz`` out.

Polygraphy's ``--load-inputs`` / ``--save-outputs`` habit, in numpy's own format, never pickled either way.
An inputs file holds one array per model input, by input name (``input``, or ``input0``, ``input1``, ...)
or, failing that, in the file's order. A saved file holds, per verification input set ``K``, ``K/NAME`` for
every input and for every output of the searched model, and ``sources``: where each set came from.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.measure.verify import InputSet, Reference

DEFLATE_RATIO = 1032  # deflate's largest expansion


def read_arrays(path: Path, what: str = "inputs") -> dict[str, np.ndarray]:
    """The arrays of an .npz (by name) or .npy (``arr_0``), never unpickled."""
    if not path.is_file():
        raise RFDeployError(f"{path}: no such {what} file")
    try:
        _check_declared_sizes(path)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a bare .npy: one array
            return {"arr_0": loaded}
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, MemoryError, NotImplementedError, zipfile.BadZipFile) as error:
        raise RFDeployError(f"{path}: not a readable .npz/.npy of {what} arrays ({first_line(error)})") from None


def _check_declared_sizes(path: Path) -> None:
    """Every array's header promises no more bytes than its file (or zip member) holds: numpy allocates what
    the header says before it reads, so a header of 100 GiB in a file of 1 KiB would exhaust memory."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as file:
                        _check_header(file, _most_bytes(member), f"array '{member.filename[:-4]}'")
    else:
        with path.open("rb") as file:
            _check_header(file, path.stat().st_size, "its array")


def _most_bytes(member: zipfile.ZipInfo) -> int:
    """What a zip member can hold: its stated size, which deflate cannot make over 1032 times its stream."""
    if member.compress_type == zipfile.ZIP_DEFLATED:
        return min(member.file_size, member.compress_size * DEFLATE_RATIO)
    return member.file_size


def _check_header(file, size: int, what: str) -> None:
    version = np.lib.format.read_magic(file)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(file)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > size - file.tell():
        raise ValueError(f"{what} declares shape {list(shape)} of {dtype} ({declared} bytes) in "
                         f"{size - file.tell()} bytes of data")


def arrays_per_input(path: Path, arrays: dict[str, np.ndarray], input_names: list[str]) -> list[np.ndarray]:
    """One array per model input: by input name where the file names them all, else in the file's order."""
    if set(input_names) <= set(arrays):
        return [arrays[name] for name in input_names]
    if len(arrays) == len(input_names):
        return list(arrays.values())
    raise RFDeployError(f"{path}: holds {len(arrays)} array(s) ({', '.join(list(arrays)[:4])}), the model takes "
                        f"{len(input_names)} input(s): name them {', '.join(input_names)}")


def load_inputs(path: str | Path, input_names: list[str]) -> InputSet:
    """The model's inputs from ``path``, by name or in order, as float32 tensors."""
    path = Path(path)
    chosen = arrays_per_input(path, read_arrays(path), input_names)
    tensors = []
    for name, array in zip(input_names, chosen):
        if array.dtype.kind not in "fiu" or array.ndim < 2:
            raise RFDeployError(f"{path}: input '{name}' is {array.dtype} of shape {list(array.shape)}, not a real "
                                f"array N,C,...")
        if not np.isfinite(array).all():
            raise RFDeployError(f"{path}: input '{name}' holds NaN or infinite values")
        tensors.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return InputSet(path.name, tuple(tensors))


def io_bytes(sets: list[InputSet], reference: Reference, input_names: list[str], output_names: list[str]) -> bytes:
    """Every input set and the searched model's outputs on it, as an .npz: ``sources``, then ``INDEX/NAME``."""
    arrays: dict[str, np.ndarray] = {"sources": np.array([s.source for s in sets])}
    for index, inputs in enumerate(sets):
        arrays.update({f"{index}/{name}": t.numpy() for name, t in zip(input_names, inputs.tensors)})
        outputs = reference.outputs(inputs)
        arrays.update({f"{index}/{name}": a.astype(np.float32) for name, a in zip(output_names, outputs)})
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()
