"""Deployments as declared stages: the declaration is checked, the loop names the stage that failed, outputs
are the declared files, written on success only, and an export owns its folder's artifact names."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_util import TINY_NET, Files, assert_one_line_error, run_main

from rfdeploy.errors import RFDeployError
from rfdeploy.stages.base import (
    Run,
    Stage,
    StageError,
    check_stages,
    declared_files,
    planned_files,
    run_stages,
)
from rfdeploy.stages.export import EXPORT_STAGES, OWNED_FILES, ExportRequest
from rfdeploy.stages.optimize import OPTIMIZE_STAGES


def adds(**values):
    return lambda run: dict(values)


# ---------------------------------------------------------------- the declaration and the loop

def test_a_stage_that_needs_a_value_no_earlier_stage_adds_is_refused_at_declaration():
    with pytest.raises(ValueError, match="stage b needs x, which no stage before it adds"):
        check_stages((Stage("b", adds(), needs=("x",)), Stage("a", adds(x=1), adds=("x",))))


def test_two_stages_owning_one_report_key_are_refused_at_declaration():
    with pytest.raises(ValueError, match="stage b claims k"):
        check_stages((Stage("a", adds(k=1), report=("k",)), Stage("b", adds(k=2), report=("k",))))


def test_the_loop_passes_values_on_and_assembles_the_report_from_each_stages_keys():
    stages = check_stages((Stage("a", adds(x=2, first=1), adds=("x",), report=("first",)),
                           Stage("b", lambda run: {"second": run["x"] * 10}, needs=("x",), report=("second",))))
    run = run_stages(stages, Run(None))
    assert run.report == {"first": 1, "second": 20} and run.values == {"x": 2}


def test_an_unexpected_error_names_the_stage_and_a_user_error_passes_through():
    def broken(run):
        raise ZeroDivisionError("boom")

    with pytest.raises(StageError, match="^stage divide failed: ZeroDivisionError: boom$") as caught:
        run_stages((Stage("divide", broken),), Run(None))
    assert caught.value.stage == "divide"

    def refused(run):
        raise RFDeployError("model.pth: not a checkpoint")

    with pytest.raises(RFDeployError, match="^model.pth: not a checkpoint$"):
        run_stages((Stage("load", refused),), Run(None))


def test_a_stage_returning_other_than_it_declared_fails_by_name():
    with pytest.raises(StageError, match="stage a failed: .*declared"):
        run_stages((Stage("a", adds(x=1, y=2), adds=("x",)),), Run(None))


def test_stages_that_do_not_apply_or_need_a_passed_verification_are_skipped():
    ran = []

    def note(name):
        return lambda run: ran.append(name) or {}

    def fail(run):
        run.passed = False
        ran.append("verify")
        return {}

    stages = (Stage("verify", fail), Stage("deploy", note("deploy"), verified=True),
              Stage("extra", note("extra"), when=lambda request: request == "with extra"), Stage("report", note("report")))
    run_stages(stages, Run("plain"))
    assert ran == ["verify", "report"]


def test_the_declared_pipelines_hold_together():
    for stages in (EXPORT_STAGES, OPTIMIZE_STAGES):
        check_stages(stages)
    assert planned_files(EXPORT_STAGES, ExportRequest(out=Path("D"))) == (Path("D/model.onnx"),)
    with_io = ExportRequest(out=Path("D"), save_io=Path("io.npz"))
    assert planned_files(EXPORT_STAGES, with_io) == (Path("D/model.onnx"), Path("io.npz"))
    assert Path("io.npz") in declared_files(EXPORT_STAGES, with_io)  # declared whether it applies or not


# ---------------------------------------------------------------- the export's outputs (issue 22: 2, 4, 5, 13)

@pytest.fixture
def files(tmp_path, monkeypatch) -> Files:
    made = Files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return made


def test_a_declared_output_taken_by_a_folder_fails_before_the_model_loads(files, capsys):
    (files.out / "model.int8.onnx").mkdir(parents=True)
    code, err = run_main(["export", "--model", "no_such_zoo_model", "--out", str(files.out), "--precision", "int8",
                          "--calib", "random"], capsys)
    assert_one_line_error(code, err, "model.int8.onnx", "is a folder")


def test_an_export_removes_the_artifacts_of_an_earlier_export_it_does_not_write(files, capsys):
    int8 = files.args() + ["--precision", "int8", "--calib", "random", "--calib-count", "2", "--int8-ops", "all",
                           "--min-snr", "0"]
    assert run_main(int8, capsys)[0] == 0
    assert (files.out / "model.int8.onnx").is_file()
    stray = files.out / "notes.txt"  # not an artifact name of an export: not its to remove
    stray.write_text("mine")
    code, err = run_main(files.args(), capsys)
    assert code == 0, err
    assert sorted(p.name for p in files.out.iterdir()) == ["model.onnx", "notes.txt", "report.json"]


def test_save_io_is_written_only_when_verification_passes(files, capsys):
    earlier = files.root / "io.npz"
    earlier.write_bytes(b"earlier")
    code, err = run_main(files.args() + ["--save-io", str(earlier), "--atol", "1e-30", "--rtol", "1e-30"], capsys)
    assert code == 1, err
    assert earlier.read_bytes() == b"earlier"
    assert (files.out / "failed-report.json").is_file()
    code, err = run_main(files.args() + ["--save-io", str(earlier)], capsys)
    assert code == 0, err
    assert f"wrote {earlier}" in " ".join(err.split())
    with np.load(earlier) as saved:
        assert "0/input" in saved.files


def test_save_io_into_a_missing_folder_or_onto_a_fifo_is_refused_before_work(files, capsys):
    code, err = run_main(files.args() + ["--save-io", str(files.root / "no" / "io.npz")], capsys)
    assert_one_line_error(code, err, "does not exist")
    fifo = files.root / "io.npz"
    os.mkfifo(fifo)
    code, err = run_main(files.args() + ["--save-io", str(fifo)], capsys)
    assert_one_line_error(code, err, "not a regular file")
    assert not files.out.exists()


# the tiny net, its forward ending in a Reshape to the sizes it saw: a graph traced from it keeps them
BAKED = TINY_NET.replace(
    "return self.conv2(torch.relu(self.bn1(self.conv1(x))))",
    "y = self.conv2(torch.relu(self.bn1(self.conv1(x))))\n"
    "        return y.reshape(int(y.shape[0]), int(y.shape[1]) * int(y.shape[2]) * int(y.shape[3]))")


def test_a_forward_that_bakes_a_size_fails_a_dynamic_export_in_one_line_naming_the_shape(files, capsys):
    (files.root / "baked_net.py").write_text(BAKED)
    code, err = run_main(files.args(model="baked_net:build") + ["--dynamic-shape"], capsys)
    assert_one_line_error(code, err, "second verification shape 2,3,6,6")
    assert code == 2 and not files.out.exists()


def test_the_size_note_compares_with_the_checkpoint_only_where_there_is_one(files, capsys):
    code, err = run_main(files.args() + ["--mode", "multi", "--json"], capsys)
    assert code == 0, err
    report = json.loads((files.out / "report.json").read_text())
    assert report["onnx"]["size_note"].endswith("larger than the checkpoint")
    code, err = run_main(["export", "--model", "rfdeploy_cli_tiny_net:build", "--structure", str(files.structure),
                          "--input-shape", "1,3,12,12", "--mode", "multi", "--out", str(files.out)], capsys)
    assert code == 0, err
    note = json.loads((files.out / "report.json").read_text())["onnx"]["size_note"]
    assert "checkpoint" not in note and note.endswith("larger than a single-branch model's")


# ---------------------------------------------------------------- one record per precision

def test_each_precision_is_one_record_and_the_registry_says_where_it_runs():
    from rfdeploy.backends import BACKENDS
    from rfdeploy.precision import FORMATS, min_snr_for

    assert min_snr_for("int8") == 15.0 and min_snr_for("fp32") is None and min_snr_for("bf16", 30.0) == 30.0
    for entry in FORMATS.values():
        assert entry.why
        assert set(entry.verified_on) <= {name for name, b in BACKENDS.items() if entry.name in b.precisions}
    assert [name for name, entry in FORMATS.items() if entry.artifact] == ["int8"]
    assert set(OWNED_FILES) == {"model.onnx", "model.int8.onnx", "model.engine", "model.engine.json", "end2end.onnx",
                                "deploy.json", "pipeline.json", "detail.json"}


# ---------------------------------------------------------------- --mmdeploy: refused before any work

def test_mmdeploy_needs_a_config_and_mmdeploy_itself(files, capsys):
    deploy = files.root / "deploy.py"
    deploy.write_text("codebase_config = dict(type='mmdet')\n")
    code, err = run_main(files.args() + ["--mmdeploy", str(deploy)], capsys)
    assert_one_line_error(code, err, "--mmdeploy needs --config")
    config = files.root / "cfg.py"
    config.write_text("default_scope = 'mmdet'\nmodel = dict(type='RetinaNet')\n")
    code, err = run_main(["export", "--config", str(config), "--mmdeploy", str(deploy), "--out", str(files.out)],
                         capsys)
    pytest.importorskip("mmengine")
    if importlib.util.find_spec("mmdeploy") is None:  # the first pass; the mmdet pass has it
        assert_one_line_error(code, err, "pip install --no-deps mmdeploy==1.3.1")
    assert not files.out.exists()


def test_the_report_records_each_stages_wall_time(files, capsys):
    code, err = run_main(files.args(), capsys)
    assert code == 0, err
    seconds = json.loads((files.out / "report.json").read_text())["stage_seconds"]
    assert list(seconds)[:6] == ["load", "shapes", "calibrate", "tune", "compile", "verify"]
    assert "precision" not in seconds and all(value >= 0 for value in seconds.values())
    assert seconds["compile"] > 0 and seconds["verify"] > 0
