"""``optimize`` as declared stages: read the graph, tune, lower its searched convs, verify against the input graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from rfdeploy.backends.onnx_export import op_counts
from rfdeploy.compiler.passes.fold_channel_scales import boundaries_after
from rfdeploy.compiler.pipeline import graph_pass_report
from rfdeploy.compiler.rewrite_onnx import compile_graph
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.onnx_graph import check_onnx, read_onnx
from rfdeploy.measure.verify_onnx import input_shapes as graph_input_shapes
from rfdeploy.measure.verify_onnx import verify_graphs
from rfdeploy.stages.base import Progress, Run, Stage, check_stages, run_stages
from rfdeploy.stages.outputs import Outputs

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class OptimizeRequest:
    onnx_path: Path
    out: Path = Path("rfdeploy-out")
    mode: str = "auto"
    input_shapes: list[tuple[int, ...]] | None = None
    atol: float = 1e-4
    rtol: float = 1e-4
    seed: int = 0
    choices: dict[str, str] | None = None
    write: bool = True
    tune: str | None = None
    weights: str = "folded"  # or "shared": one weight per searched conv (``compile_graph``)


def read_stage(run: Run) -> dict:
    return {"original": read_onnx(run.request.onnx_path), "input": str(run.request.onnx_path)}


def tune_stage(run: Run) -> dict:
    request, original = run.request, run["original"]
    if not request.tune:
        return {"choices": request.choices, "tuning": None}
    from rfdeploy.tuning.tune_onnx import tune_graph

    shapes = graph_input_shapes(original, request.input_shapes, str(request.onnx_path))
    run.progress(f"timing each searched conv's lowerings on {request.tune}")
    tuning = tune_graph(original, shapes, request.tune, tick=lambda layer: run.progress(f"tuned {layer}"))
    return {"choices": {**tuning.choices, **(request.choices or {})}, "tuning": tuning.to_json()}


def compile_stage(run: Run) -> dict:
    request, original = run.request, run["original"]
    try:
        result = compile_graph(original, request.mode, run["choices"], weights=request.weights)
    except RFDeployError as error:  # the node or layer at fault, in this file
        raise RFDeployError(f"{request.onnx_path}: {error}") from None
    note = None if result.layers else f"no searched conv rewritten in {request.onnx_path}: the graph is written as it was"
    rewritten = result.model if result.layers else original
    run.files[request.out / MODEL_FILE] = rewritten.SerializeToString()
    return {"compiled": result, "rewritten": rewritten, "mode": request.mode, "weights": request.weights,
            "layers": [layer.to_json() for layer in result.layers],
            "left_alone": [asdict(layer) for layer in result.left_alone], "note": note,
            "graph_passes": graph_pass_report(result.graph_passes), "shared_weight_bytes": result.shared_bytes,
            "file_bytes": {"before": original.ByteSize(), "after": rewritten.ByteSize()},
            "onnx_ops": {"before": op_counts(original), "after": op_counts(rewritten)}}


def verify_stage(run: Run) -> dict:
    """The rewritten graph against the input graph in onnxruntime: the whole graph, or each rewritten subgraph
    where onnxruntime cannot run the whole."""
    request, result = run.request, run["compiled"]
    if not result.layers:
        return {"verification": {"scope": "nothing rewritten", "passed": True}}
    shapes = graph_input_shapes(run["original"], request.input_shapes, str(request.onnx_path))
    boundaries = boundaries_after([(layer.name, layer.input, layer.output) for layer in result.layers],
                                  result.graph_passes)
    verification = verify_graphs(run["original"], run["rewritten"], shapes, boundaries, str(request.onnx_path),
                                 request.atol, request.rtol, request.seed)
    run.passed = bool(verification["passed"])
    check_rewritten(run["rewritten"], request.onnx_path)
    return {"verification": verification}


def check_rewritten(rewritten: onnx.ModelProto, onnx_path: Path) -> None:
    """Only a graph that loads is written: one that does not is rfdeploy's fault, said rather than written."""
    try:
        check_onnx(rewritten, f"{onnx_path}, rewritten")
    except RFDeployError as error:
        raise RFDeployError(f"the rewritten graph is not valid, so it is not written: {error}") from None


OPTIMIZE_STAGES = check_stages((
    Stage("read", read_stage, adds=("original",), report=("input",), progress="reading the graph"),
    Stage("tune", tune_stage, needs=("original",), adds=("choices",), report=("tuning",)),
    Stage("compile", compile_stage, needs=("original", "choices"), adds=("compiled", "rewritten"),
          report=("mode", "weights", "layers", "left_alone", "note", "graph_passes", "shared_weight_bytes", "file_bytes",
                  "onnx_ops"),
          files=lambda request: (request.out / MODEL_FILE,), progress="finding and lowering searched convs"),
    Stage("verify", verify_stage, needs=("original", "compiled", "rewritten"), report=("verification",),
          progress="verifying in onnxruntime"),
))


@dataclass
class OptimizeResult:
    report: dict
    onnx_model: onnx.ModelProto
    out_dir: Path
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["verification"]["passed"])


def run_optimize(request: OptimizeRequest, progress: Progress | None = None) -> OptimizeResult:
    outputs = Outputs(request.out, (MODEL_FILE,), OPTIMIZE_STAGES, request) if request.write else None
    run = run_stages(OPTIMIZE_STAGES, Run(request, progress or (lambda message: None)))
    run.report["stage_seconds"] = run.seconds
    result = OptimizeResult(run.report, run["rewritten"], request.out)
    if outputs is not None:
        result.written = outputs.write(run)
    return result
