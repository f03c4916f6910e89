"""Dynamic shapes (``--dynamic-shape``), verification on the user's inputs (``--inputs``) and its record
(``--save-io``), each against the searched model's own forward."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_formats import one_thread  # noqa: F401  # the autouse fixture
from test_in_memory import hooked
from torch import nn

from rfdeploy import api, cli
from rfdeploy.errors import RFDeployError

SHAPE = (1, 3, 24, 24)


def onnx_dims(path) -> list:
    model = __import__("onnx").load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_a_dynamic_shape_export_runs_at_other_sizes_and_is_verified_at_a_second_one(tmp_path):
    model = hooked("search")
    result = api.export(model, input_shapes=[SHAPE], out=tmp_path, dynamic_shape=True)

    assert result.passed
    assert onnx_dims(tmp_path / "model.onnx") == ["batch", 3, "height", "width"]
    other = result.report["verification"]["other_shapes"]
    assert other["passed"] and other["input_shapes"] == [[2, 3, 12, 12]]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    x = torch.randn(3, 3, 40, 32)  # neither shape verified by the export
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4, rtol=0)


def test_a_static_export_is_not_verified_at_another_shape(tmp_path):
    result = api.export(hooked("search"), input_shapes=[SHAPE], out=tmp_path)
    assert result.report["verification"]["other_shapes"] is None
    assert onnx_dims(tmp_path / "model.onnx") == list(SHAPE)


class BakedSize(nn.Module):
    """A forward that turns a size into a Python int: the exported graph keeps the number it saw."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        half = int(x.shape[-1]) // 2
        return self.conv(x)[..., :half]


def test_a_dynamic_export_whose_graph_bakes_a_size_fails_at_its_second_shape(tmp_path):
    result = api.export(BakedSize().eval(), input_shapes=[SHAPE], out=tmp_path, dynamic_shape=True)

    assert not result.passed
    check = result.report["verification"]
    assert check["max_abs_err"] < 1e-5 and check["other_shapes"]["passed"] is False
    assert (tmp_path / "failed-report.json").is_file() and not (tmp_path / "model.onnx").exists()


def save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_user_inputs_join_the_verification_by_name_or_in_order(tmp_path):
    model = hooked("search")
    data = np.random.default_rng(0).uniform(0, 255, SHAPE).astype(np.float32)  # image-like, unlike randn
    by_name = api.export(model, input_shapes=[SHAPE], out=tmp_path / "a", inputs=save(tmp_path / "x.npz", input=data))
    in_order = api.export(model, out=tmp_path / "b", inputs=save(tmp_path / "y.npz", pixels=data))

    for result, name in ((by_name, "x.npz"), (in_order, "y.npz")):
        check = result.report["verification"]
        assert result.passed and check["sources"] == ["seed 0", "seed 1", name]
    # without --input-shape the export takes the inputs' shape
    assert in_order.report["verification"]["input_shapes"] == [list(SHAPE)]


@pytest.mark.parametrize("arrays, message", [
    ({"a": np.zeros(SHAPE, np.float32), "b": np.zeros(SHAPE, np.float32)}, "holds 2 array"),
    ({"input": np.full(SHAPE, np.nan, np.float32)}, "NaN or infinite"),
    ({"input": np.zeros((1, 3, 32, 32), np.float32)}, "do not fit the export at 1,3,24,24"),
    ({"input": np.array(["a", "b"])}, "not a real array"),
])
def test_unusable_inputs_files_are_one_line_errors(tmp_path, arrays, message):
    path = save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(RFDeployError, match=message):
        api.export(hooked("search"), input_shapes=[SHAPE], out=tmp_path / "out", inputs=path)
    assert not (tmp_path / "out").exists()


def test_inputs_of_another_size_fit_a_dynamic_shape_export(tmp_path):
    path = save(tmp_path / "big.npz", input=np.ones((2, 3, 32, 40), np.float32))
    result = api.export(hooked("search"), input_shapes=[SHAPE], out=tmp_path / "out", inputs=path,
                        dynamic_shape=True)
    assert result.passed


def test_saved_io_holds_every_input_and_the_searched_outputs_on_it(tmp_path):
    model = hooked("search")
    io_file = tmp_path / "io" / "run.npz"
    io_file.parent.mkdir()
    result = api.export(model, input_shapes=[SHAPE], out=tmp_path / "out", dynamic_batch=True, save_io=io_file,
                        inputs=save(tmp_path / "x.npz", input=np.ones(SHAPE, np.float32)))

    with np.load(io_file, allow_pickle=False) as saved:
        sources = list(saved["sources"])
        assert sources == result.report["verification"]["sources"] + ["seed 0", "seed 1"]  # + the second shape
        for index in range(len(sources)):
            with torch.no_grad():
                expected = model(torch.from_numpy(saved[f"{index}/input"])).numpy()
            np.testing.assert_allclose(saved[f"{index}/output"], expected, atol=1e-6, rtol=0)
        assert saved["3/input"].shape[0] == 2  # the second shape's batch


def test_cli_dynamic_shape_with_inputs_and_save_io(tmp_path, monkeypatch, capsys):
    (tmp_path / "searched_net.py").write_text(
        "from test_in_memory import hooked\n\ndef build():\n    return hooked('search')\n")
    monkeypatch.chdir(tmp_path)
    inputs = save(tmp_path / "x.npz", input=np.ones(SHAPE, np.float32))
    code = cli.main(["export", "--model", "searched_net:build", "--inputs", str(inputs), "--dynamic-shape",
                     "--save-io", "io.npz", "--out", "out"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["other_shapes"]["input_shapes"] == [[2, 3, 12, 12]]
    assert (tmp_path / "io.npz").is_file()
    assert "at a second shape" in capsys.readouterr().err


def test_the_export_traces_without_autograd_so_no_activation_is_kept_for_a_backward():
    """The tracer runs a real forward; with autograd on, every intermediate stays alive until it ends (GBs at a
    detector's size)."""
    from rfdeploy.backends.onnx_export import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    traced_outputs = []
    model[0].register_forward_hook(lambda module, inputs, output: traced_outputs.append(output))
    export_onnx(model, [torch.randn(1, 3, 8, 8)], returned=torch.zeros(1, 4, 6, 6))
    assert traced_outputs and all(output.grad_fn is None for output in traced_outputs)
