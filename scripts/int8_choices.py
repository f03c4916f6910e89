"""The SNR of each int8 op set and range method in each backend's activation format, on the crops and against the
searched fp32 forward of scripts/int8_vs_nncf.py, quantizing the fp32 graph each `--target` export wrote there (run
int8_vs_nncf.py with the same --work first). docs/benchmarks.md, "int8 against NNCF".

    .venv/bin/python scripts/int8_choices.py --model res2net50 --work /tmp/r50 [--methods percentile,mse]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).parent))
import int8_vs_nncf as bench

from rfdeploy.backends import backend
from rfdeploy.measure.verify import InputSet, reference_outputs
from rfdeploy.quantize.int8 import METHODS, OP_SETS, Int8Quantizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(bench.STRUCTURES), required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--methods", default="percentile,mse")
    args = parser.parse_args()
    calibration = [bench.normalised(c) for c in bench.crops(bench.CALIBRATION_IMAGES, 32, seed=1)]
    evaluation = [bench.normalised(c) for c in bench.crops(bench.EVALUATION_IMAGES, 16, seed=2)]
    model = bench.searched_model(args.model)
    references = [reference_outputs(model, [torch.from_numpy(x)]) for x in evaluation]
    sets = [InputSet(f"crop {i}", (torch.from_numpy(x),)) for i, x in enumerate(calibration)]
    runners = {"onnxruntime": lambda path: bench.ort_runner(path, 2),
               "openvino": lambda path: bench.ov_runner(path, 2, "int8")}
    print("| backend (activation format) | method | " + " | ".join(OP_SETS) + " |")
    print("| --- | --- |" + " --- |" * len(OP_SETS))
    for target, run_on in runners.items():
        fp32 = onnx.load(args.work / f"rfdeploy-{target}" / "model.onnx")
        activations = backend(target).int8_activations
        for method in args.methods.split(","):
            assert method in METHODS, method
            with Int8Quantizer(fp32, sets, method, activations) as quantizer:
                row = []
                for ops in OP_SETS:
                    path = args.work / f"choice-{target}-{method}-{ops}.onnx"
                    onnx.save(quantizer.quantize(ops=ops), path)
                    runner = run_on(path)
                    row.append(f"{bench.snr_db([runner(x) for x in evaluation], references):.2f}")
            print(f"| {target} ({activations}) | {method} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
