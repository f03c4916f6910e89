"""``rfdeploy analyze``: the command on ``module:callable`` models, with and without a structure file, its
JSON, table and pictures, and its one-line errors."""

import json
from pathlib import Path

import pytest
from cli_util import assert_one_line_error
from torch import nn

from rfdeploy.cli import main

HERE = Path(__file__).resolve().parent


def alexnet():
    from test_analysis_known_figures import AlexNet

    return AlexNet()


def small_net():
    """conv1 3x3 (RF 3), conv2 3x3 (RF 5): the structure file below searches conv2."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def run_json(capsys, *argv) -> dict:
    assert main(["analyze", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_alexnet_at_32_from_the_command_line(capsys):
    data = run_json(capsys, "--model", "test_analysis_cli:alexnet", "--input-size", "32")
    assert data["receptive_field"] == [195, 195] and data["input_size"] == [32, 32]
    productive = {layer["name"]: layer["productive"] for layer in data["layers"]}
    assert [productive[f"features.{i}"] for i in (0, 3, 6, 8, 10)] == [True, True, False, False, False]
    assert data["border_layer"] == "features.3" and data["searched"] is False


@pytest.fixture
def structure(tmp_path) -> Path:
    # mmcv format, 2 branches, e = 0.5: centre 2 -> small round(1.0) = 1, large round(3.0) = 3
    path = tmp_path / "structure.json"
    path.write_text(json.dumps({
        "search": {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01,
                   "mmin": 1, "mmax": 24, "num_branches": 2, "skip_layer": []},
        "structure": {"2": [2, 2]},
    }))
    return path


def test_a_structure_file_alone_gives_the_searched_receptive_fields(capsys, structure):
    # conv2 searched with rates 1 and 3 reaches 3 * 2 + 1 = 7: 3 + 6 = 9 (5 before search).
    data = run_json(capsys, "--model", "test_analysis_cli:small_net", "--input-size", "8,8",
                    "--structure", str(structure))
    conv2 = data["layers"][1]
    assert conv2["rates"] == [[1, 1], [3, 3]] and conv2["dilation"] == [3, 3]
    assert conv2["rf"] == [9, 9] and conv2["rf_before_search"] == [5, 5]
    assert data["receptive_field"] == [9, 9] and data["before_search"]["receptive_field"] == [5, 5]
    # at 8x8 the searched conv2 sees past the input (9 > 8), the plain one did not (5)
    assert data["border_layer"] == "2" and data["before_search"]["border_layer"] is None


def test_the_table_and_the_pictures(capsys, structure, tmp_path):
    pytest.importorskip("matplotlib")
    graph, svg, plot = tmp_path / "graph.png", tmp_path / "graph.svg", tmp_path / "plot.png"
    argv = ["analyze", "--model", "test_analysis_cli:small_net", "--input-size", "8", "--structure",
            str(structure), "--plot", str(plot)]
    assert main(argv + ["--graph", str(graph)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # human output goes to stderr; stdout is for --json
    err = captured.err
    assert "border layer: 2" in err and "RF before" in err and "receptive field: 9 (before search: 5)" in err
    assert graph.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv + ["--graph", str(svg)]) == 0
    assert "<svg" in svg.read_text()


def test_one_dimensional_models_take_a_single_size(capsys):
    data = run_json(capsys, "--model", "test_analysis_graph:TemporalStage", "--input-size", "12")
    assert data["input_size"] == [12] and data["receptive_field"] == [31]


def test_errors_are_one_line(capsys):
    assert main(["analyze", "--model", "test_analysis_cli:small_net", "--input-size", "8,8,8"]) == 2
    assert "the model takes 2-d input" in capsys.readouterr().err
    assert main(["analyze", "--model", "test_analysis_cli:small_net"]) == 2
    assert "--input-size is needed" in capsys.readouterr().err
    assert main(["analyze", "--input-size", "8"]) == 2
    assert "--model is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "--model", "x", "--input-size", "a,b"])


def test_zoo_resnet50_at_its_default_size(capsys):
    from rfdeploy import models

    if "resnet50" not in [entry.name for entry in models.entries()]:
        pytest.skip("the zoo has no resnet50")
    data = run_json(capsys, "--model", "resnet50")
    assert data["input_size"] == [224, 224] and data["receptive_field"] == [427, 427]


@pytest.mark.parametrize(("option", "name"), [("--graph", "g.txt"), ("--graph", "g"), ("--plot", "p.jpeg")])
def test_a_picture_named_without_a_format_rfdeploy_draws_is_refused(capsys, structure, tmp_path, option, name):
    argv = ["analyze", "--model", "test_analysis_cli:small_net", "--input-size", "8", "--structure",
            str(structure), option, str(tmp_path / name)]
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, option, name)
    assert not any(tmp_path.glob("g*")) and not any(tmp_path.glob("p*"))
