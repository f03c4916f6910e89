"""Where a model runs: one module per backend, each giving a ``Runner`` (``base``), all listed in
``registry``."""

from rfdeploy.backends.base import DEVICES, Runner
from rfdeploy.backends.registry import (
    BACKENDS,
    Backend,
    backend,
    check_backends,
    cuda_available,
    make_runner,
    parse_backends,
    require_device,
)

__all__ = ["BACKENDS", "DEVICES", "Backend", "Runner", "backend", "check_backends", "cuda_available",
           "make_runner", "parse_backends", "require_device"]
