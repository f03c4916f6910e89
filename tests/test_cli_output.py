"""What the CLI prints and writes for others to read: --version, help texts, human output on stderr and
--json on stdout, whole lines in logs, the export summary's wording and report.json's ONNX facts."""

from __future__ import annotations

import argparse
import json

import onnx
import pytest
from test_cli_errors import Files, run_entry

import rfdeploy
from rfdeploy import cli


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"rfdeploy": parser, **commands.choices}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"rfdeploy {rfdeploy.__version__}\n"


@pytest.mark.parametrize("command", list(command_parsers()))
def test_every_option_has_a_help_line_with_its_default_and_no_rest_markup(command):
    parser = command_parsers()[command]
    text = parser.format_help()
    assert "`" not in text
    unwrapped = "".join(text.split())  # wrapped for an 80-column terminal, also at hyphens
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = action.option_strings[-1]
        assert action.help, f"{command} {name} has no help line"
        if action.nargs == 0:  # a flag: off unless given
            continue
        assert "default" in cli.help_line(action), f"{command} {name}: help does not say its default"
        if cli.shows_default(action) and "%(default)" not in action.help and "default" not in action.help:
            assert f"(default:{action.default})" in unwrapped, f"{command} {name}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export through the real console entry, its streams piped as in a log, a long output path."""
    files = Files(tmp_path_factory.mktemp("output"))
    files.out = files.root / ("a-folder-name-long-enough-that-an-80-column-console-would-wrap-the-line" * 2)
    run = run_entry(files.args() + ["--mode", "multi", "--dynamic-batch"], cwd=files.root)
    assert run.returncode == 0, run.stderr
    return files, run


def test_human_output_goes_to_stderr_whole_lines_even_when_long(exported):
    files, run = exported
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert f"wrote {files.out / 'model.onnx'}" in lines and f"wrote {files.out / 'report.json'}" in lines
    verdict = next(line for line in lines if line.startswith("verification vs searched PyTorch forward"))
    assert verdict.endswith("PASSED")


def test_json_goes_to_stdout(exported):
    files, _ = exported
    run = run_entry(files.args() + ["--json", "--out", str(files.root / "json")], cwd=files.root)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["verification"]["passed"]
    assert "{" not in run.stderr


def test_summary_labels_normalised_alphas_dilations_and_the_receptive_field(exported):
    _, run = exported
    header = next(line for line in run.stderr.splitlines() if "layer" in line and "lowering" in line)
    assert "branch dilations" in header and "alphas |a|/sum|a|" in header
    row = next(line for line in run.stderr.splitlines() if "conv2" in line)
    assert "d=1, d=2, d=3" in row and "2x2" not in row  # the structure's centre 2 and mmcv's rule
    field = next(line for line in run.stderr.splitlines() if line.startswith("receptive field"))
    assert field == "receptive field 9x9 at input 12x12"  # no border layer, no unproductive one: nothing more


def test_report_records_the_onnx_signature_dynamic_axes_and_file_size(exported):
    files, _ = exported
    report = json.loads((files.out / "report.json").read_text())["onnx"]
    model = onnx.load(files.out / "model.onnx")
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 12, 12]}]
    assert report["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 4, 12, 12]}]
    assert report["dynamic_axes"] == {"input": {"0": "batch"}, "output": {"0": "batch"}}
    assert [i.name for i in model.graph.input] == ["input"]
    assert report["file_bytes"] == (files.out / "model.onnx").stat().st_size
    assert "one weight copy per branch" in report["size_note"]  # --mode multi: three copies of conv2's weight
