"""Optional dependencies (TensorRT, matplotlib): imported on first use, missing ones named with how to
install them.

A module is declared once, at the top of the file that uses it::

    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = OptionalModule("tensorrt", TENSORRT_HINT, needs="Builder")

so that type checkers see the real module and nothing is imported until an attribute is read.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from rfdeploy.errors import RFDeployError


class OptionalModule:
    """A module imported on first attribute access; ``RFDeployError(hint)`` where it cannot be.

    ``needs`` names an attribute the real package has: ``tensorrt-stubs`` installs a ``tensorrt``
    folder of ``.pyi`` files that imports as an empty namespace package. ``setup`` runs once before
    the import (matplotlib's backend must be chosen before pyplot loads).
    """

    def __init__(self, name: str, hint: str, needs: str | None = None, setup: Callable[[], None] | None = None):
        self._name, self._hint, self._needs, self._setup = name, hint, needs, setup
        self._module: ModuleType | None = None

    def require(self) -> ModuleType:
        """The module, imported now; raises the install hint where it is missing."""
        if self._module is None:
            try:
                if self._setup is not None:
                    self._setup()
                module = importlib.import_module(self._name)
            except ImportError:
                raise RFDeployError(self._hint) from None
            if self._needs is not None and not hasattr(module, self._needs):
                raise RFDeployError(self._hint)
            self._module = module
        return self._module

    def available(self) -> bool:
        try:
            self.require()
        except RFDeployError:
            return False
        return True

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):  # our own fields before __init__ set them (copy, pickle), dunders
            raise AttributeError(attribute)
        return getattr(self.require(), attribute)


@contextlib.contextmanager
def prints_to_stderr() -> Iterator[None]:
    """What optional packages print (mmengine's logger, onnxruntime's calibrators) goes to stderr while they run:
    stdout holds ``--json`` output alone. At the file descriptor, so that a handler that took ``sys.stdout``
    before, or a C library, is redirected too."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
