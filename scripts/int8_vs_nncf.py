"""rfdeploy's int8 against NNCF, onnxruntime's quantizer, the naive export and onnxslim, as docs/benchmarks.md
reports them (issue 24).

One searched model (a zoo name with the RF-Next authors' published structure, random weights and alphas, seeded),
224x224. Calibration on 32 natural-image crops and SNR on 16 crops of other photographs (rfdeploy's export holds out
4 more crops of those for its own checks), all from scikit-image's bundled ones, preprocessed with ImageNet's mean and std; SNR against the searched fp32 PyTorch forward, the worst of
the 16 crops (as rfdeploy's own verification states it). Every variant on both CPU backends is timed in one
interleaved run (one call of each per round, the order rotating), after a warm-up; ratios are to the naive fp32
export's median on the same backend. Needs the comparison extras: `.venv/bin/pip install -e ".[compare]"`.

    .venv/bin/python scripts/int8_vs_nncf.py --model res2net50 [--rounds 60] [--warmup 10] [--threads 2]
        [--work DIR] [--rebuild NAME,...] [--no-timing]

``--work`` keeps every artifact (the slow NNCF quantizations are reused by a later run; ``--rebuild rfdeploy``
rebuilds rfdeploy's own).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from rfdeploy import api
from rfdeploy.backends.onnx_export import export_onnx
from rfdeploy.backends.onnxruntime_backend import session_options
from rfdeploy.backends.openvino_backend import compile_config
from rfdeploy.measure.timing import interquartile_ms, summarize, time_interleaved
from rfdeploy.measure.verify import compare, reference_outputs
from rfdeploy.quantize.calibration import IMAGENET_MEAN, IMAGENET_STD
from rfdeploy.quantize.deploy import PrecisionRequest
from rfdeploy.stages.bench import cpu_flags, randomize_alphas

STRUCTURES = {"res2net50": "res2net50_panoptic_fpn_coco.json", "convnext_tiny": "convnext_t_cascade_mask_rcnn_coco.json"}
# photographs only (no drawings, text or masks); calibration and evaluation crops come from different ones
CALIBRATION_IMAGES = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "moon",
                      "grass", "brick", "cell")
EVALUATION_IMAGES = ("chelsea", "retina", "coins", "gravel", "clock")
SIZE = 224


def crops(names: tuple[str, ...], count: int, seed: int) -> list[np.ndarray]:
    """``count`` SIZE x SIZE RGB uint8 crops, round robin over the photographs, each a random square of half
    to all of the shorter side, resized."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [np.asarray(getattr(data, name)()) for name in names]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.uniform(0.5, 1.0) * min(photo.shape[:2]))
        top, left = (int(rng.integers(0, photo.shape[axis] - side + 1)) for axis in (0, 1))
        square = Image.fromarray(photo[top:top + side, left:left + side])
        out.append(np.asarray(square.resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
    return out


def normalised(crop: np.ndarray) -> np.ndarray:
    pixels = crop.astype(np.float32)
    return ((pixels - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(2, 0, 1)[None].copy()


def searched_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    structure = Path("tests/fixtures/published-structures") / STRUCTURES[name]
    loaded = api.load(name, None, structure)
    randomize_alphas(loaded.searched, 0)
    return loaded.searched.eval()


@dataclass
class Artifact:
    name: str  # the row's label
    backend: str  # onnxruntime or openvino
    path: Path  # .onnx or OpenVINO .xml
    precision: str = "fp32"  # what OpenVINO is told to run (bf16: its inference precision hint)


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def ov_runner(path: Path, threads: int, precision: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  compile_config(threads, "bf16" if precision == "bf16" else "fp32"))
    request = compiled.create_infer_request()
    ports = list(compiled.outputs)

    def run(x: np.ndarray) -> list[np.ndarray]:
        results = request.infer([x])
        return [np.array(results[port]) for port in ports]
    return run


def snr_db(outputs: list[list[np.ndarray]], references: list[list[np.ndarray]]) -> float:
    """The worst crop's worst output, as rfdeploy's verification states it (``measure.verify.compare``)."""
    return min(compare(list(got), expected).snr_db for got, expected in zip(outputs, references))


class Builder:
    """Each artifact built once into ``work`` (kept between runs unless named in ``rebuild``)."""

    def __init__(self, work: Path, rebuild: set[str]):
        self.work, self.rebuild = work, rebuild

    def path(self, name: str, suffix: str = ".onnx") -> Path:
        return self.work / f"{name}{suffix}"

    def fresh(self, name: str, group: str, suffix: str = ".onnx") -> bool:
        return self.path(name, suffix).exists() and group not in self.rebuild and "all" not in self.rebuild


def nncf_onnx(builder: Builder, name: str, source: Path, calibration: list[np.ndarray], **options) -> Path:
    import nncf

    if not builder.fresh(name, "nncf"):
        model = onnx.load(str(source))
        input_name = model.graph.input[0].name
        start = time.perf_counter()
        quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {input_name: x}),
                                  subset_size=len(calibration), **options)
        onnx.save(quantized, str(builder.path(name)))
        print(f"  {name}: {time.perf_counter() - start:.0f} s")
    return builder.path(name)


def nncf_ir(builder: Builder, name: str, source: Path, calibration: list[np.ndarray]) -> Path:
    import nncf
    import openvino as ov

    if not builder.fresh(name, "nncf", ".xml"):
        start = time.perf_counter()
        quantized = nncf.quantize(ov.convert_model(str(source)), nncf.Dataset(calibration),
                                  subset_size=len(calibration))
        ov.save_model(quantized, str(builder.path(name, ".xml")), compress_to_fp16=False)
        print(f"  {name}: {time.perf_counter() - start:.0f} s")
    return builder.path(name, ".xml")


def ort_quantize_static(builder: Builder, source: Path, calibration: list[np.ndarray]) -> Path:
    """onnxruntime's ``quantize_static`` with its defaults (QDQ, int8 activations and weights, per tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"input": item}

    name = "ort_quantize_static"
    if not builder.fresh(name, "ort"):
        quantize_static(str(source), str(builder.path(name)), Reader())
    return builder.path(name)


def rfdeploy_export(builder: Builder, model: torch.nn.Module, target: str, folder: Path) -> dict:
    """``rfdeploy export --precision int8 --calib FOLDER --calib-count 32 --target TARGET``, as the API runs it."""
    out = builder.work / f"rfdeploy-{target}"
    if not (out / "model.int8.onnx").exists() or "rfdeploy" in builder.rebuild or "all" in builder.rebuild:
        start = time.perf_counter()
        result = api.export(model, input_shapes=[(1, 3, SIZE, SIZE)], out=out, target=target,
                            precision=PrecisionRequest("int8", calib=str(folder), calib_count=32))
        report = result.report
        (builder.work / f"rfdeploy-{target}.json").write_text(json.dumps(
            {"passed": result.passed, "precision": report.get("precision"), "seconds": time.perf_counter() - start}))
        print(f"  rfdeploy --target {target}: {time.perf_counter() - start:.0f} s, passed {result.passed}")
    return json.loads((builder.work / f"rfdeploy-{target}.json").read_text())


def build_all(builder: Builder, model: torch.nn.Module, calibration: list[np.ndarray], folder: Path) -> list[Artifact]:
    import onnxslim

    example = [torch.from_numpy(calibration[0])]
    naive = builder.path("naive")
    if not builder.fresh("naive", "naive"):
        onnx.save(export_onnx(model, example), str(naive))
    slim = builder.path("onnxslim")
    if not builder.fresh("onnxslim", "naive"):
        onnx.save(onnxslim.slim(onnx.load(str(naive))), str(slim))
    reports = {target: rfdeploy_export(builder, model, target, folder) for target in ("onnxruntime", "openvino")}
    for target, report in reports.items():
        ops = (report.get("precision") or {}).get("quantized_ops") or {}
        print(f"  rfdeploy --target {target}: int8 ops kept {ops.get('kept')} ({ops.get('decided_by')})")
    ort_fp32, ov_fp32 = (builder.work / f"rfdeploy-{t}" / "model.onnx" for t in ("onnxruntime", "openvino"))
    ort_int8, ov_int8 = (builder.work / f"rfdeploy-{t}" / "model.int8.onnx" for t in ("onnxruntime", "openvino"))
    import nncf

    nncf_naive = nncf_onnx(builder, "nncf_onnx_naive", naive, calibration)
    nncf_compiled = nncf_onnx(builder, "nncf_onnx_compiled", ort_fp32, calibration)
    nncf_mixed = nncf_onnx(builder, "nncf_onnx_compiled_mixed", ort_fp32, calibration,
                           preset=nncf.QuantizationPreset.MIXED)
    ir_naive = nncf_ir(builder, "nncf_ir_naive", naive, calibration)
    ir_compiled = nncf_ir(builder, "nncf_ir_compiled", ov_fp32, calibration)
    ort_static = ort_quantize_static(builder, naive, calibration)
    ort, ov, both = ("onnxruntime",), ("openvino",), ("onnxruntime", "openvino")
    rows = [("naive fp32", naive, both), ("onnxslim fp32", slim, both),  # label, model, backends, in table order
            ("rfdeploy fp32", ort_fp32, ort), ("rfdeploy fp32 (--target openvino)", ov_fp32, ov),
            ("rfdeploy int8 (--target openvino)", ov_int8, ov),
            ("rfdeploy int8 (--target onnxruntime)", ort_int8, both),
            ("NNCF ONNX QDQ, naive graph", nncf_naive, both), ("NNCF ONNX QDQ, rfdeploy's graph", nncf_compiled, both),
            ("NNCF ONNX QDQ MIXED preset, rfdeploy's graph", nncf_mixed, ort),
            ("NNCF OpenVINO IR, naive graph", ir_naive, ov), ("NNCF OpenVINO IR, rfdeploy's graph", ir_compiled, ov),
            ("onnxruntime quantize_static defaults, naive graph", ort_static, both)]
    bf16 = Artifact("rfdeploy fp32 (--target openvino) in bf16", "openvino", ov_fp32, "bf16")
    return [Artifact(label, backend, path) for backend in both for label, path, backends in rows
            if backend in backends] + [bf16]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(STRUCTURES), required=True)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--rebuild", default="", help="comma-separated: rfdeploy, nncf, ort, naive, all")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = args.work or Path(tempfile.mkdtemp(prefix=f"int8-vs-nncf-{args.model}-"))
    (work / "crops").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    calibration_crops = crops(CALIBRATION_IMAGES, 32, seed=1)
    other_crops = crops(EVALUATION_IMAGES, 20, seed=2)
    held_out_crops, evaluation_crops = other_crops[:4], other_crops[4:]
    # rfdeploy's export: 32 crops calibrate, the next 4 are held out for its own verification and choices; none of
    # them is among the 16 every variant is evaluated on
    for index, crop in enumerate(calibration_crops + held_out_crops):
        Image.fromarray(crop).save(work / "crops" / f"{index:02d}.png")
    calibration = [normalised(c) for c in calibration_crops]
    evaluation = [normalised(c) for c in evaluation_crops]
    model = searched_model(args.model)
    with torch.no_grad():
        references = [reference_outputs(model, [torch.from_numpy(x)]) for x in evaluation]
    print(f"building into {work}")
    artifacts = build_all(Builder(work, set(filter(None, args.rebuild.split(",")))), model, calibration,
                          work / "crops")
    runs: dict[str, Callable[[], object]] = {}
    rows = []
    for artifact in artifacts:
        label = f"{artifact.backend}: {artifact.name}"
        try:
            run = (ort_runner(artifact.path, args.threads) if artifact.backend == "onnxruntime"
                   else ov_runner(artifact.path, args.threads, artifact.precision))
        except RuntimeError as error:  # OpenVINO cannot compile the naive graph quantized by onnxruntime
            failure = next((line for line in str(error).splitlines() if "CALLBACK" in line), str(error).splitlines()[-1])
            rows.append({"backend": artifact.backend, "variant": artifact.name, "fails": failure[:160]})
            print(f"  {label}: does not compile: {failure[:160]}")
            continue
        snr = snr_db([list(run(x)) for x in evaluation], references)
        rows.append({"backend": artifact.backend, "variant": artifact.name, "snr_db": round(snr, 1)})
        runs[label] = (lambda run=run: run(evaluation[0]))
        print(f"  {label}: {snr:.1f} dB", flush=True)
    if not args.no_timing:
        print(f"timing {len(runs)} variants interleaved: {args.warmup} warm-up rounds, {args.rounds} rounds")
        samples = time_interleaved(runs, args.warmup, args.rounds)
        for row, label in zip([row for row in rows if "fails" not in row], runs):
            stats = summarize(samples[label])
            naive = summarize(samples[f"{row['backend']}: naive fp32"]).p50_ms
            row.update(p50_ms=round(stats.p50_ms, 2), iqr_ms=round(interquartile_ms(samples[label]), 2),
                       ratio=round(stats.p50_ms / naive, 3))
    flags = [f for f in cpu_flags() if any(k in f for k in ("vnni", "bf16", "amx", "avx512f"))]
    print(f"\n{args.model}, CPU: {platform.processor() or platform.machine()} ({' '.join(flags)}), "
          f"{args.threads} threads, {args.rounds} rounds")
    print("| backend | variant | median ms (IQR) | ratio to naive fp32 | SNR dB |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        timing = f"{row['p50_ms']} ({row['iqr_ms']}) | {row['ratio']}" if "ratio" in row else "- | -"
        print(f"| {row['backend']} | {row['variant']} | {timing} | {row.get('snr_db', 'does not compile')} |")
    (work / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
