"""What an export costs against a plain ``torch.onnx.export`` of the same searched model (issue 24).

Builds the searched zoo ``res2net101`` with the RF-Next authors' published structure file and times, each in its
own process under ``/usr/bin/time -v`` (wall time, max RSS), interleaved A B A B:

  (a) plain: ``torch.onnx.export`` of the searched model (TorchScript exporter, ``dynamo=False``, as rfdeploy uses),
      called as torch's documentation shows it; ``plain-no-grad``: the same under ``torch.no_grad()``, which keeps
      the tracer from holding every activation for a backward;
  (b) rfdeploy: ``rfdeploy export --model res2net101 --structure ... --input-shape ...``, its report's
      ``stage_seconds`` kept; with ``--baseline DIR``, also the rfdeploy of another checkout (an earlier commit,
      ``git archive COMMIT | tar -x -C DIR``) as ``rfdeploy-baseline``.

    python scripts/export_cost.py [--input-shape 1,3,800,1344] [--rounds 3] [--baseline DIR] [--json]

Every process builds the model the same way, so their difference is what rfdeploy adds beyond the export.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRUCTURE = ROOT / "tests/fixtures/published-structures/res2net101_cascade_mask_rcnn_coco.json"
MODEL = "res2net101"


def plain_export(shape: tuple[int, ...], out: Path, no_grad: bool) -> None:
    """(a), run in a child process: the searched model exported as it is."""
    import contextlib

    import torch

    import rfdeploy

    searched = rfdeploy.load(MODEL, structure=STRUCTURE).searched.eval()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        torch.onnx.export(searched, (torch.randn(*shape),), str(out), dynamo=False, opset_version=17,
                          input_names=["input"], do_constant_folding=True)


def timed(command: list[str], root: Path = ROOT) -> dict:
    """``command`` under ``/usr/bin/time -v``, run in ``root`` (``-m`` imports from the working folder first): its
    wall seconds and max RSS in MB."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], check=False, capture_output=True, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert wall and rss, result.stderr[-2000:]
    hours, minutes, seconds = int(wall.group(1) or 0), int(wall.group(2)), float(wall.group(3))
    return {"wall_s": round(hours * 3600 + minutes * 60 + seconds, 2), "max_rss_mb": round(int(rss.group(1)) / 1024)}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-shape", default="1,3,800,1344")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", type=Path, help="another checkout whose rfdeploy is timed too")
    parser.add_argument("--plain-child", help=argparse.SUPPRESS)  # the ONNX file (a)'s child process writes
    parser.add_argument("--no-grad", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.input_shape.split(","))
    if args.plain_child:
        plain_export(shape, Path(args.plain_child), args.no_grad)
        return
    with tempfile.TemporaryDirectory() as tmp:
        plain = [sys.executable, __file__, "--input-shape", args.input_shape, "--plain-child", f"{tmp}/plain.onnx"]
        export = [sys.executable, "-m", "rfdeploy", "export", "--model", MODEL, "--structure", str(STRUCTURE),
                  "--input-shape", args.input_shape, "--out", f"{tmp}/out"]
        variants = {"plain": (plain, ROOT), "plain-no-grad": (plain + ["--no-grad"], ROOT), "rfdeploy": (export, ROOT)}
        if args.baseline:
            variants["rfdeploy-baseline"] = (export, args.baseline.resolve())
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, (command, root) in variants.items():
                figures = timed(command, root)
                if name.startswith("rfdeploy"):
                    figures["stage_seconds"] = json.loads(Path(f"{tmp}/out/report.json").read_text())["stage_seconds"]
                figures["load_1min"] = os.getloadavg()[0]
                runs[name].append(figures)
                print(f"round {round_ + 1} {name}: {figures}", file=sys.stderr)
    result: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "input_shape": args.input_shape,
                    "rounds": args.rounds, "runs": runs}
    for name, name_runs in runs.items():
        result[name] = {key: summary([run[key] for run in name_runs]) for key in ("wall_s", "max_rss_mb")}
    for name in [name for name in runs if name.startswith("rfdeploy")]:
        for plain_name in ("plain", "plain-no-grad"):
            result[f"{name} / {plain_name}"] = {
                key: round(result[name][key]["median"] / result[plain_name][key]["median"], 2)
                for key in ("wall_s", "max_rss_mb")}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['cpu']} ({result['cores']} cores), {args.input_shape}, {args.rounds} rounds")
    for name, figures in result.items():
        if name in runs or " / " in name:
            print(f"{name}: {figures}")


if __name__ == "__main__":
    main()
