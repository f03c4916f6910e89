"""What rfdeploy prints and writes must be true (issue 22): stdout holds a command's output and nothing
else, names and counts say what the model is, and the messages name what went wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import torch
from cli_util import MODEL, SHAPE, Files, assert_one_line_error, run_entry, run_main
from test_tensorrt import has_tensorrt

from rfdeploy import cli, models
from rfdeploy.cli import command_parsers


def test_models_table_is_the_commands_output_on_stdout(tmp_path):
    run = run_entry(["models"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "resnet50" in run.stdout and "res2net50" in run.stdout
    assert run.stderr == ""


def test_models_json_into_a_pipe_closed_early_ends_normally(tmp_path):
    shell = f"{sys.executable} -m rfdeploy models --json | head -2"
    run = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["{", '  "models": [']
    assert run.stderr == ""


@pytest.fixture
def files(tmp_path, monkeypatch) -> Files:
    monkeypatch.syspath_prepend(str(tmp_path))  # the tiny model's module
    return Files(tmp_path)


def test_a_mistyped_option_is_named_with_the_commands_nearest_option(files, capsys):
    argv = files.args(shape=None) + ["--input_shape", SHAPE]
    code, err = run_main(argv, capsys)
    assert code == 2
    assert_one_line_error(code, err, "--input_shape", "did you mean --input-shape", "rfdeploy export --help")


def test_swapped_checkpoint_and_structure_say_which_file_is_which(files, capsys):
    code, err = run_main(files.args(ckpt=files.structure, structure=files.ckpt), capsys)
    assert_one_line_error(code, err, str(files.structure), "looks like a structure file")
    argv = ["analyze", "--model", "resnet50", "--structure", str(files.ckpt), "--input-size", "32"]
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err, str(files.ckpt), "looks like a checkpoint")


def test_dynamic_batch_and_dynamic_shape_are_alternatives(files, capsys):
    code, err = run_main(files.args() + ["--dynamic-batch", "--dynamic-shape"], capsys)
    assert_one_line_error(code, err, "--dynamic-shape", "--dynamic-batch")
    assert not files.out.exists()


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed here")
def test_tune_on_tensorrt_without_tensorrt_says_tensorrt_is_missing(files, capsys):
    code, err = run_main(files.args() + ["--tune", "tensorrt"], capsys)
    assert_one_line_error(code, err, "--tune tensorrt", "TensorRT")
    assert "--device" not in err  # export has no --device


def test_export_help_lists_every_tunable_backend():
    text = " ".join(command_parsers(cli.build_parser())["export"].format_help().split())
    for name in ("torch", "onnxruntime", "openvino", "onnxruntime-trt", "tensorrt"):
        assert f"{name}," in text or f"{name};" in text, name


def test_a_non_string_checkpoint_key_is_counted_with_the_tensors_that_fit_no_layer(files, capsys):
    ckpt = files.checkpoint("odd.pth", {**files.state, "stray.weight": torch.zeros(1), 7: torch.zeros(1)})
    code, _ = run_main(files.args(ckpt=ckpt) + ["--json"], capsys)
    assert code == 0
    notes = json.loads((files.out / "report.json").read_text())["load"]["notes"]
    assert any(note.startswith("2 checkpoint tensor(s) fit no layer") for note in notes), notes


def test_a_dynamic_exports_signature_is_printed_with_its_symbols(files, capsys):
    code, err = run_main(files.args() + ["--dynamic-shape"], capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("model.onnx:"))
    assert "inputs input float32 [batch, 3, height, width]; outputs output float32 [batch, 4, " in line, line


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_json_stdout_is_json_alone_with_a_histogram_calibrator(files, method):
    argv = files.args() + ["--json", "--precision", "int8", "--calib", "random", "--calib-count", "2",
                           "--calib-method", method, "--min-snr", "0"]
    run = run_entry(argv, cwd=files.root)
    assert run.returncode == 0, run.stderr
    calibration = json.loads(run.stdout)["precision"]["calibration"]
    assert calibration["calibration_sets"] == 2 and calibration["method"] == method


TWO_INPUTS = """
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, y):
        return self.a(x) + self.b(y)
"""


def test_analyze_refuses_a_two_input_model_by_saying_so(tmp_path, capsys):
    (tmp_path / "two.py").write_text(TWO_INPUTS)
    code, err = run_main(["analyze", "--model", f"{tmp_path / 'two.py'}:Two", "--input-size", "12"], capsys)
    assert_one_line_error(code, err, "Two", "2 inputs", "single-input models")
    assert "StopIteration" not in err


def test_a_checkpoint_without_alphas_is_said_to_be_read_as_fixed_single_branch(files, capsys):
    plain = {key.replace("op_layer.", ""): tensor for key, tensor in files.state.items() if "branch_weights" not in key}
    ckpt = files.checkpoint("unsearched.pth", plain)
    code, err = run_main(files.args(ckpt=ckpt), capsys)
    assert code == 0, err
    report = json.loads((files.out / "report.json").read_text())
    assert report["load"]["searched"] == [] and report["load"]["single_branch"] == ["conv2"]
    assert report["load"]["checkpoint_format"] == "fixed_single_branch"
    warning = next(w for w in report["load"]["warnings"] if "fixed_single_branch" in w)
    assert "no alphas" in warning and str(ckpt) in warning
    assert f"rfdeploy: warning: {warning}" in err.splitlines()
    assert "searched layer(s)" not in err
    assert "1 fixed_single_branch layer(s)" in err
    code = cli.main(["bench", "--model", MODEL, "--ckpt", str(ckpt), "--structure", str(files.structure),
                     "--input-shape", SHAPE, "--backends", "torch", "--warmup", "1", "--iters", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "(1 fixed_single_branch layer(s)" in printed.err and "(1 searched layer(s)" not in printed.err


def test_int8_that_meets_its_snr_only_in_fp32_fails_and_says_how_much_is_int8(files, capsys):
    argv = files.args() + ["--precision", "int8", "--calib", "random", "--calib-count", "2", "--min-snr", "80",
                           "--int8-ops", "all"]
    code, err = run_main(argv, capsys)
    assert code == 1, err
    assert not (files.out / "model.int8.onnx").exists()
    section = json.loads((files.out / "failed-report.json").read_text())["precision"]
    assert not section["passed"] and not section["mixed_precision"]["met"]
    share = section["int8_share"]
    assert 0 < share["int8_nodes"] <= share["compute_nodes"]
    assert section["quantized_nodes"] > 0
    assert f"{share['int8_nodes']} of {share['compute_nodes']} Conv/MatMul/Gemm nodes in int8" in err
    assert "not reached" in err and "PASSED" not in err.split("int8:")[-1]


HEADS = """
from collections import namedtuple

import torch
from torch import nn

Pair = namedtuple("Pair", ["score", "box"])


class Heads(nn.Module):
    def __init__(self, named_tuple=False):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.cls = nn.Conv2d(4, 2, 1)
        self.reg = nn.Conv2d(4, 4, 1)
        self.named_tuple = named_tuple

    def forward(self, x):
        x = torch.relu(self.stem(x))
        if self.named_tuple:
            return Pair(self.cls(x), self.reg(x))
        return {"cls": self.cls(x), "reg": self.reg(x)}


def as_dict():
    return Heads().eval()


def as_named_tuple():
    return Heads(named_tuple=True).eval()
"""


@pytest.mark.parametrize(("factory", "names"), [("as_dict", ["cls", "reg"]), ("as_named_tuple", ["score", "box"])])
def test_output_names_are_the_dicts_keys_or_the_named_tuples_fields(tmp_path, capsys, factory, names):
    (tmp_path / "heads.py").write_text(HEADS)
    out, repo = tmp_path / "out", tmp_path / "repo"
    argv = ["export", "--model", f"{tmp_path / 'heads.py'}:{factory}", "--input-shape", "1,3,8,8", "--out", str(out),
            "--dynamic-batch", "--triton", str(repo), "--triton-name", "heads"]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert [value.name for value in onnx.load(out / "model.onnx").graph.output] == names
    report = json.loads((out / "report.json").read_text())
    assert [tensor["name"] for tensor in report["onnx"]["outputs"]] == names
    config = (repo / "heads" / "config.pbtxt").read_text()
    assert all(f'name: "{name}"' in config for name in names), config


def analyze_json(argv: list[str], capsys) -> dict:
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_analyze_describes_the_same_searched_model_with_or_without_the_checkpoint(files, capsys):
    base = ["analyze", "--model", MODEL, "--input-size", "12", "--json"]
    plain = analyze_json(base, capsys)
    structure_only = analyze_json(base + ["--structure", str(files.structure)], capsys)
    with_ckpt = analyze_json(base + ["--structure", str(files.structure), "--ckpt", str(files.ckpt)], capsys)
    ops_and_flops = [{layer["name"]: (layer["op"], layer["flops"]) for layer in report["layers"]}
                     for report in (structure_only, with_ckpt)]
    assert ops_and_flops[0] == ops_and_flops[1]
    one_branch = next(layer["flops"] for layer in plain["layers"] if layer["name"] == "conv2")
    assert ops_and_flops[0]["conv2"] == ("SearchedConv", 3 * one_branch)  # d=1, 2, 3: every branch runs
    assert structure_only["analysed"] == with_ckpt["analysed"]
    assert with_ckpt["analysed"].startswith("the searched model") and plain["analysed"].startswith("the plain")


def receptive_field_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("receptive field"))


def test_unproductive_layers_are_said_to_hold_at_the_export_size(files, capsys):
    code, err = run_main(files.args(shape="1,3,2,2"), capsys)
    assert code == 0, err
    line = receptive_field_line(err)
    assert line.startswith("receptive field 9x9 at input 2x2; border layer conv1 ")
    assert "at this input size 1 layer(s)" in line and "whole 2x2 image" in line
    assert "A property of 2x2, not of the network" in line


CONV1D = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1)).eval()
"""


def test_a_1d_models_input_is_a_sequence_not_an_image(tmp_path, capsys):
    (tmp_path / "seq.py").write_text(CONV1D)
    argv = ["export", "--model", f"{tmp_path / 'seq.py'}:build", "--input-shape", "1,3,2", "--out", str(tmp_path / "o")]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    line = receptive_field_line(err)
    assert "whole 2 sequence" in line and "image" not in line


def vertical_runs(fig) -> list[tuple[float, float, float]]:
    """The detours' vertical runs, ``(x, low y, high y)``: lines drawn across, then down beside a column."""
    runs = []
    for line in fig.axes[0].lines:
        xs, ys = line.get_xdata(), line.get_ydata()
        if len(xs) == 3 and xs[1] == xs[2] and ys[1] != ys[2]:
            runs.append((float(xs[1]), float(min(ys[1:])), float(max(ys[1:]))))
    return runs


def test_res2net_graph_gives_each_split_to_sum_edge_its_own_line_and_labels_repeated_joins():
    from rfdeploy.analysis import analyze
    from rfdeploy.analysis.render_graph import figure
    from rfdeploy.analysis.render_plot import plt

    fig = figure("res2net50", analyze(models.build("res2net50"), (64, 64)))
    try:
        runs = vertical_runs(fig)
        texts = [text.get_text() for text in fig.axes[0].texts]
    finally:
        plt.close(fig)
    assert len(runs) > 50  # every block's splits, hierarchical adds and residual
    shared = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
              if a[0] == b[0] and min(a[2], b[2]) > max(a[1], b[1])]  # one x, overlapping heights
    assert not shared, shared[:3]
    continued = [text for text in texts if text.endswith("(continued)")]
    assert continued and all(text.startswith("+ of layer") for text in continued), continued
