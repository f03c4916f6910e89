"""File size and latency of `rfdeploy optimize`'s two weight forms on a searched detector, as docs/benchmarks.md
reports them.

A RetinaNet R-50 FPN built by mmdet 3.3 and searched by mmcv's own RFSearchHook (random weights and alphas), exported
in tensor mode by torch.onnx (the TorchScript exporter: every branch and the alpha arithmetic stay in the graph), then
`rfdeploy optimize --weights folded` and `--weights shared`. The three graphs are timed interleaved, after a warm-up,
on onnxruntime and OpenVINO (CPU). Run from the repository root with the mmdet overlay of `make test`:

    PYTHONPATH=.mmdet:tests .venv/bin/python scripts/shared_weights.py [--size 320] [--rounds 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

import mmcv_ext_stand_in

mmcv_ext_stand_in.install()

from mmcv.cnn.rfsearch import RFSearchHook  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from rfdeploy import api  # noqa: E402
from rfdeploy.backends import make_runner  # noqa: E402
from rfdeploy.measure.timing import summarize, time_interleaved, torch_settings  # noqa: E402

SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
          "mmax": 24, "num_branches": 3, "skip_layer": ["stem"]}
RETINANET_R50 = dict(
    type="RetinaNet",
    backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), norm_cfg=dict(type="BN"),
                  norm_eval=True, style="pytorch"),
    neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
              add_extra_convs="on_input", num_outs=5),
    bbox_head=dict(type="RetinaHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
                   anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                         ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128])))


def searched_retinanet() -> torch.nn.Module:
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(RETINANET_R50))
    RFSearchHook("search", {"search": copy.deepcopy(SEARCH)}, verbose=False).init_model(model)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if hasattr(module, "branch_weights"):
            module.branch_weights.data = torch.randn(module.branch_weights.shape, generator=generator)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    shape = (1, 3, args.size, args.size)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        searched_file = Path(folder) / "searched.onnx"
        torch.onnx.export(searched_retinanet(), (x,), str(searched_file), input_names=["input"], opset_version=17,
                          dynamo=False)
        graphs = {"searched": onnx.load(str(searched_file))}
        for form in ("folded", "shared"):
            result = api.optimize(searched_file, out=Path(folder) / form, weights=form)
            assert result.passed, result.report["verification"]
            graphs[form] = result.onnx_model
    print(f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads; input {shape}")
    for name, graph in graphs.items():
        print(f"{name}: {graph.ByteSize() / 2**20:.1f} MiB")
    for backend in ("onnxruntime", "openvino"):
        with torch_settings(args.threads):
            runners = {name: make_runner(backend, None, [x], threads=args.threads, onnx_model=graph)
                       for name, graph in graphs.items()}
            for runner in runners.values():
                runner.load([x])
            samples = time_interleaved({name: runner.run for name, runner in runners.items()}, 5, args.rounds)
            for runner in runners.values():
                runner.close()
        base = summarize(samples["searched"]).p50_ms
        for name, values in samples.items():
            stats = summarize(values)
            ratios = np.asarray(values) / np.asarray(samples["folded"])
            print(f"{backend} {name}: p50 {stats.p50_ms:.1f} ms (p90 {stats.p90_ms:.1f}), {stats.p50_ms / base:.2f}x "
                  f"searched; per-round ratio to folded: median {np.median(ratios):.3f} "
                  f"[{np.percentile(ratios, 25):.3f}, {np.percentile(ratios, 75):.3f}]")


if __name__ == "__main__":
    main()
