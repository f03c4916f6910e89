"""A test-only stand-in for mmcv's compiled extension ``mmcv._ext``, which mmcv-lite does not ship.

mmdet imports mmcv.ops, and mmcv.ops asks ``mmcv._ext`` for every compiled kernel at import time. A
detector's tensor-mode forward (backbone, neck, head) calls none of them; anything that does gets a
NotImplementedError naming the kernel, never a silent wrong answer.
"""

from __future__ import annotations

import sys
import types


class _CompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: a compiled mmcv op, not available with mmcv-lite")

        return missing


def install() -> None:
    sys.modules.setdefault("mmcv._ext", _CompiledOps("mmcv._ext"))
