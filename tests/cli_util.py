"""A tiny searched model on disk and the ways the CLI tests run rfdeploy: the real console entry in a fresh
interpreter, or ``rfdeploy.cli.main`` in this one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import traceback
import warnings
from pathlib import Path

import torch

from rfdeploy import api, cli

MODULE = "rfdeploy_cli_tiny_net"  # a module name no other test uses
MODEL = f"{MODULE}:build"
SHAPE = "1,3,12,12"
SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
          "mmax": 24, "num_branches": 3, "skip_layer": []}

TINY_NET = textwrap.dedent("""
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv2(torch.relu(self.bn1(self.conv1(x))))


    def build():
        torch.manual_seed(0)
        return Tiny().eval()
""")


class Files:
    """A tiny searched model on disk (mmcv format) and a good export of it in ``out``."""

    def __init__(self, root: Path):
        self.root = root
        (root / f"{MODULE}.py").write_text(TINY_NET)
        generator = torch.Generator().manual_seed(1)
        self.state = {
            "conv1.weight": torch.randn(4, 3, 3, 3, generator=generator), "conv1.bias": torch.randn(4),
            "bn1.weight": torch.rand(4) + 0.5, "bn1.bias": torch.randn(4), "bn1.running_mean": torch.randn(4),
            "bn1.running_var": torch.rand(4) + 0.5, "bn1.num_batches_tracked": torch.tensor(10),
            "conv2.op_layer.weight": torch.randn(4, 4, 3, 3, generator=generator),
            "conv2.op_layer.bias": torch.randn(4, generator=generator),
            "conv2.branch_weights": torch.tensor([0.3, -0.5, 0.2]),
        }
        self.ckpt = self.checkpoint("searched.pth", self.state)
        self.structure = self.structure_file("structure.json", {"module.conv2": [2, 2]})
        self.out = root / "out"

    def checkpoint(self, name: str, state: dict) -> Path:
        torch.save({"meta": {"epoch": 1}, "state_dict": state}, self.root / name)
        return self.root / name

    def structure_file(self, name: str, entries: dict) -> Path:
        (self.root / name).write_text(json.dumps({"search": SEARCH, "structure": entries}))
        return self.root / name

    def args(self, model=MODEL, ckpt=None, structure=None, shape=SHAPE) -> list[str]:
        argv = ["export", "--model", model, "--ckpt", str(ckpt or self.ckpt),
                "--structure", str(structure or self.structure), "--out", str(self.out)]
        return argv + (["--input-shape", shape] if shape else [])

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())}


def run_entry(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real console entry in a fresh interpreter."""
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny model: one thread, on a small shared CPU
    return subprocess.run([sys.executable, "-m", "rfdeploy", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``rfdeploy.cli.main`` in this process, as the interpreter would end it: an uncaught exception
    prints its traceback on stderr and exits 1."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # noqa: BLE001  (what python -m would do with it)
        traceback.print_exc()
        code = 1
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, *names: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert code != 0
    assert len(lines) == 1, stderr
    assert lines[0].startswith("rfdeploy: error:"), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"


def tiny_model() -> torch.nn.Module:
    """The plain network of ``TINY_NET``, built in this process."""
    namespace: dict = {}
    exec(TINY_NET, namespace)  # noqa: S102  # our own source text
    return namespace["build"]()


def searched_onnx_bytes(files: Files) -> bytes:
    """The tiny searched model as a generic exporter writes it (``torch.onnx.export``): conv1, then conv2's
    three branches, their scaling ``Mul`` nodes and the ``Abs``/``ReduceSum``/``Div``/``Gather`` alpha chain."""
    searched = api.load(tiny_model(), files.ckpt, files.structure).searched.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(searched, (torch.randn(1, 3, 12, 12),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return buffer.getvalue()
