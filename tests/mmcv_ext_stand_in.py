"""A test-only stand-in for mmcv's compiled extension ``mmcv._ext``, which mmcv-lite does not ship.

mmdet imports mmcv.ops, and mmcv.ops asks ``mmcv._ext`` for every compiled kernel at import time. A
detector's tensor-mode forward (backbone, neck, head) calls none of them; anything that does gets a
NotImplementedError naming the kernel, never a silent wrong answer. The one kernel given is ``nms``, in plain
torch, since mmdeploy's NMS runs ``mmcv.ops.nms`` while it traces a detector's post-processing.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Greedy NMS as mmcv's kernel computes it: kept indices, highest score first; ``offset`` 1 counts a box's
    corner pixels into its width and height."""
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for index in order.tolist():
        if suppressed[index]:
            continue
        keep.append(index)
        width = (torch.minimum(x2[index], x2) - torch.maximum(x1[index], x1) + offset).clamp(min=0)
        height = (torch.minimum(y2[index], y2) - torch.maximum(y1[index], y1) + offset).clamp(min=0)
        overlap = width * height
        suppressed |= overlap / (areas[index] + areas - overlap) > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


class _CompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "nms":
            return nms

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: a compiled mmcv op, not available with mmcv-lite")

        return missing


def install() -> None:
    stand_in = _CompiledOps("mmcv._ext")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # importlib.util.find_spec asks for it
    sys.modules.setdefault("mmcv._ext", stand_in)
