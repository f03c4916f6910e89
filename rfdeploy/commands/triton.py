"""``rfdeploy triton``: an exported ONNX model or built TensorRT engine -> a Triton Inference Server model
repository, ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/V/model.onnx`` (or ``model.plan`` and its sidecar).

The config follows the model's ONNX signature: names, data types, dims (-1 where symbolic; without the
batch dim where Triton batches). A dynamic-batch model gets ``max_batch_size`` and dynamic batching, a
static one ``max_batch_size: 0`` with full dims. Exporting again under the same name adds a version; a
different model under that name is refused. Start Triton on REPO (see the README) to serve it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rfdeploy.backends.tensorrt import read_sidecar, sidecar_path
from rfdeploy.commands.common import COUNT, add_serving_arguments, console, triton_request_of
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.input_file import regular_file
from rfdeploy.serve import triton


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("triton", help="write a Triton model repository for an ONNX model or engine",
                                   description=__doc__)
    parser.add_argument("model", help="the verified model: DIR/model.onnx or DIR/model.engine (with its sidecar)")
    parser.add_argument("--repo", required=True, help="the Triton model repository folder (required, no default)")
    parser.add_argument("--name", help="model name in the repository (default: the exported model's, read from "
                                       "the report.json beside the file, else the file's name)")
    parser.add_argument("--onnx", help="for an engine: the ONNX model it was built from (default: ENGINE with .onnx)")
    parser.add_argument("--threads", type=COUNT, help="onnxruntime intra-op threads per instance (default: "
                                                    "onnxruntime's); rfdeploy export --tune onnxruntime reports them")
    add_serving_arguments(parser)
    parser.set_defaults(run=run)


def served_model(path: Path, onnx_path: Path | None, threads: int | None) -> triton.ServedModel:
    regular_file(path, "model file")  # a FIFO would block the read
    if path.suffix == ".onnx":
        return triton.served_onnx(path.read_bytes(), str(path), threads)
    if path.suffix in (".engine", ".plan"):
        onnx_path = onnx_path or path.with_suffix(".onnx")
        if not onnx_path.is_file():
            raise RFDeployError(f"{path}: the ONNX model it was built from is needed for its signature; "
                                f"{onnx_path} does not exist (give --onnx)")
        return triton.served_engine(path.read_bytes(), read_sidecar(path), sidecar_path(path).read_bytes(),
                                    onnx_path.read_bytes(), str(onnx_path))
    raise RFDeployError(f"{path}: not an ONNX model (.onnx) or TensorRT engine (.engine, .plan)")


REPORT_BYTES = 64 << 20  # a report.json larger than this is no export's


def export_report(path: Path) -> dict:
    """The report.json beside an exported file, or {} where there is none an export could have written."""
    report = path.parent / "report.json"
    try:
        recorded = json.loads(report.read_bytes()) if report.is_file() and report.stat().st_size < REPORT_BYTES else {}
    except (OSError, ValueError):
        recorded = {}
    return recorded if isinstance(recorded, dict) else {}


def exported_name(path: Path, recorded: dict) -> tuple[str, str]:
    """The name an export's model goes by, and where it came from: the ``model`` (``export``) or ``input``
    (``optimize``) recorded in the report beside it, else the file's stem."""
    report = path.parent / "report.json"
    model, source = recorded.get("model"), recorded.get("input")
    if isinstance(model, str) and model:
        return triton.default_name(model), f"the exported model '{model}' in {report}"
    if isinstance(source, str) and source:
        return triton.default_name(Path(source).stem), f"the optimized graph '{source}' in {report}"
    return triton.default_name(path.stem), f"the file name {path.name}"


def check_int8_format(path: Path, recorded: dict) -> None:
    """An int8 model the report beside it says was made in another backend's format is not served
    (``triton.check_int8_servable``, as ``export --triton`` checks it)."""
    precision = recorded.get("precision")
    if not isinstance(precision, dict) or precision.get("file") != path.name:
        return
    activations = precision.get("activations")
    made = activations.get("format") if isinstance(activations, dict) else None
    if isinstance(made, str):
        triton.check_int8_servable(made, f"{path} (its report.json says)")


def run(args: argparse.Namespace) -> int:
    path = Path(args.model)
    recorded = export_report(path)
    check_int8_format(path, recorded)
    name, origin = exported_name(path, recorded) if args.name is None else (args.name, None)
    wanted = triton_request_of(args, args.repo, name)
    served = served_model(path, Path(args.onnx) if args.onnx else None, args.threads)
    plan = triton.plan_repository(wanted, served)
    print_plan(plan, triton.write_repository(plan), origin)
    return 0


def print_plan(plan: triton.RepositoryPlan, written: list[Path], origin: str | None = None) -> None:
    named = f" (named after {origin}; --name chooses another)" if origin else ""
    console.print(f"Triton model '{plan.model_dir.name}' version {plan.version} in {plan.model_dir.parent}{named}:")
    for path in written:
        console.print(f"wrote {path}")
