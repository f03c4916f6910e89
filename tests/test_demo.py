"""`rfdeploy demo`, what `make demo` runs: its files are real inputs and its export passes."""

import json

import torch

from rfdeploy.cli import main


def test_demo_writes_searched_files_and_a_passing_export(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default rfdeploy-demo/ would go
    workdir = tmp_path / "demo"
    code = main(["demo", "--workdir", str(workdir), "--input-shape", "1,3,64,64"])  # the export goes in workdir/out
    assert code == 0
    assert not (tmp_path / "rfdeploy-demo").exists()
    structure = json.loads((workdir / "structure.json").read_text())
    assert structure["search"]["num_branches"] == 3
    # every searchable 3x3 conv2 of ResNet-50's 16 bottlenecks, the 7x7 stem left plain
    assert len(structure["structure"]) == 16
    state = torch.load(workdir / "searched.pth", weights_only=True)["state_dict"]
    assert sum(key.endswith(".branch_weights") for key in state) == 16
    report = json.loads((workdir / "out" / "report.json").read_text())
    assert report["verification"]["passed"] and report["model_recognised"] and report["model"] == "resnet50"
    assert (workdir / "out" / "model.onnx").stat().st_size > 1_000_000
    assert "PASSED" in capsys.readouterr().err
