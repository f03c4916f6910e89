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
from typing import Any

import onnx
import torch
from torch import nn

from rfdeploy.backends import BACKENDS, Runner, backend, check_backends, make_runner
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.compiler.pipeline import LayoutChooser, plain_model, run_graph_pipelines, searched_layers
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.searched_model import LoadInfo
from rfdeploy.loader.sources import Loaded
from rfdeploy.measure.timing import (
    Tick,
    device_name,
    summarize,
    time_interleaved,
    torch_settings,
)
from rfdeploy.measure.verify import InputSet, Reference, compare_on, finite_db, random_inputs
from rfdeploy.precision import precision_of
from rfdeploy.quantize.calibration import CalibrationData
from rfdeploy.quantize.deploy import PrecisionRequest, deploy
from rfdeploy.stages.base import Run, Stage, check_stages, run_stages
from rfdeploy.stages.export import CALIBRATE, COMPILE, LOAD, SHAPES, TUNE, ExportRequest, layers_title
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
    searched_layers: int = 0  # the lowered layers: searched convs, or fixed single-branch ones (``layers``)
    involutions: int = 0
    layers: str = ""  # what those layers are, as export's summary says it
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


@dataclass(frozen=True)
class BenchRequest(ExportRequest):
    """What ``bench`` was asked for: the export's model options, and where and how to time it."""

    backends: tuple[str, ...] = ("onnxruntime",)
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    warmup: int = 10
    iters: int = 50
    with_plain: bool = False
    random_alphas: int | None = None  # without a checkpoint: draw the alphas with this seed
    write: bool = False

    @property
    def tune_precision(self) -> str:
        return "fp32"

    def layout_chooser(self, example: list[torch.Tensor], progress: Tick) -> LayoutChooser | None:
        return None  # chosen per backend (``layouts_stage``)


def random_alphas_stage(run: Run) -> dict:
    randomize_alphas(run["loaded"].searched, run.request.random_alphas)
    return {}


def plan_stage(run: Run) -> dict:
    """The rows to time (backend x variant x precision) and the facts of the run."""
    request, compiled = run.request, run["compiled"]
    chosen = variants(run["loaded"].searched, compiled.model, request.with_plain)
    chosen[1].onnx_model = run["onnx_model"]
    rows, skipped = plan_rows(list(request.backends), chosen, list(request.precisions))
    lowerings = {layer.name: layer.lowering for layer in compiled.layers}
    lowerings |= {involution.name: involution.lowering for involution in compiled.involutions}
    tuned = {"tune": request.tune, "tuning": run.report["tuning"]} if request.tune else {}
    return {"rows": rows,
            "inputs": random_inputs(run["shapes"], request.seed), "device": request.device,
            "device_name": device_name(request.device), "threads": request.threads,
            "input_shapes": [list(shape) for shape in run["shapes"]], "warmup": request.warmup, "iters": request.iters,
            "versions": versions(), "cpu_flags": cpu_flags() if request.device == "cpu" else [], "skipped": skipped,
            "compile": {"mode": request.mode, "tuned_layers": len(run["choices"] or {}), "lowerings": lowerings}
            | tuned}


def layouts_stage(run: Run) -> dict:
    """Per ``"BACKEND PRECISION"`` of the compiled rows on ONNX backends (int8 as fp32: its layout is chosen
    before quantizing), the compiled graph in the layout that ran faster there, as ``export`` chooses it."""
    request, inputs = run.request, run["inputs"]
    chosen: dict[str, tuple[onnx.ModelProto, dict]] = {}
    with torch_settings(request.threads):
        for row in run["rows"]:
            precision = precision_of(row.precision).timed_as
            key = f"{row.backend} {precision}"
            if row.variant.name == "compiled" and backend(row.backend).runs_onnx and key not in chosen:
                chosen[key] = choose_layout(run["onnx_model"], row.backend, inputs, precision, request.device,
                                            request.threads, tick=run.progress)
    return {"graphs": {key: graph for key, (graph, _) in chosen.items()},
            "layouts": {key: record for key, (_, record) in chosen.items()}}


def quantize_stage(run: Run) -> dict:
    """Each compiled row's graph: its backend's layout, and at int8 that graph quantized with the choices
    measured on that backend (each graph quantized once)."""
    request, graphs = run.request, run["graphs"]
    int8: dict[str, dict] = {}
    quantized: dict[int, onnx.ModelProto] = {}
    for row in run["rows"]:
        if row.variant.name != "compiled" or not backend(row.backend).runs_onnx:
            continue
        graph = graphs[f"{row.backend} {precision_of(row.precision).timed_as}"]
        if row.precision != "int8":
            row.onnx_model = graph
            continue
        if id(graph) not in quantized:
            quantized[id(graph)], int8[row.backend] = quantized_for_bench(
                graph, row.backend, run["reference"], run["shapes"], request.seed, request.lowered,
                run["calibration"], run.progress)
        row.onnx_model = quantized[id(graph)]
    return {"int8": int8}


def time_stage(run: Run) -> dict:
    request, calibration = run.request, run["calibration"]
    held_out = calibration.held_out if calibration else None
    with torch_settings(request.threads):
        results = bench_rows(run["rows"], run["inputs"], run["reference"], held_out, request.device, request.threads,
                             request.warmup, request.iters, run.progress)
    return {"results": results, "reference": with_ratios(results)}


BENCH_STAGES = check_stages((
    LOAD,
    # before the shape check, whose searched forward verification keeps: it must see the alphas drawn
    Stage("random_alphas", random_alphas_stage, needs=("loaded",),
          when=lambda request: request.random_alphas is not None),
    SHAPES, CALIBRATE, TUNE, COMPILE,
    Stage("plan", plan_stage, needs=("loaded", "compiled", "onnx_model", "shapes", "choices"),
          adds=("rows", "inputs"),
          report=("device", "device_name", "threads", "input_shapes", "warmup", "iters", "versions", "cpu_flags",
                  "skipped", "compile")),
    Stage("layouts", layouts_stage, needs=("rows", "onnx_model", "inputs"), adds=("graphs",), report=("layouts",)),
    Stage("quantize", quantize_stage, needs=("rows", "graphs", "reference", "shapes", "calibration"),
          report=("int8",)),
    Stage("time", time_stage, needs=("rows", "inputs", "reference", "calibration"),
          report=("results", "reference")),
))
FIRST_AFTER_INPUT = 3  # LOAD, random_alphas, SHAPES


def start_bench(request: BenchRequest, loaded: Loaded | None = None) -> Run:
    """The checks, then the stages up to the input shapes (from ``loaded``, where given): a bad input fails here,
    in one line, before any timing."""
    check_bench_precisions(list(request.backends), list(request.precisions))
    check_backends(list(request.backends), request.device)
    if loaded is None:
        return run_stages(BENCH_STAGES[:FIRST_AFTER_INPUT], Run(request))
    return run_stages(BENCH_STAGES[1:FIRST_AFTER_INPUT], Run(request, values={"loaded": loaded}))


def finish_bench(run: Run, tick: Tick | None = None) -> BenchReport:
    """The export's stages up to the compiled graph, then the rows planned, each backend's layout and int8 graph
    made, and every row timed interleaved."""
    run.progress = tick or (lambda text: None)
    report = run_stages(BENCH_STAGES[FIRST_AFTER_INPUT:], run).report
    fields: dict[str, Any] = {name: report[name] for name in BenchReport.__dataclass_fields__ if name in report}
    fields |= {"model": run["loaded"].model_name, "searched_layers": len(report["layers"]),
               "involutions": len(report["involutions"]),
               "layers": layers_title(run["loaded"].info.searched, run["loaded"].info.single_branch,
                                      len(report["layers"]))}
    return BenchReport(**fields)


def run_bench(request: BenchRequest, tick: Tick | None = None) -> BenchReport:
    return finish_bench(start_bench(request), tick)


def bench(searched: nn.Module, input_shapes: list[tuple[int, ...]], backends: list[str], device: str = "cpu",
          warmup: int = 10, iters: int = 50, threads: int = 1, mode: str = "auto",
          choices: dict[str, str] | None = None, seed: int = 0, with_plain: bool = False,
          model_name: str = "", tick: Tick | None = None, precisions: list[str] | None = None,
          precision_request: PrecisionRequest | None = None) -> BenchReport:
    """Each backend runs the searched and the compiled model (and the plain one, if asked) on one input, in
    fp32 and, where it runs them, the compiled model in each lower precision of ``precisions`` (int8
    calibrated as ``precision_request`` says), every row interleaved with every other."""
    precisions = precisions or ["fp32"]
    int8 = replace(precision_request or PrecisionRequest("int8"), precision="int8") if "int8" in precisions else None
    request = BenchRequest(input_shapes=input_shapes, mode=mode, seed=seed, choices=choices, precision=int8,
                           threads=threads, backends=tuple(backends), precisions=tuple(precisions), device=device,
                           warmup=warmup, iters=iters, with_plain=with_plain)
    loaded = Loaded(searched, LoadInfo(), model_name, [tuple(shape) for shape in input_shapes])
    return finish_bench(start_bench(request, loaded), tick)


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
