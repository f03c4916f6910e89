"""Property: whatever a structure file or a checkpoint holds (truncated, bit-flipped, wrong types, huge or
negative numbers, NaN alphas, zero-size tensors), loading it either succeeds or raises the one-line
RFDeployError. Never another exception, never a hang. The same for an ONNX graph given to ``optimize``,
an ``--inputs`` file, and the tensor names and counts of a Triton config."""

from __future__ import annotations

import io
import json
import signal
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_util import SEARCH, Files, searched_onnx_bytes, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfdeploy import api
from rfdeploy.errors import RFDeployError

SECONDS_PER_LOAD = 20
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 2, 3, -1, 10**9])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=4))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
edge_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf"), 0, -1, 0.0, 2.5, 10**30, 10**9, True])
settings_values = edge_numbers | json_values
SETTINGS = ["exp_rate", "mmin", "mmax", "num_branches", "init_alphas", "S"]


@contextmanager
def no_hang(seconds: int = SECONDS_PER_LOAD):
    def hang(signum, frame):
        raise AssertionError(f"loading hangs (> {seconds} s)")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def loads_or_fails_in_one_line(ckpt: Path | None, structure: Path | None) -> None:
    with no_hang():
        try:
            api.load(tiny_model(), ckpt, structure)
        except RFDeployError as error:
            assert "\n" not in str(error) and "\r" not in str(error), str(error)


def mutate_text(data: bytes, draw) -> bytes:
    """Truncation or a few flipped bits."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    flipped = bytearray(data)
    for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
        flipped[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(flipped)


@st.composite
def structure_files(draw) -> bytes:
    document = {"search": dict(SEARCH), "structure": {"module.conv2": [2, 2]}}
    kind = draw(st.sampled_from(["setting", "entry", "new entry", "drop", "whole", "bytes"]))
    if kind == "setting":
        document["search"][draw(st.sampled_from(SETTINGS))] = draw(settings_values)
    elif kind == "entry":
        document["structure"]["module.conv2"] = draw(settings_values | st.lists(edge_numbers, max_size=3))
    elif kind == "new entry":
        document["structure"][draw(st.text(max_size=12))] = draw(json_values)
    elif kind == "drop":
        section = draw(st.sampled_from(["search", "structure"]))
        document[section].pop(draw(st.sampled_from(sorted(document[section]))))
    elif kind == "whole":
        document[draw(st.sampled_from(["search", "structure"]))] = draw(json_values)
    data = json.dumps(document).encode()
    return mutate_text(data, draw) if kind == "bytes" else data


def rfconv_state(files: Files) -> dict:
    """The same network with ``conv2`` an RFConv2d: self-describing rates, no structure file."""
    state = {k: v for k, v in files.state.items() if not k.startswith("conv2.")}
    return state | {"conv2.weight": files.state["conv2.op_layer.weight"], "conv2.bias": files.state["conv2.op_layer.bias"],
                    "conv2.sample_weights": torch.tensor([0.3, 0.5, 0.2]),
                    "conv2.rates": torch.tensor([[1, 1], [2, 2], [3, 3]], dtype=torch.int32),
                    "conv2.num_rates": torch.tensor([3], dtype=torch.int32),
                    "conv2.counter": torch.tensor([0]), "conv2.current_search_step": torch.tensor([0])}


FILLS = [float("nan"), float("inf"), float("-inf"), 0.0, 1.0, -1.0, 1e38, 2.0**31]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.bool, torch.complex64,
          torch.uint8]


@st.composite
def odd_tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 5), max_size=4))
    tensor = torch.full(shape, draw(st.sampled_from(FILLS)))
    if draw(st.booleans()) and tensor.numel():
        tensor.view(-1)[draw(st.integers(0, tensor.numel() - 1))] = draw(st.sampled_from(FILLS))
    dtype = draw(st.sampled_from(DTYPES))
    return tensor.nan_to_num().to(dtype) if not dtype.is_floating_point and not dtype.is_complex else tensor.to(dtype)


@st.composite
def checkpoints(draw, state: dict) -> bytes:
    state = dict(state)
    kind = draw(st.sampled_from(["tensor", "drop", "bytes", "bytes", "value"]))
    key = draw(st.sampled_from(sorted(state)))
    if kind == "tensor":
        state[key] = draw(odd_tensors())
    elif kind == "drop":
        del state[key]
    elif kind == "value":
        state[key] = draw(json_values)
    buffer = io.BytesIO()
    torch.save({"meta": {"epoch": 1}, "state_dict": state}, buffer)
    return mutate_text(buffer.getvalue(), draw) if kind == "bytes" else buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("fuzz"))


@FUZZ
@given(data=structure_files())
def test_mutated_structure_files(files, data):
    path = files.root / "fuzzed.json"
    path.write_bytes(data)
    loads_or_fails_in_one_line(files.ckpt, path)


@FUZZ
@given(data=st.data())
def test_mutated_mmcv_checkpoints(files, data):
    path = files.root / "fuzzed.pth"
    path.write_bytes(data.draw(checkpoints(files.state)))
    loads_or_fails_in_one_line(path, files.structure)


@FUZZ
@given(data=st.data())
def test_mutated_rfconv_checkpoints(files, data):
    path = files.root / "fuzzed-rfconv.pth"
    path.write_bytes(data.draw(checkpoints(rfconv_state(files))))
    loads_or_fails_in_one_line(path, None)


# ---------------------------------------------------------------- the other entry points (issue 23)

def runs_or_fails_in_one_line(call) -> None:
    with no_hang():
        try:
            call()
        except RFDeployError as error:
            assert "\n" not in str(error) and "\r" not in str(error), str(error)


@pytest.fixture(scope="module")
def searched_onnx(files) -> bytes:
    return searched_onnx_bytes(files)


CONV_ATTRIBUTES = ["strides", "dilations", "pads", "group", "kernel_shape"]
ATTRIBUTE_VALUES = st.sampled_from([0, -1, 1, 2, 3, 7, 16, 10**5, -(2**31)])


@st.composite
def onnx_graphs(draw, data: bytes) -> bytes:
    """A searched-conv graph damaged in one way: its bytes, a conv attribute, an initializer's values, the
    opset, or a node's op."""
    model = onnx.load_from_string(data)
    kind = draw(st.sampled_from(["bytes", "attribute", "initializer", "opset", "op"]))
    if kind == "bytes":
        return mutate_text(data, draw)
    if kind == "attribute":
        conv = draw(st.sampled_from([n for n in model.graph.node if n.op_type == "Conv"]))
        key = draw(st.sampled_from(CONV_ATTRIBUTES))
        value = draw(ATTRIBUTE_VALUES)
        kept = [a for a in conv.attribute if a.name != key]
        del conv.attribute[:]
        count = {"group": 0, "pads": 4}.get(key, 2)
        conv.attribute.extend([*kept, onnx.helper.make_attribute(key, value if key == "group" else [value] * count)])
    elif kind == "initializer":
        tensor = draw(st.sampled_from(list(model.graph.initializer)))
        values = onnx.numpy_helper.to_array(tensor).astype(np.float32).copy()
        if values.size:
            values.reshape(-1)[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(FILLS))
        if draw(st.booleans()):
            values = values.reshape(-1)[: draw(st.integers(0, values.size))]
        tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    elif kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([-1, 0, 1, 7, 11, 13, 99, 10000]))
    else:
        node = draw(st.sampled_from(list(model.graph.node)))
        node.op_type = draw(st.sampled_from(["Add", "Sum", "Mul", "Conv", "Relu", "Identity", "Frobnicate"]))
    return model.SerializeToString()


@FUZZ
@given(data=st.data())
def test_mutated_onnx_graphs_given_to_optimize(files, searched_onnx, data):
    path = files.root / "fuzzed.onnx"
    path.write_bytes(data.draw(onnx_graphs(searched_onnx)))
    runs_or_fails_in_one_line(lambda: api.optimize(path, files.root / "fuzzed-out"))


@st.composite
def npz_files(draw) -> bytes:
    """An inputs file: a good one mutated, or an .npy header declaring any shape over a few bytes."""
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=4)))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("input.npy", header.getvalue() + bytes(draw(st.integers(0, 64))))
        return buffer.getvalue()
    buffer = io.BytesIO()
    np.savez(buffer, input=np.ones((1, 3, 12, 12), np.float32))
    return mutate_text(buffer.getvalue(), draw)


@FUZZ
@given(data=st.data())
def test_mutated_inputs_files(files, data):
    path = files.root / "fuzzed.npz"
    path.write_bytes(data.draw(npz_files()))
    runs_or_fails_in_one_line(lambda: api.export(tiny_model(), files.ckpt, files.structure,
                                                 input_shapes=[(1, 3, 12, 12)], inputs=path, write=False))


@FUZZ
@given(name=st.text(max_size=40), instances=st.integers(-5, 2**40), max_batch=st.none() | st.integers(-5, 2**40))
def test_any_tensor_name_or_count_gives_a_config_triton_parses_or_one_line(files, searched_onnx, name, instances,
                                                                           max_batch):
    from google.protobuf import text_format

    from rfdeploy.serve import triton

    model = onnx.load_from_string(searched_onnx)
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if value == "input" else value for value in node.input]

    def plan():
        served = triton.served_onnx(model.SerializeToString(), "fuzzed.onnx")
        config = triton.plan_repository(triton.TritonRequest(files.root / "repo", "m", max_batch, instances),
                                        served).config
        parsed = text_format.Parse(config, triton.schema().ModelConfig())
        assert [tensor.name for tensor in parsed.input] == [name] and len(parsed.instance_group) == 1

    runs_or_fails_in_one_line(plan)


@st.composite
def images(draw) -> bytes:
    """A PNG: a real small one mutated, or a header claiming any size up to 65535 x 65535 with no pixels."""
    from PIL import Image

    if draw(st.booleans()):
        width, height = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        chunk = len(header).to_bytes(4, "big") + b"IHDR" + header + zlib.crc32(b"IHDR" + header).to_bytes(4, "big")
        return b"\x89PNG\r\n\x1a\n" + chunk
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buffer, format="PNG")
    return mutate_text(buffer.getvalue(), draw)


@FUZZ
@given(data=st.data())
def test_mutated_calibration_images(files, data):
    pytest.importorskip("PIL")
    from rfdeploy.quantize.calibration import calibration_data

    folder = files.root / "fuzzed-images"
    folder.mkdir(exist_ok=True)
    for index in range(2):
        (folder / f"{index}.png").write_bytes(data.draw(images()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        runs_or_fails_in_one_line(lambda: calibration_data(str(folder), [(1, 3, 12, 12)], 1))
