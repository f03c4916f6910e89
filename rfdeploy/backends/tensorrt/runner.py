"""Running a serialized engine (its sidecar checked first when it comes from a file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from rfdeploy.backends.base import Runner
from rfdeploy.backends.tensorrt.build import BuildOptions, EngineRequest, build
from rfdeploy.backends.tensorrt.lib import require_cuda, require_tensorrt, trt
from rfdeploy.backends.tensorrt.sidecar import check_setup, current_setup, read_sidecar
from rfdeploy.errors import RFDeployError


def load_engine_bytes(engine_path: str | Path) -> bytes:
    """The engine's bytes, after its sidecar has been checked against this machine."""
    check_setup(read_sidecar(engine_path), current_setup(), engine_path)
    return Path(engine_path).read_bytes()


class TrtRunner(Runner):
    """Runs a serialized engine on PyTorch's current CUDA stream, inputs and outputs in torch tensors."""

    def __init__(self, serialized: bytes, name: str = "tensorrt"):
        require_tensorrt()
        require_cuda()
        self.name = name
        self.trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RFDeployError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    @classmethod
    def from_file(cls, engine_path: str | Path) -> TrtRunner:
        """A saved engine, refused with a clear message where its sidecar names another setup."""
        return cls(load_engine_bytes(engine_path))

    def _torch_dtype(self, name: str) -> torch.dtype:
        return torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.detach().to("cuda", self._torch_dtype(n)).contiguous() for n, t in zip(self.input_names, inputs)]
        for name, tensor in zip(self.input_names, self.inputs):
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.outputs = []
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)
            shape = tuple(dims[i] for i in range(len(dims)))
            self.outputs.append(torch.empty(shape, dtype=self._torch_dtype(name), device="cuda"))
            self.context.set_tensor_address(name, self.outputs[-1].data_ptr())

    def run(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RFDeployError("TensorRT failed to run the engine")

    def fetch(self) -> list[np.ndarray]:
        torch.cuda.current_stream().synchronize()
        return [t.float().cpu().numpy() for t in self.outputs]

    def close(self) -> None:
        """Execution context before engine before runtime: TensorRT frees them in that order."""
        self.inputs, self.outputs = [], []
        for part in ("context", "engine", "runtime"):
            vars(self).pop(part, None)


def check(device: str) -> None:
    require_tensorrt()


def engine_runner(model: onnx.ModelProto, device: str, threads: int, precision: str = "fp32") -> TrtRunner:
    """An engine built for ``model`` at ``precision`` (int8: from the QDQ model), running it."""
    return TrtRunner(build(model.SerializeToString(), EngineRequest(BuildOptions(precision))).engine)
