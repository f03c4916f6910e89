"""Calibration data for int8: the user's samples (or random ones), split into calibration and held-out sets.

``--calib PATH`` is an ``.npy`` (one input: samples along the first axis), an ``.npz`` (one array per
input, by name or in order, samples along the first axis), or a folder of images preprocessed as the
model's config states it (``ImagePreprocess``). Samples are grouped into batches of the export's batch
size. The first ``count`` batches calibrate; the batches after them (at most ``HELD_OUT``) are held out
for verification, so that the int8 model is never judged on the data that set its scales.
``--calib random`` calibrates on seeded random inputs and verifies on other seeded random inputs: it
proves the deployment runs, not that it is accurate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.input_file import regular_file
from rfdeploy.measure.io_files import arrays_per_input, read_arrays
from rfdeploy.measure.verify import InputSet, random_inputs, seeded_inputs
from rfdeploy.optional import OptionalModule
from rfdeploy.shapes import shape_text

if TYPE_CHECKING:
    from PIL import Image
else:
    Image = OptionalModule("PIL.Image", "reading calibration images needs Pillow: pip install 'rfdeploy[images]'")

RANDOM = "random"
HELD_OUT = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# mmdet / mmpretrain's ImageNet statistics (their configs' data_preprocessor), on 0-255 RGB pixels
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
MAX_IMAGE_SIDE = 8192  # a calibration size's side: each image becomes 3 x H x W float32 (768 MiB at most)


@dataclass(frozen=True)
class ImagePreprocess:
    """Image -> input tensor, as mmdet / mmpretrain configs state it: resize so that the image covers the
    input size, centre crop to it, ``(pixel - mean) / std`` per channel, in RGB order (``bgr``: BGR, for
    models trained on OpenCV's order without ``to_rgb``/``bgr_to_rgb``)."""

    size: tuple[int, int] | None = None  # (H, W); None: the export's input size
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bgr: bool = False

    def __post_init__(self):
        if self.size is not None and not all(1 <= side <= MAX_IMAGE_SIDE for side in self.size):
            raise RFDeployError(f"--calib-size {','.join(map(str, self.size))}: each side must be 1 to "
                                f"{MAX_IMAGE_SIDE} pixels")


@dataclass
class CalibrationData:
    source: str
    calibration: list[InputSet]
    held_out: list[InputSet]
    warnings: list[str] = field(default_factory=list)

    @property
    def is_random(self) -> bool:
        return self.source == RANDOM

    def to_json(self) -> dict:
        return {"source": self.source, "calibration_sets": len(self.calibration),
                "held_out_sets": [s.source for s in self.held_out], "random": self.is_random}


def require_calibration(spec: str | None) -> str:
    """``spec``; int8 without calibration data is refused, naming ``--calib``."""
    if spec is None:
        raise RFDeployError("int8 needs calibration data: give --calib PATH (.npy, .npz or a folder of images), "
                            "or --calib random to deploy without (its accuracy then says nothing)")
    return spec


def calibration_data(spec: str | None, shapes: list[tuple[int, ...]], count: int, seed: int = 0,
                     preprocess: ImagePreprocess | None = None, input_names: list[str] | None = None
                     ) -> CalibrationData:
    """``count`` calibration batches and the held-out ones, from ``spec`` (a path or ``random``)."""
    spec = require_calibration(spec)
    if spec == RANDOM:
        calibration = [InputSet(f"calibration seed {seed + 1000 + i}", tuple(random_inputs(shapes, seed + 1000 + i)))
                       for i in range(count)]
        warning = ("--calib random: calibrated and verified on random inputs, so the int8 SNR says nothing of "
                   "accuracy on real data; calibrate on real samples with --calib PATH")
        return CalibrationData(RANDOM, calibration, seeded_inputs(shapes, seed), [warning])
    path = Path(spec)
    if path.is_dir():
        files, preprocess = _image_files(path, shapes), preprocess or ImagePreprocess()
        size = preprocess.size or (shapes[0][2], shapes[0][3])
        samples = [np.stack([_image_tensor(file, size, preprocess) for file in files])]
        labels = [f"{path.name}/{file.name}" for file in files]
    else:
        samples = _array_samples(path, shapes, input_names or [f"input{i}" for i in range(len(shapes))])
        labels = [f"{path.name}[{i}]" for i in range(len(samples[0]))]
    return _split(str(path), _batches(samples, shapes, labels), count)


def _split(source: str, batches: list[InputSet], count: int) -> CalibrationData:
    if len(batches) < 2:
        raise RFDeployError(f"{source}: {len(batches)} batch(es) of samples; int8 needs at least 2, one to "
                            f"calibrate and one held out to verify on")
    held = min(HELD_OUT, max(1, len(batches) // 5), len(batches) - 1)
    used = min(count, len(batches) - held)
    warnings = [] if used == count else [
        f"{source}: {len(batches)} batch(es), so {used} calibrate (not --calib-count {count}) and {held} held out"]
    return CalibrationData(source, batches[:used], batches[used:used + held], warnings)


def _batches(samples: list[np.ndarray], shapes: list[tuple[int, ...]], labels: list[str]) -> list[InputSet]:
    """Per input, samples along the first axis -> input sets of the export's batch size, each named by its
    samples (``calib.npy[8]``, ``images/0008.jpg``; a batch of several by its first and last)."""
    batch = shapes[0][0]
    sets = []
    for start in range(0, len(samples[0]) - batch + 1, batch):
        named = labels[start] if batch == 1 else f"{labels[start]}..{labels[start + batch - 1]}"
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(s[start:start + batch], dtype=np.float32))
                        for s in samples)
        sets.append(InputSet(named, tensors))
    return sets


def _array_samples(path: Path, shapes: list[tuple[int, ...]], input_names: list[str]) -> list[np.ndarray]:
    chosen = arrays_per_input(path, read_arrays(path, "calibration"), input_names)
    for name, array, shape in zip(input_names, chosen, shapes):
        if array.dtype.kind not in "fiu" or tuple(array.shape[1:]) != tuple(shape[1:]):
            raise RFDeployError(f"{path}: '{name}' is {array.dtype} of shape {list(array.shape)}; calibration "
                                f"samples of this input are K,{shape_text(shape[1:])}")
        if not np.isfinite(array).all():
            raise RFDeployError(f"{path}: '{name}' holds NaN or infinite values")
    if len({len(array) for array in chosen}) != 1:
        raise RFDeployError(f"{path}: the inputs hold different numbers of samples")
    return chosen


def _image_files(folder: Path, shapes: list[tuple[int, ...]]) -> list[Path]:
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][1] != 3:
        raise RFDeployError(f"{folder}: images calibrate models of one N,3,H,W input; give an .npz for this one")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RFDeployError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _image_tensor(path: Path, size: tuple[int, int], preprocess: ImagePreprocess) -> np.ndarray:
    regular_file(path, "calibration image")  # a FIFO named like an image would block Image.open for ever
    try:
        with warnings.catch_warnings():  # Pillow warns of images over its pixel limit: refused here, not read
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RFDeployError(f"{path}: not a readable image ({first_line(error)})") from None
    height, width = size
    scale = max(height / image.height, width / image.width)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.BILINEAR)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    pixels = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32)
    if preprocess.bgr:
        pixels = pixels[..., ::-1]
    normalised = (pixels - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    return normalised.transpose(2, 0, 1)
