"""OpenVINO on the CPU: the ONNX model read by ``openvino.Core`` and compiled for one latency stream.

The inference precision is always set. OpenVINO's CPU plugin runs fp32 models in bf16 by itself on CPUs
with AMX or AVX512-BF16, which makes an fp32 verification fail (errors near 1e-2) or, worse, a bf16
benchmark row pass for fp32. ``fp32`` asks for f32 explicitly; ``bf16`` asks for bf16 and is refused on
a CPU without it (OpenVINO would emulate nothing and quietly run f32). ``int8`` runs a QDQ model (its
quantized ops in int8, everything else in f32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from rfdeploy.backends.base import Runner
from rfdeploy.errors import RFDeployError
from rfdeploy.optional import OptionalModule

INSTALL_HINT = "the openvino backend needs OpenVINO: pip install 'rfdeploy[openvino]'"
if TYPE_CHECKING:
    import openvino as ov
else:
    ov = OptionalModule("openvino", INSTALL_HINT, needs="Core")
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def compile_config(threads: int, precision: str) -> dict[str, str]:
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": "1"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def cpu_capabilities() -> list[str]:
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoRunner(Runner):
    def __init__(self, model: onnx.ModelProto, threads: int = 1, precision: str = "fp32"):
        if precision not in INFERENCE_PRECISION:
            raise RFDeployError(f"the openvino backend runs {', '.join(INFERENCE_PRECISION)}, not {precision}")
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            raise RFDeployError("openvino bf16: this CPU has neither AMX nor AVX512-BF16 (OpenVINO would run f32)")
        self.name = "openvino" if precision == "fp32" else f"openvino-{precision}"  # as the registry names it
        core = ov.Core()
        compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU",
                                      compile_config(threads, precision))
        self.request = compiled.create_infer_request()
        self.output_ports = list(compiled.outputs)
        self.feed: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def load(self, inputs: list[torch.Tensor]) -> None:
        self.feed = [t.detach().cpu().float().contiguous().numpy() for t in inputs]

    def run(self) -> None:
        if self.request is None:
            raise RuntimeError(f"the {self.name} runner is closed")
        results = self.request.infer(self.feed)
        self.outputs = [results[port] for port in self.output_ports]

    def fetch(self) -> list[np.ndarray]:
        return [np.array(output, copy=True) for output in self.outputs]

    def close(self) -> None:
        self.request = None
        self.feed, self.outputs = [], []


def check(device: str) -> None:
    ov.require()


def runner(model: onnx.ModelProto, device: str, threads: int, precision: str = "fp32") -> OpenVinoRunner:
    return OpenVinoRunner(model, threads, precision)
