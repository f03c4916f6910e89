"""onnxruntime: the CPU execution provider, or CUDA / TensorRT providers where onnxruntime-gpu has them.

Sessions get an explicit intra-op thread count (timings are meaningless without one) and no
inter-op parallelism. Busy-waiting of idle worker threads is off: with several sessions timed in
turn on few cores, one session's spinning workers would steal the cores of the next.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rfdeploy.artifacts import cache_dir
from rfdeploy.backends.base import Runner
from rfdeploy.errors import RFDeployError

GPU_HINT = "pip install 'rfdeploy[gpu]' (onnxruntime-gpu, needs an NVIDIA GPU)"


Provider = str | tuple[str, dict[str, Any]]
# onnxruntime logs a failing run or load as a coloured [E:onnxruntime:...] line on stderr before raising;
# rfdeploy reports the exception in its one error line, so only fatal messages are left to the log
QUIET = 4
ort.set_default_logger_severity(QUIET)


def providers(device: str, tensorrt: bool = False) -> list[Provider]:
    """The execution providers for ``device``, best first; CUDA ones only where onnxruntime has them.

    With ``tensorrt``, onnxruntime's TensorRT provider comes first (CUDA then takes what TensorRT cannot),
    with its engine and timing caches on disk: it builds engines at a session's first run. It has no
    option to clear TensorRT's TF32 flag, so its fp32 errors can reach TF32's (about 1e-3); bench reports them.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise RFDeployError(f"onnxruntime {ort.__version__} has no CUDA execution provider: {GPU_HINT}")
    # onnxruntime's CUDA provider runs fp32 convs and GEMMs in TF32 unless told not to (PyTorch: bench.torch_settings)
    wanted: list[Provider] = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise RFDeployError(f"onnxruntime {ort.__version__} has no TensorRT execution provider: {GPU_HINT}")
        wanted.insert(0, ("TensorrtExecutionProvider", tensorrt_provider_options()))
    return wanted


def tensorrt_provider_options() -> dict[str, Any]:
    cache = str(cache_dir("onnxruntime-trt"))
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = QUIET
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(model: onnx.ModelProto, device: str = "cpu", threads: int = 1,
            tensorrt: bool = False) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                providers=providers(device, tensorrt))


class OrtRunner(Runner):
    """Runs a session; on CUDA, inputs and outputs stay in device memory through an IO binding."""

    def __init__(self, model: onnx.ModelProto, device: str = "cpu", threads: int = 1, tensorrt: bool = False):
        self.name = "onnxruntime-trt" if tensorrt else f"onnxruntime-{device}"
        self.device = device
        self.session: ort.InferenceSession | None = session(model, device, threads, tensorrt)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.feed: dict[str, np.ndarray] = {}
        self.outputs: list[np.ndarray] = []
        self.binding = self.session.io_binding() if device == "cuda" else None
        self.device_inputs: list[torch.Tensor] = []

    def load(self, inputs: list[torch.Tensor]) -> None:
        if self.binding is None:
            self.feed = {name: t.detach().cpu().float().numpy() for name, t in zip(self.input_names, inputs)}
            return
        self.device_inputs = [t.detach().float().contiguous().cuda() for t in inputs]
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        for name, tensor in zip(self.input_names, self.device_inputs):
            self.binding.bind_input(name, "cuda", tensor.device.index or 0, np.float32, list(tensor.shape),
                                    tensor.data_ptr())
        for name in self.output_names:
            self.binding.bind_output(name, "cuda")

    def run(self) -> None:
        if self.session is None:
            raise RuntimeError(f"the {self.name} runner is closed")
        if self.binding is None:
            self.outputs = self.session.run(None, self.feed)
        else:
            self.session.run_with_iobinding(self.binding)

    def fetch(self) -> list[np.ndarray]:
        if self.binding is None:
            return list(self.outputs)
        return list(self.binding.copy_outputs_to_cpu())

    def close(self) -> None:
        self.session = self.binding = None
        self.feed, self.outputs, self.device_inputs = {}, [], []


def check(device: str) -> None:
    providers(device)


def check_with_tensorrt(device: str) -> None:
    providers(device, tensorrt=True)


def runner(model: onnx.ModelProto, device: str, threads: int, precision: str = "fp32") -> OrtRunner:
    """At ``int8`` the model is a QDQ model, which onnxruntime runs with int8 kernels as it is."""
    return OrtRunner(model, device, threads)


def runner_with_tensorrt(model: onnx.ModelProto, device: str, threads: int, precision: str = "fp32") -> OrtRunner:
    return OrtRunner(model, device, threads, tensorrt=True)
