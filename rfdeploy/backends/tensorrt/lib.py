"""TensorRT itself: imported on first use, so that everything else in this package works without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rfdeploy.errors import RFDeployError
from rfdeploy.optional import OptionalModule

INSTALL_HINT = "TensorRT is not installed: pip install 'rfdeploy[trt]' (it needs an NVIDIA GPU with CUDA)"

# ``needs``: tensorrt-stubs installs a ``tensorrt`` folder of ``.pyi`` files only, which imports as an empty
# namespace package; the real one has ``Builder``.
_TENSORRT = OptionalModule("tensorrt", INSTALL_HINT, needs="Builder")
if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = _TENSORRT


def require_tensorrt() -> None:
    """Raise the install hint unless the real TensorRT package is importable."""
    _TENSORRT.require()


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RFDeployError("TensorRT needs an NVIDIA GPU, and PyTorch sees no CUDA device on this machine")
