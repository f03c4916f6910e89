"""Hostile and careless inputs (issue 23): each one ends in one ``rfdeploy: error:`` line naming the file,
node or layer at fault, exit 2, with nothing written; or, where the input is fine, in a clean run.

The ONNX graphs are ``torch.onnx.export`` of the tiny searched model of ``cli_util`` (what a generic exporter
writes), damaged in one place each.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_util import Files, assert_one_line_error, run_main, searched_onnx_bytes
from onnx import helper, numpy_helper
from test_strict_inputs import in_a_thread

from rfdeploy import cli
from rfdeploy.errors import RFDeployError
from rfdeploy.quantize.calibration import ImagePreprocess, calibration_data

SHAPE = (1, 3, 12, 12)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("hostile"))


@pytest.fixture()
def cli_files(files, monkeypatch) -> Files:
    """``files`` with its model module importable, for the CLI's ``--model``."""
    monkeypatch.syspath_prepend(str(files.root))
    return files


@pytest.fixture(scope="module")
def searched_onnx(files) -> onnx.ModelProto:
    return onnx.load_from_string(searched_onnx_bytes(files))


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def set_attribute(model: onnx.ModelProto, names: list[str], key: str, value) -> onnx.ModelProto:
    for name in names:
        target = node(model, name)
        kept = [a for a in target.attribute if a.name != key]
        del target.attribute[:]
        target.attribute.extend([*kept, helper.make_attribute(key, value)])
    return model


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def alphas_name(model: onnx.ModelProto) -> str:
    return node(model, "/conv2/Abs").input[0]


def optimize_cli(tmp_path: Path, data: bytes | onnx.ModelProto, capsys) -> tuple[int, str]:
    path = tmp_path / "in.onnx"
    path.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
    return run_main(["optimize", str(path), "--out", str(tmp_path / "out")], capsys)


CONVS = ["/conv2/Conv", "/conv2/Conv_1", "/conv2/Conv_2"]


def damaged(kind: str, model: onnx.ModelProto) -> onnx.ModelProto | bytes:
    model = copy.deepcopy(model)
    if kind.startswith("opset "):
        model.opset_import[0].version = int(kind.split()[1])
    elif kind == "no opset import":
        del model.opset_import[:]
    elif kind == "ir_version 99":
        model.ir_version = 99
    elif kind == "bytes doubled":
        return model.SerializeToString() * 2
    elif kind == "duplicate node names":
        for each in model.graph.node:
            each.name = "same"
    elif kind == "alpha tensor of length 1":
        set_initializer(model, alphas_name(model), np.array([1.0]))
    elif kind == "cycle of Add nodes":
        node(model, "/conv2/Add").input[0] = node(model, "/conv2/Add_1").output[0]
    elif kind.startswith(("strides", "dilations", "pads", "group")):
        key, value = kind.split()
        size = {"pads": 4, "group": 0}.get(key, 2)
        set_attribute(model, CONVS if key == "group" else CONVS[1:2], key,
                      int(value) if key == "group" else [int(value)] * size)
    elif kind == "kernel_shape":
        set_attribute(model, CONVS[1:2], "kernel_shape", [5, 5])
    elif kind == "missing graph input":
        del model.graph.input[:]
    elif kind == "unknown op":
        node(model, "/Relu").op_type = "Frobnicate"
    elif kind == "duplicated graph input":
        model.graph.input.append(copy.deepcopy(model.graph.input[0]))
    elif kind == "removed bias":
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "conv2.bias"))
    elif kind == "bias of the wrong size":
        set_initializer(model, "conv2.bias", np.zeros(0))
    elif kind == "a name that is not UTF-8":
        data = model.SerializeToString()
        at = data.index(b"pytorch")  # the producer's name
        return data[:at] + b"\xf0" + data[at + 1:]
    elif kind == "removed alphas":
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == alphas_name(model)))
    return model


@pytest.mark.parametrize("kind", [
    "opset 1", "opset 99", "opset 10000", "opset -1", "opset 7", "no opset import", "ir_version 99",
    "bytes doubled", "duplicate node names", "cycle of Add nodes", "strides 0", "strides -1", "dilations 0",
    "dilations -2", "dilations 100000", "pads -1", "pads 100000", "group 0", "group -16", "group 3",
    "kernel_shape", "missing graph input", "unknown op", "duplicated graph input", "removed bias",
    "removed alphas", "bias of the wrong size", "a name that is not UTF-8"])
def test_an_invalid_graph_is_refused_when_read(tmp_path, searched_onnx, capsys, kind):
    code, err = optimize_cli(tmp_path, damaged(kind, searched_onnx), capsys)
    assert_one_line_error(code, err, "in.onnx")
    assert code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("kind", "value", "named"), [
    ("nan alphas", [float("nan"), 1.0, 1.0], "searched conv 'conv2'"),
    ("inf alphas", [float("inf"), 1.0, 1.0], "searched conv 'conv2'"),
    ("zero alphas", [0.0, 0.0, 0.0], "searched conv 'conv2'"),
    ("short alphas", [1.0], "/conv2/Gather_1"),
])
def test_alphas_that_are_no_numbers_name_the_searched_conv(tmp_path, searched_onnx, capsys, kind, value, named):
    model = set_initializer(copy.deepcopy(searched_onnx), alphas_name(searched_onnx), np.array(value))
    code, err = optimize_cli(tmp_path, model, capsys)
    assert_one_line_error(code, err, "in.onnx", named)
    assert code == 2


@pytest.mark.parametrize("tensor", ["conv2.weight", "conv2.bias"])
def test_nan_weights_name_the_node(tmp_path, searched_onnx, capsys, tensor):
    value = numpy_helper.to_array(next(t for t in searched_onnx.graph.initializer if t.name == tensor)).copy()
    value.reshape(-1)[0] = np.nan
    code, err = optimize_cli(tmp_path, set_initializer(copy.deepcopy(searched_onnx), tensor, value), capsys)
    assert_one_line_error(code, err, "in.onnx", "/conv2/Conv", tensor)
    assert code == 2


def test_external_data_shorter_than_its_tensor(tmp_path, searched_onnx, capsys):
    model = copy.deepcopy(searched_onnx)
    path = tmp_path / "in.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:-100])
    code, err = run_main(["optimize", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "in.onnx")


def test_a_graph_is_checked_before_it_is_written_unchanged(tmp_path, searched_onnx, capsys):
    """Damage outside any searched conv (conv1's folded bias gone) is refused, not copied to the output."""
    model = copy.deepcopy(searched_onnx)
    bias = node(model, "/conv1/Conv").input[2]
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == bias))
    code, err = optimize_cli(tmp_path, model, capsys)
    assert_one_line_error(code, err, "in.onnx", bias)
    assert not (tmp_path / "out").exists()


def test_a_valid_graph_still_optimizes(tmp_path, searched_onnx, capsys):
    code, err = optimize_cli(tmp_path, searched_onnx, capsys)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(tmp_path / "out" / "model.onnx"), full_check=True)


def run_entry_bounded(argv: list[str], cwd: Path, seconds: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rfdeploy", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=seconds, check=False)


@pytest.mark.parametrize("which", ["fifo", "/dev/zero"])
def test_an_onnx_path_that_is_no_regular_file_is_not_read(tmp_path, which):
    path = tmp_path / "in.onnx"
    if which == "fifo":
        os.mkfifo(path)
    else:
        path = Path(which)
    result = run_entry_bounded(["optimize", str(path), "--out", str(tmp_path / "out")], tmp_path, seconds=30)
    assert_one_line_error(result.returncode, result.stderr, str(path))
    assert result.returncode == 2


# ---------------------------------------------------------------- --inputs, --save-io, --calib

def header_only_npy(shape: tuple[int, ...]) -> bytes:
    """An .npy header declaring ``shape`` float32, followed by 64 bytes: what a hostile file claims."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


HUGE = (1, 3, 131072, 77000)  # 112 GiB of float32


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_inputs_whose_header_declares_more_than_the_file_holds(cli_files, tmp_path, capsys, suffix):
    path = tmp_path / f"huge{suffix}"
    if suffix == ".npz":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("input.npy", header_only_npy(HUGE))
    else:
        path.write_bytes(header_only_npy(HUGE))
    code, err = run_main(cli_files.args() + ["--inputs", str(path)], capsys)
    assert_one_line_error(code, err, str(path), "131072")
    assert code == 2


def test_save_io_without_a_file_name_names_the_option(cli_files, capsys):
    code, err = run_main(cli_files.args() + ["--save-io", ""], capsys)
    assert_one_line_error(code, err, "--save-io")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels, with no pixel data."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")


def calibrate_on(folder: Path, preprocess: ImagePreprocess | None = None):
    return calibration_data(str(folder), [SHAPE], 1, preprocess=preprocess)


@pytest.mark.parametrize("side", [10000, 15000, 65535])
def test_a_calibration_image_over_the_pixel_limit_is_refused_by_name(tmp_path, side):
    pytest.importorskip("PIL")
    (tmp_path / "a.png").write_bytes(png_header(side, side))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RFDeployError, match=r"a\.png"):
        warnings.simplefilter("always")
        calibrate_on(tmp_path)
    assert not caught  # Pillow's warning would be a second line on stderr


@pytest.mark.parametrize("link", [False, True], ids=["fifo", "symlink to a fifo"])
def test_a_fifo_among_calibration_images_is_refused_not_read(tmp_path, link):
    pytest.importorskip("PIL")
    fifo = tmp_path / ("elsewhere.fifo" if link else "zz.png")
    os.mkfifo(fifo)
    if link:
        (tmp_path / "zz.png").symlink_to(fifo)
    error = in_a_thread(lambda: calibrate_on(tmp_path))
    assert isinstance(error, RFDeployError) and "zz.png" in str(error)


def test_a_calibration_size_beyond_sense_is_refused_naming_the_option(cli_files, tmp_path, capsys):
    code, err = run_main(cli_files.args() + ["--precision", "int8", "--calib", str(tmp_path),
                                         "--calib-size", "100000,100000"], capsys)
    assert_one_line_error(code, err, "--calib-size")


# ---------------------------------------------------------------- bench

def test_bench_refuses_more_threads_than_the_machine_has_cores(cli_files, capsys):
    code, err = run_main(["bench", "--model", "rfdeploy_cli_tiny_net:build", "--input-shape", "1,3,12,12",
                          "--threads", "100000"], capsys)
    assert_one_line_error(code, err, "--threads 100000")


# ---------------------------------------------------------------- messages

def test_a_huge_structure_key_is_not_echoed_whole(cli_files, capsys):
    key = "module." + "k" * 5_000_000
    structure = cli_files.structure_file("huge-key.json", {"module.conv2": [2, 2], key: "not a dilation"})
    code, err = run_main(cli_files.args(structure=structure), capsys)
    assert_one_line_error(code, err, "huge-key.json", "kkkk")
    assert len(err) < 2000


def test_onnxruntimes_own_log_lines_do_not_reach_stderr(tmp_path, searched_onnx, capfd):
    """A graph that fails inside onnxruntime at the verification shape: its error is the only line."""
    model = copy.deepcopy(searched_onnx)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    code = cli.main(["optimize", str(path), "--out", str(tmp_path / "out"), "--input-shape", "1,5,12,12"])
    assert_one_line_error(code, capfd.readouterr().err, "in.onnx", "1,5,12,12")


def test_a_long_chain_of_adds_is_a_valid_graph_not_a_recursion(tmp_path, capsys):
    """2000 ``Add`` nodes, each read by the next only: the sum under the last one is 2000 deep."""
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu")]
    previous = "r"
    for index in range(2000):
        nodes.append(helper.make_node("Add", [previous, "r"], [f"a{index}"], name=f"add{index}"))
        previous = f"a{index}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, [1, 4])])
    code, err = optimize_cli(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), capsys)
    assert code == 0, err
    assert "no searched conv" in err
