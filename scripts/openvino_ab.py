"""Repeated interleaved timing of OpenVINO models (ONNX or IR) on one evaluation crop of scripts/int8_vs_nncf.py:
--runs runs of --rounds rounds (one call of each model per round, the order rotating) after --warmup rounds; per run,
each model's median and IQR in ms. docs/benchmarks.md, "int8 against NNCF".

    .venv/bin/python scripts/openvino_ab.py MODEL [MODEL ...] [--runs 3] [--rounds 100] [--warmup 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import int8_vs_nncf as bench

from rfdeploy.measure.timing import interquartile_ms, summarize, time_interleaved
from rfdeploy.stages.bench import cpu_flags


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    x = bench.normalised(bench.crops(bench.EVALUATION_IMAGES, 1, seed=2)[0])
    runners = {str(path): bench.ov_runner(path, 2, "int8") for path in args.models}
    flags = [f for f in cpu_flags() if any(k in f for k in ("vnni", "bf16", "amx", "avx512f"))]
    print(f"CPU flags: {' '.join(flags)}; " + "; ".join(f"{i}: {path}" for i, path in enumerate(runners)))
    for run in range(args.runs):
        samples = time_interleaved({name: (lambda r=r: r(x)) for name, r in runners.items()}, args.warmup, args.rounds)
        print(f"run {run}: " + "  ".join(f"[{i}] {summarize(samples[name]).p50_ms:.2f} "
                                        f"({interquartile_ms(samples[name]):.2f})" for i, name in enumerate(runners)),
              flush=True)


if __name__ == "__main__":
    main()
