"""Benchmarks: the searched model as trained against rfdeploy's compiled model, per backend and precision.

Every row (backend x variant x precision) is timed in the same run, interleaved (one run of each in
turn, the order rotating every round) after a warm-up, so that drift in the machine's speed hits all
rows alike. A CPU run is timed by the wall clock; a CUDA run by CUDA events around the call, with
PyTorch in full fp32 (no TF32; see ``torch_settings``). Accuracy is measured against PyTorch's searched
fp32 forward: on the timed input, and for int8 on the held-out calibration batches. Ratios are to the
searched fp32 model on onnxruntime (else on the first backend).
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from rfdeploy.backends import BACKENDS, Runner, backend, check_backends, make_runner
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.compiler.pipeline import compile_model, plain_model, run_graph_pipelines, searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.measure.timing import (
    Tick,
    device_name,
    summarize,
    time_interleaved,
    torch_settings,
)
from rfdeploy.measure.verify import InputSet, Reference, compare_on, finite_db, random_inputs
from rfdeploy.quantize.calibration import CalibrationData
from rfdeploy.quantize.deploy import PrecisionRequest, calibration_for, deploy
from rfdeploy.tuning.layout import choose_layout

VARIANTS = ("searched", "compiled")


# --- variants -----------------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    model: nn.Module
    exact: bool = True  # computes the searched function; else a cost reference, whose errors mean nothing
    onnx_model: onnx.ModelProto | None = None  # exported once, shared by the ONNX backends
    graph_passes: bool = True  # the ONNX graph ``export`` writes; else the exporter's own

    def onnx_for(self, example: list[torch.Tensor]) -> onnx.ModelProto:
        if self.onnx_model is None:
            exported = export_onnx(self.model, example)
            # the searched model runs as exported: every branch and the alpha arithmetic stay in the graph
            self.onnx_model = run_graph_pipelines(exported)[0] if self.graph_passes else exported
        return self.onnx_model


def variants(searched: nn.Module, compiled: nn.Module, with_plain: bool = False) -> list[Variant]:
    chosen = [Variant("searched", searched, graph_passes=False), Variant("compiled", compiled)]
    return chosen + [Variant("plain", plain_model(searched), exact=False)] if with_plain else chosen


# --- the benchmark ------------------------------------------------------------------------------------

@dataclass
class BenchResult:
    backend: str
    variant: str
    device: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # inputs per second at the median latency
    max_abs_err: float | None  # None for a cost reference (not an exact model)
    max_rel_err: float | None
    iters: int
    precision: str = "fp32"
    snr_db: float | None = None  # None: no difference at all, or a cost reference
    ratio: float | None = None  # p50 / the reference row's p50 (``BenchReport.reference``)


@dataclass
class BenchReport:
    model: str
    device: str
    device_name: str
    threads: int
    input_shapes: list[list[int]]
    warmup: int
    iters: int
    versions: dict[str, str]
    searched_layers: int = 0
    involutions: int = 0
    results: list[BenchResult] = field(default_factory=list)
    compile: dict = field(default_factory=dict)
    reference: str = ""  # the row ratios are to: "BACKEND searched fp32"
    cpu_flags: list[str] = field(default_factory=list)  # those that decide int8 / bf16 speed
    int8: dict = field(default_factory=dict)  # per backend whose graph was quantized: how (as export reports it)
    skipped: list[str] = field(default_factory=list)  # "BACKEND PRECISION" pairs the backend does not run
    layouts: dict = field(default_factory=dict)  # "BACKEND PRECISION" -> the compiled graph's layout choice

    def speedups(self) -> dict[str, float]:
        """Per backend: searched median / compiled median, both fp32 (above 1: compiled is faster)."""
        p50 = {(r.backend, r.variant): r.p50_ms for r in self.results if r.precision == "fp32"}
        return {backend: p50[(backend, "searched")] / p50[(backend, "compiled")]
                for backend, variant in p50 if variant == "compiled" and (backend, "searched") in p50}

    def to_json(self) -> dict:
        return asdict(self) | {"speedups": self.speedups()}


def versions() -> dict[str, str]:
    import onnxruntime

    found = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import openvino

        found["openvino"] = openvino.__version__
    return found


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


def cpu_flags() -> list[str]:
    """The CPU's flags that decide int8 and bf16 speed (VNNI, AVX512-BF16, AMX), from ``/proc/cpuinfo``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in SPEED_FLAGS if flag in present]
    return []


@dataclass
class Row:
    """One timed runner: a variant of the model on a backend at a precision."""

    backend: str
    variant: Variant
    precision: str = "fp32"
    onnx_model: onnx.ModelProto | None = None  # at int8, the quantized model

    @property
    def key(self) -> str:
        return f"{self.backend} {self.variant.name} {self.precision}"


def plan_rows(backends: list[str], chosen: list[Variant], precisions: list[str]) -> tuple[list[Row], list[str]]:
    """fp32: every variant on every backend; a lower precision: the compiled variant, on each backend that
    runs it. Also the backend-precision pairs left out, as ``"BACKEND PRECISION"``."""
    rows, skipped = [], []
    for name in backends:
        for precision in precisions:
            if precision not in backend(name).precisions:
                skipped.append(f"{name} {precision}")
                continue
            rows += [Row(name, v, precision) for v in chosen if precision == "fp32" or v.name == "compiled"]
    return rows, skipped


def planned_ticks(rows: int, warmup: int, iters: int) -> int:
    """How many times ``bench`` calls ``tick``: one set-up and one accuracy check per row, plus runs."""
    return rows * (2 + warmup + iters)


def bench_rows(rows: list[Row], inputs: list[torch.Tensor], reference: Reference, int8_sets: list[InputSet] | None,
               device: str, threads: int, warmup: int, iters: int, tick: Tick) -> list[BenchResult]:
    timed = InputSet("bench input", tuple(inputs))
    with contextlib.ExitStack() as open_runners:
        runners: dict[str, Runner] = {}
        for row in rows:
            tick(f"preparing {row.key}")
            onnx_model = row.onnx_model
            if onnx_model is None and backend(row.backend).runs_onnx:
                onnx_model = row.variant.onnx_for(inputs)
            runners[row.key] = open_runners.enter_context(
                make_runner(row.backend, row.variant.model, inputs, device, threads, onnx_model, row.precision))
        errors = {}
        for row in rows:
            tick(f"checking {row.key}")
            sets = int8_sets if row.precision == "int8" and int8_sets else [timed]
            errors[row.key] = compare_on(runners[row.key], reference, sets) if row.variant.exact else None
            runners[row.key].load(inputs)
        samples = time_interleaved({key: runner.run for key, runner in runners.items()}, warmup, iters, device, tick)
    batch = int(inputs[0].shape[0])
    results = []
    for row in rows:
        stats, error = summarize(samples[row.key]), errors[row.key]
        results.append(BenchResult(
            row.backend, row.variant.name, device, stats.p50_ms, stats.p90_ms, stats.p99_ms, stats.mean_ms,
            stats.min_ms, batch * 1e3 / stats.p50_ms, error.max_abs if error else None,
            error.max_rel if error else None, stats.iters, row.precision,
            finite_db(error.snr_db) if error else None))
    return results


def with_ratios(results: list[BenchResult]) -> str:
    """Sets each row's ratio to the searched fp32 model on onnxruntime (else the first searched fp32 row);
    returns that row's name."""
    searched = [r for r in results if r.variant == "searched" and r.precision == "fp32"]
    if not searched:
        return ""
    reference = next((r for r in searched if r.backend == "onnxruntime"), searched[0])
    for r in results:
        r.ratio = r.p50_ms / reference.p50_ms
    return f"{reference.backend} searched fp32"


def bench(searched: nn.Module, input_shapes: list[tuple[int, ...]], backends: list[str], device: str = "cpu",
          warmup: int = 10, iters: int = 50, threads: int = 1, mode: str = "auto",
          choices: dict[str, str] | None = None, seed: int = 0, with_plain: bool = False,
          model_name: str = "", tick: Tick | None = None, precisions: list[str] | None = None,
          precision_request: PrecisionRequest | None = None) -> BenchReport:
    """Each backend runs the searched and the compiled model (and the plain one, if asked) on one input, in
    fp32 and, where it runs them, the compiled model in each lower precision of ``precisions`` (int8
    calibrated as ``precision_request`` says), every row interleaved with every other."""
    precisions = precisions or ["fp32"]
    check_bench_precisions(backends, precisions)
    check_backends(backends, device)
    tick = tick or (lambda text: None)
    compiled = compile_model(searched, mode, choices=choices, input_shapes=input_shapes)
    chosen = variants(searched, compiled.model, with_plain)
    inputs = random_inputs(input_shapes, seed)
    reference = Reference(searched)
    report = BenchReport(model_name, device, device_name(device), threads, [list(s) for s in input_shapes],
                         warmup, iters, versions(), len(compiled.layers), len(compiled.involutions),
                         cpu_flags=cpu_flags() if device == "cpu" else [])
    report.compile = {"mode": mode, "tuned_layers": len(choices or {}),
                      "lowerings": {layer.name: layer.lowering for layer in compiled.layers}
                      | {involution.name: involution.lowering for involution in compiled.involutions}}
    rows, report.skipped = plan_rows(backends, chosen, precisions)
    with torch_settings(threads):
        compiled_onnx = per_backend_layouts(rows, chosen[1].onnx_for(inputs), inputs, device, threads, tick)
    report.layouts = {key: record for key, (_, record) in compiled_onnx.items()}
    request = replace(precision_request or PrecisionRequest("int8"), precision="int8")
    calibration = None  # read once (images decoded once) for every graph quantized
    if any(row.precision == "int8" for row in rows):
        input_names = [value.name for value in chosen[1].onnx_for(inputs).graph.input]
        calibration = calibration_for(request, input_shapes, seed, input_names)
    int8_sets = calibration.held_out if calibration else None
    quantized: dict[int, onnx.ModelProto] = {}  # per compiled graph (by id): its int8 model
    for row in rows:
        if row.variant.name != "compiled" or not backend(row.backend).runs_onnx:
            continue
        graph = compiled_onnx[f"{row.backend} {'fp32' if row.precision == 'int8' else row.precision}"][0]
        if row.precision != "int8":
            row.onnx_model = graph
            continue
        if id(graph) not in quantized:
            quantized[id(graph)], report.int8[row.backend] = quantized_for_bench(
                graph, row.backend, reference, input_shapes, seed, request, calibration, tick)
        row.onnx_model = quantized[id(graph)]
    with torch_settings(threads):
        report.results = bench_rows(rows, inputs, reference, int8_sets, device, threads, warmup, iters, tick)
    report.reference = with_ratios(report.results)
    return report


def per_backend_layouts(rows: list[Row], compiled_onnx: onnx.ModelProto, inputs: list[torch.Tensor], device: str,
                        threads: int, tick: Tick) -> dict[str, tuple[onnx.ModelProto, dict]]:
    """Per ``"BACKEND PRECISION"`` of the compiled rows on ONNX backends (int8 as fp32: its layout is chosen
    before quantizing), the compiled graph in the layout that ran faster there, as ``export`` chooses it."""
    chosen: dict[str, tuple[onnx.ModelProto, dict]] = {}
    for row in rows:
        precision = "fp32" if row.precision == "int8" else row.precision
        key = f"{row.backend} {precision}"
        if row.variant.name == "compiled" and backend(row.backend).runs_onnx and key not in chosen:
            chosen[key] = choose_layout(compiled_onnx, row.backend, inputs, precision, device, threads, tick=tick)
    return chosen


def check_bench_precisions(backends: list[str], precisions: list[str]) -> None:
    """Every precision asked for must run on one of the backends."""
    for precision in precisions:
        if not any(precision in backend(name).precisions for name in backends):
            runs_it = [name for name, entry in BACKENDS.items() if precision in entry.precisions]
            raise RFDeployError(f"--precisions {precision}: none of --backends {','.join(backends)} runs it "
                                f"({precision} runs on {', '.join(runs_it)})")


def quantized_for_bench(compiled_onnx: onnx.ModelProto, target: str, reference: Reference,
                        shapes: list[tuple[int, ...]], seed: int, request: PrecisionRequest,
                        calibration: CalibrationData | None, tick: Tick) -> tuple[onnx.ModelProto, dict]:
    """The compiled model in int8, as ``export --precision int8 --verify-backends TARGET`` makes it (its
    choices measured on ``target``), and the report of it."""
    tick("calibrating and quantizing the compiled model to int8")
    result = deploy(replace(request, backends=(target,)), compiled_onnx, reference, shapes, seed, [], tick, calibration)
    assert result.model is not None
    return result.model, result.to_json() | {"warnings": result.warnings}


def free_cores() -> tuple[int, int, float]:
    """``(free, usable, load)``: about how many of the cores this process may use are idle.

    ``usable`` is the affinity mask (what a container or taskset allows, often fewer than the machine's
    cores); ``load`` is the 1-minute load average, the machine's runnable tasks. It counts every core
    while the mask may not, so ``usable - load`` (at least 1) errs towards too few free cores: a warning
    too many costs nothing, while intra-op threads that wait for a core slow PyTorch down many times.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, round(usable - load)), usable, load


def randomize_alphas(searched: nn.Module, seed: int) -> int:
    """Trained-looking alphas (uniform in [0.05, 1.05)) for every searched conv; how many were set.

    For timing a structure file without its checkpoint: the cost of a layer does not depend on its alphas.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = searched_layers(searched)
    with torch.no_grad():
        for _, layer in layers:
            layer.alphas.copy_(torch.rand(layer.alphas.shape, generator=generator) + 0.05)
    return len(layers)
