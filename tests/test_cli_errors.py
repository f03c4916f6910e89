"""The ``rfdeploy`` console entry on bad input: a non-zero exit, one ``rfdeploy: error:`` line naming the
file or layer, no traceback, and an earlier good ``--out`` left byte for byte as it was."""

from __future__ import annotations

import json
import os
import stat
import sys

import onnx
import pytest
import torch
from cli_util import Files, assert_one_line_error, run_entry, run_main


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


# ---------------------------------------------------------------- numbers and names on the command line

@pytest.mark.parametrize(("option", "value"), [
    ("--atol", "nan"), ("--atol", "-1e-4"), ("--rtol", "inf"), ("--rtol", "-0.5"),
    ("--seed", "18446744073709551616"), ("--seed", "-1"), ("--opset", "1"), ("--opset", "7"), ("--opset", "99"),
])
def test_bad_number_options_are_usage_errors(files, capsys, option, value):
    code, err = run_main(files.args() + [f"{option}={value}"], capsys)
    assert code == 2
    assert_one_line_error(code, err, option, value)


@pytest.mark.parametrize("spec", [":", ":benchnet", "../etc:passwd", "rfdeploy_cli_tiny_net:no such"])
def test_malformed_model_spec_says_how_to_write_it(files, capsys, spec):
    code, err = run_main(files.args(model=spec), capsys)
    assert code == 2
    assert_one_line_error(code, err, f"'{spec}'", "module:callable", ".py:callable")


def test_unknown_model_name_mentions_the_module_callable_form(files, capsys):
    code, err = run_main(files.args(model="mynet"), capsys)
    assert_one_line_error(code, err, "mynet", "package.module:callable")


USER_CODE = '''
import sys


def exits():
    sys.exit()


def raises_system_exit():
    raise SystemExit(3)


def debugs():
    breakpoint()


def sets_a_trace():
    import pdb
    pdb.set_trace()


def aborts():
    import os
    os.abort()
'''


@pytest.mark.parametrize(("attribute", "said"), [("exits", "exit(None)"), ("raises_system_exit", "exit(3)"),
                                                  ("debugs", "breakpoint()"), ("sets_a_trace", "pdb.set_trace()")])
def test_model_callable_that_exits_or_breaks_into_the_debugger(files, capsys, attribute, said):
    (files.root / "rfdeploy_cli_user_code.py").write_text(USER_CODE)
    code, err = run_main(files.args(model=f"rfdeploy_cli_user_code:{attribute}"), capsys)
    assert code == 2
    assert_one_line_error(code, err, f"rfdeploy_cli_user_code:{attribute}", said)


def test_a_model_callable_that_aborts_is_an_error_through_the_real_entry(files):
    (files.root / "rfdeploy_cli_user_code.py").write_text(USER_CODE)
    result = run_entry(files.args(model="rfdeploy_cli_user_code:aborts"), cwd=files.root)
    assert_one_line_error(result.returncode, result.stderr, "rfdeploy_cli_user_code:aborts", "os.abort()")


def test_sys_exit_as_the_model_is_an_error_through_the_real_entry(files):
    result = run_entry(files.args(model="sys:exit"), cwd=files.root)
    assert result.returncode == 2
    assert_one_line_error(result.returncode, result.stderr, "sys:exit", "exit(")


# ---------------------------------------------------------------- --out, checked before any work

def out_cases(root):
    (root / "a-file").write_text("x")
    if not (root / "dangling").is_symlink():
        (root / "dangling").symlink_to(root / "nowhere")
    (root / "onnx-is-a-folder" / "model.onnx").mkdir(parents=True, exist_ok=True)
    return {"existing file": root / "a-file", "/dev/null": "/dev/null", "dangling link": root / "dangling",
            "under a file": root / "a-file" / "out", "name too long": root / ("n" * 300),
            "read-only file system": "/proc/rfdeploy-out", "model.onnx a folder": root / "onnx-is-a-folder"}


@pytest.mark.parametrize("case", ["existing file", "/dev/null", "dangling link", "under a file", "name too long",
                                  "read-only file system", "model.onnx a folder"])
def test_bad_out_fails_in_one_line_before_any_work(files, capsys, case):
    (files.root / "outs").mkdir(exist_ok=True)
    out = str(out_cases(files.root / "outs")[case])
    truncated = files.root / "half.pth"  # a bad checkpoint: the --out check must come first
    truncated.write_bytes(files.ckpt.read_bytes()[:100])
    argv = files.args(ckpt=truncated)
    argv[argv.index("--out") + 1] = out
    code, err = run_main(argv, capsys)
    assert code == 2
    assert_one_line_error(code, err, out[:40])
    assert "half.pth" not in err
    assert not (files.root / "outs" / "a-file" / "out").exists()


def test_save_io_under_a_file_fails_before_any_work(files, capsys):
    (files.root / "a-file").write_text("x")
    truncated = files.root / "half.pth"
    truncated.write_bytes(files.ckpt.read_bytes()[:100])
    target = files.root / "a-file" / "io.npz"
    code, err = run_main(files.args(ckpt=truncated) + ["--save-io", str(target)], capsys)
    assert_one_line_error(code, err, str(files.root / "a-file"))
    assert "half.pth" not in err


def test_outputs_follow_the_umask_and_a_success_removes_an_old_failed_report(files, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "failed-report.json").write_text("{}")
    argv = files.args()
    argv[argv.index("--out") + 1] = str(out)
    previous = os.umask(0o022)
    try:
        code, err = run_main(argv, capsys)
    finally:
        os.umask(previous)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {"model.onnx": 0o644,
                                                                              "report.json": 0o644}


def test_analyze_drawing_into_a_missing_folder(files, capsys):
    missing = files.root / "no-such-folder" / "graph.svg"
    code, err = run_main(["analyze", "--model", "resnet50", "--graph", str(missing)], capsys)
    assert_one_line_error(code, err, str(missing))


def test_stdout_closed_early_is_a_normal_end(capsys, monkeypatch):
    """`rfdeploy models --json | head -2`: the reader had enough; no error line, exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    code, err = run_main(["models", "--json"], capsys)
    assert code == 0
    assert err == ""


def test_checkpoint_naming_a_folder(files, capsys):
    code, err = run_main(files.args(ckpt=files.root), capsys)
    assert_one_line_error(code, err, str(files.root), "folder")


def test_model_from_a_python_file(files, capsys, tmp_path):
    argv = files.args(model=f"{files.root / 'rfdeploy_cli_tiny_net.py'}:build")
    argv[argv.index("--out") + 1] = str(tmp_path)
    code, err = run_main(argv + ["--json"], capsys)
    assert code == 0, err
    assert (tmp_path / "model.onnx").is_file()
