"""The ``rfdeploy`` console entry on bad input: a non-zero exit, one ``rfdeploy: error:`` line naming the
file or layer, no traceback, and an earlier good ``--out`` left byte for byte as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import onnx
import pytest
import torch

from rfdeploy import cli

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


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Files:
    """A good export through the real console entry; its outputs are what the failing runs must keep."""
    files = Files(tmp_path_factory.mktemp("cli"))
    result = run_entry(files.args() + ["--json"], cwd=files.root)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    files.report_stdout = result.stdout
    files.before = files.snapshot()
    return files


@pytest.fixture
def files(good, monkeypatch) -> Files:
    monkeypatch.syspath_prepend(str(good.root))
    yield good
    assert good.snapshot() == good.before, "a failed run changed the earlier good output"


# ---------------------------------------------------------------- the good run

def test_good_export_exits_0_and_writes_model_and_report(good):
    assert set(good.before) == {"model.onnx", "report.json"}
    onnx.checker.check_model(onnx.load_from_string(good.before["model.onnx"]))
    report = json.loads(good.before["report.json"])
    assert json.loads(good.report_stdout) == report
    check = report["verification"]
    assert check["passed"] is True
    assert isinstance(check["max_abs_err"], float) and isinstance(check["max_rel_err"], float)
    assert 0 <= check["max_abs_err"] <= 1e-4 and 0 <= check["max_rel_err"] <= 1e-4
    (layer,) = report["layers"]
    assert {"name", "rates", "alphas", "lowering"} <= set(layer)
    assert layer["name"] == "conv2"
    # centre 2, e=0.5, three branches: 1, 2, 3; alphas |[0.3, -0.5, 0.2]| / 1.0
    assert [list(r) for r in layer["rates"]] == [[1, 1], [2, 2], [3, 3]]
    assert layer["alphas"] == pytest.approx([0.3, 0.5, 0.2], abs=1e-6)
    assert isinstance(layer["lowering"], str) and layer["lowering"]


# ---------------------------------------------------------------- bad input: one line, no traceback

def test_missing_checkpoint_file_through_the_real_entry(files):
    missing = files.root / "no-such.pth"
    result = run_entry(files.args(ckpt=missing), cwd=files.root)
    assert_one_line_error(result.returncode, result.stderr, "no-such.pth")


def test_missing_checkpoint_file(files, capsys):
    code, err = run_main(files.args(ckpt=files.root / "no-such.pth"), capsys)
    assert_one_line_error(code, err, "no-such.pth")


def test_truncated_checkpoint(files, capsys):
    data = files.ckpt.read_bytes()
    truncated = files.root / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    code, err = run_main(files.args(ckpt=truncated), capsys)
    assert_one_line_error(code, err, "truncated.pth")


def test_invalid_json_structure(files, capsys):
    broken = files.root / "broken.json"
    broken.write_text('{"search": {"exp_rate": 0.5,')
    code, err = run_main(files.args(structure=broken), capsys)
    assert_one_line_error(code, err, "broken.json")


def test_structure_entry_matching_no_layer(files, capsys):
    structure = files.structure_file("extra-entry.json", {"module.conv2": [2, 2], "module.conv9": [2, 2]})
    code, err = run_main(files.args(structure=structure), capsys)
    assert_one_line_error(code, err, "conv9")


def test_structure_naming_nothing_in_the_model(files, capsys):
    structure = files.structure_file("foreign.json", {"module.backbone.stem.conv": 2, "module.neck.fpn": 3})
    code, err = run_main(files.args(structure=structure), capsys)
    assert_one_line_error(code, err, "foreign.json")


def test_structure_naming_a_non_conv_layer(files, capsys):
    structure = files.structure_file("batchnorm.json", {"module.conv2": [2, 2], "module.bn1": [2, 2]})
    code, err = run_main(files.args(structure=structure), capsys)
    assert_one_line_error(code, err, "bn1")


def test_checkpoint_whose_searched_weight_does_not_fit_the_model(files, capsys):
    state = dict(files.state, **{"conv2.op_layer.weight": torch.randn(4, 4, 5, 5)})
    ckpt = files.checkpoint("wrong-kernel.pth", state)
    code, err = run_main(files.args(ckpt=ckpt), capsys)
    assert_one_line_error(code, err, "wrong-kernel.pth", "conv2")


def test_checkpoint_whose_plain_tensor_does_not_fit_the_model(files, capsys):
    state = dict(files.state, **{"bn1.running_var": torch.ones(6)})
    ckpt = files.checkpoint("wrong-bn.pth", state)
    code, err = run_main(files.args(ckpt=ckpt), capsys)
    assert_one_line_error(code, err, "wrong-bn.pth", "bn1.running_var")


def test_model_that_cannot_be_imported(files, capsys):
    code, err = run_main(files.args(model="no_such_package_xyz.models:build"), capsys)
    assert_one_line_error(code, err, "no_such_package_xyz")


def test_unknown_zoo_model(files, capsys):
    code, err = run_main(files.args(model="resnet9000"), capsys)
    assert_one_line_error(code, err, "resnet9000")


@pytest.mark.parametrize("shape", ["1,3,x,12", "0,3,12,12"])
def test_malformed_input_shape(files, capsys, shape):
    code, err = run_main(files.args(shape=shape), capsys)
    assert_one_line_error(code, err, "--input-shape")


@pytest.mark.parametrize("shape", ["1,5,12,12", "1,3"])
def test_input_shape_that_does_not_fit_the_model(files, capsys, shape):
    code, err = run_main(files.args(shape=shape), capsys)
    assert_one_line_error(code, err, shape)


def test_bench_on_an_input_shape_that_does_not_fit_the_model(capsys):
    code, err = run_main(["bench", "--model", "resnet50", "--input-shape", "1,5,32,32", "--iters", "1",
                          "--warmup", "1"], capsys)
    assert_one_line_error(code, err, "1,5,32,32")
