"""TensorRT: ONNX -> serialized engine with an optimization profile (``profile``), a persistent timing
cache (``build``), and a JSON sidecar naming the setup it was built for (``sidecar``); loading checks the
sidecar first (``runner``).

TensorRT is optional (``pip install 'rfdeploy[trt]'``) and imported on first use (``lib``). Everything
about shapes and sidecars is plain data and works without it.
"""

from rfdeploy.backends.tensorrt.build import (
    BuildOptions,
    BuiltEngine,
    EngineRequest,
    build,
    build_engine,
    build_serialized,
    default_timing_cache,
    with_export_shapes,
)
from rfdeploy.backends.tensorrt.lib import INSTALL_HINT, require_cuda, require_tensorrt
from rfdeploy.backends.tensorrt.profile import (
    InputProfile,
    NamedShape,
    Shape,
    onnx_inputs,
    parse_named_shape,
    resolve_profile,
)
from rfdeploy.backends.tensorrt.runner import (
    TrtRunner,
    load_engine_bytes,
)
from rfdeploy.backends.tensorrt.sidecar import (
    SIDECAR_SUFFIX,
    Setup,
    Sidecar,
    check_setup,
    current_setup,
    make_sidecar,
    read_sidecar,
    sidecar_path,
)

__all__ = [
    "INSTALL_HINT", "SIDECAR_SUFFIX", "BuildOptions", "BuiltEngine", "EngineRequest",
    "InputProfile", "NamedShape", "Setup", "Shape", "Sidecar", "TrtRunner", "build", "build_engine",
    "build_serialized", "check_setup", "current_setup", "default_timing_cache", "load_engine_bytes", "make_sidecar", "onnx_inputs", "parse_named_shape", "read_sidecar", "require_cuda",
    "require_tensorrt", "resolve_profile", "sidecar_path", "with_export_shapes",
]
