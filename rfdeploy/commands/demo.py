"""``rfdeploy demo``: search-shaped checkpoint made on the spot, then export, verify, report.

It writes an mmcv-format structure file and checkpoint (every searchable 3x3 conv of the zoo's
ResNet-50 searched with three branches around a random centre dilation, random trained-looking alphas)
and runs ``rfdeploy export`` on them, as a user would.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from rfdeploy import models
from rfdeploy.artifacts import write_all
from rfdeploy.commands import export as export_command
from rfdeploy.commands.common import SEED, console
from rfdeploy.loader.searched_model import CONVS

SEARCH_CONFIG = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01,
                 "mmin": 1, "mmax": 24, "num_branches": 3, "skip_layer": ["stem"]}


def searched_files(model_name: str, seed: int) -> tuple[dict, dict]:
    """A structure file and an mmengine checkpoint in mmcv RFSearchHook's format, for a zoo model."""
    model = models.build(model_name)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    structure, state = {}, {}
    searched = {name for name, m in model.named_modules()
                if isinstance(m, CONVS) and any(k > 1 and k % 2 for k in m.kernel_size) and name != "conv1"}
    for key, tensor in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        state[f"backbone.{layer}.op_layer.{leaf}" if layer in searched else f"backbone.{key}"] = tensor
    for layer in sorted(searched):
        structure[f"module.backbone.{layer}"] = [rng.choice([1, 1, 2, 3])] * 2
        state[f"backbone.{layer}.branch_weights"] = torch.rand(3, generator=generator) + 0.05
    return {"search": SEARCH_CONFIG, "structure": structure}, {"meta": {"seed": seed}, "state_dict": state}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="make a small searched model on the spot, export and verify it",
                                   description=__doc__)
    parser.add_argument("--workdir", default="rfdeploy-demo", help="where the demo's searched files go")
    parser.add_argument("--out", help="export output directory (default: WORKDIR/out)")
    parser.add_argument("--input-shape", default="1,3,96,96", help="input shape of the export")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the made-up search: centre dilations and "
                                                            "alphas")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    out = args.out if args.out is not None else str(workdir / "out")
    with console.status("making a searched ResNet-50 checkpoint (mmcv RFSearchHook format)..."):
        structure, checkpoint = searched_files("resnet50", args.seed)
        structure_path, checkpoint_path = workdir / "structure.json", workdir / "searched.pth"
        write_all(workdir, {"structure.json": json.dumps(structure, indent=1).encode()})
        torch.save(checkpoint, workdir / ".searched.pth.tmp")
        (workdir / ".searched.pth.tmp").replace(checkpoint_path)
    console.print(f"wrote {structure_path} ({len(structure['structure'])} searched convs) and {checkpoint_path}")
    console.print(f"$ rfdeploy export --ckpt {checkpoint_path} --structure {structure_path} "
                  f"--input-shape {args.input_shape} --out {out}")
    return export_command.main_from(["--ckpt", str(checkpoint_path), "--structure", str(structure_path),
                                     "--input-shape", args.input_shape, "--out", out])
