"""Bad structure files and checkpoints, as an attacker or a careless user writes them: each ends in the
one-line RFDeployError naming the file and the field or layer, before any verification runs."""

from __future__ import annotations

import json
import os
import struct
import threading
import warnings
import zipfile

import pytest
import torch
from cli_util import SEARCH, Files, tiny_model

from rfdeploy import api
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.checkpoint import load_checkpoint


@pytest.fixture
def files(tmp_path) -> Files:
    return Files(tmp_path)


def load_error(files: Files, ckpt=None, structure=None, *names: str) -> str:
    """The one-line error of loading the tiny model from these files; it names ``names``."""
    with pytest.raises(RFDeployError) as caught:
        api.load(tiny_model(), ckpt or files.ckpt, structure or files.structure)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def test_the_good_files_load(files):
    loaded = api.load(tiny_model(), files.ckpt, files.structure)
    assert loaded.info.searched == ["conv2"]


# ---------------------------------------------------------------- structure files

@pytest.mark.parametrize(("setting", "text"), [
    ("mmin", "NaN"), ("mmax", "1e400"), ("exp_rate", "Infinity"), ("exp_rate", "-Infinity"),
    ("init_alphas", "[0.01]"), ("init_alphas", '{"a": 1}'), ("init_alphas", "0"),
    ("exp_rate", "0"), ("exp_rate", "-0.5"), ("mmin", "0"), ("mmin", "-3"), ("mmin", "1.5"), ("num_branches", "1"), ("num_branches", "4"), ("num_branches", "2.5"),
    ("num_branches", "true"),
])
def test_bad_search_settings(files, setting, text):
    search = json.dumps(dict(SEARCH, **{setting: "@"})).replace('"@"', text)
    path = files.root / "bad-setting.json"
    path.write_text(f'{{"search": {search}, "structure": {{"module.conv2": [2, 2]}}}}')
    load_error(files, None, path, "bad-setting.json", setting)


def test_mmin_above_mmax(files):
    path = files.root / "bounds.json"
    path.write_text(json.dumps({"search": dict(SEARCH, mmin=5, mmax=3), "structure": {"module.conv2": 2}}))
    load_error(files, None, path, "bounds.json", "mmax")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"search": ' + "9" * 5000 + "}"])
def test_pathological_json(files, text):
    path = files.root / "deep.json"
    path.write_text(text)
    load_error(files, None, path, "deep.json")


def test_huge_dilation(files):
    structure = files.structure_file("far.json", {"module.conv2": 10**9})
    load_error(files, None, structure, "far.json", "module.conv2")


def in_a_thread(function, seconds: float = 20):
    """``function()``'s exception, or a failure when it is still running after ``seconds`` (a hang)."""
    outcome: list = []

    def run():
        try:
            function()
        except BaseException as error:  # noqa: BLE001  # handed to the test
            outcome.append(error)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hangs"
    return outcome[0] if outcome else None


@pytest.mark.parametrize("which", ["structure", "checkpoint"])
def test_fifo_is_refused_not_read(files, which):
    fifo = files.root / f"{which}.fifo"
    os.mkfifo(fifo)
    kwargs = {"structure": fifo} if which == "structure" else {"ckpt": fifo}
    error = in_a_thread(lambda: api.load(tiny_model(), **{"ckpt": files.ckpt, "structure": files.structure,
                                                          **kwargs}))
    assert isinstance(error, RFDeployError) and str(fifo) in str(error)


def test_layer_name_with_line_breaks_stays_on_one_line(files):
    structure = files.structure_file("newline.json", {"module.conv2": 2, "module.conv\n9\rx": 2})
    message = load_error(files, None, structure, "newline.json")
    assert "conv\\n9\\rx" in message


# ---------------------------------------------------------------- checkpoints

def with_state(files: Files, name: str, **changes) -> os.PathLike:
    state = dict(files.state)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    return files.checkpoint(name, state)


def test_missing_alphas_of_a_searched_layer(files):
    ckpt = with_state(files, "no-alphas.pth", conv2__branch_weights=None)
    load_error(files, ckpt, None, "no-alphas.pth", "'conv2'", "alphas")


def test_searched_layer_stored_as_a_plain_conv_next_to_one_with_alphas(files):
    structure = files.structure_file("both.json", {"module.conv1": 2, "module.conv2": 2})
    load_error(files, None, structure, "searched.pth", "'conv1'", "alphas")


@pytest.mark.parametrize("alphas", [torch.rand(5), torch.rand(2), torch.rand(3, 1), torch.rand(0)])
def test_alpha_count_that_does_not_match_the_op(files, alphas):
    ckpt = with_state(files, "count.pth", conv2__branch_weights=alphas)
    load_error(files, ckpt, None, "count.pth", "'conv2'")


@pytest.mark.parametrize("alphas", [torch.tensor([1, 2, 3]), torch.tensor([True, False, True]),
                                    torch.tensor([1 + 1j, 1, 1])])
def test_alphas_that_are_not_real_floats(files, alphas):
    ckpt = with_state(files, "dtype.pth", conv2__branch_weights=alphas)
    load_error(files, ckpt, None, "dtype.pth", "conv2")


@pytest.mark.parametrize(("key", "value"), [
    ("conv2.branch_weights", torch.tensor([0.3, float("nan"), 0.2])),
    ("conv2.branch_weights", torch.tensor([0.3, float("inf"), 0.2])),
    ("conv2.branch_weights", torch.zeros(3)),
    ("conv2.op_layer.weight", torch.full((4, 4, 3, 3), float("nan"))),
    ("conv2.op_layer.weight", torch.zeros(4, 4, 3, 3)),
    ("conv2.op_layer.bias", torch.tensor([0.0, float("-inf"), 0.0, 0.0])),
    ("conv1.weight", torch.full((4, 3, 3, 3), float("inf"))),
    ("bn1.running_var", torch.tensor([1.0, float("nan"), 1.0, 1.0])),
])
def test_non_finite_or_all_zero_values_name_the_layer(files, key, value):
    ckpt = with_state(files, "values.pth", **{key.replace(".", "__"): value})
    load_error(files, ckpt, None, "values.pth", key.rpartition(".")[0].removesuffix(".op_layer"))


def test_non_string_key(files):
    path = files.root / "int-key.pth"
    torch.save({"state_dict": {7: torch.ones(1), **files.state}}, path)
    assert set(load_checkpoint(path)) == set(files.state) | {"<int key 7>"}  # a name no layer has, counted


def test_quantized_weight(files):
    quantized = torch.quantize_per_tensor(torch.rand(4, 4, 3, 3), 0.1, 0, torch.qint8)
    ckpt = with_state(files, "quantized.pth", conv2__op_layer__weight=quantized)
    load_error(files, ckpt, None, "quantized.pth", "conv2.op_layer.weight", "quantized")


def test_corrupt_zip_failing_an_assertion_inside_torch(files):
    """A persistent id that is not a storage trips an ``assert`` in torch's loader."""
    path = files.root / "not-storage.pth"
    with zipfile.ZipFile(files.ckpt) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"storage" in data
                data = data.replace(b"storage", b"sturage")
            target.writestr(item, data)
    with pytest.raises(AssertionError):  # what torch's unpickler raises (our own file: no code in it)
        torch.load(path, weights_only=False)
    load_error(files, path, None, "not-storage.pth")


def test_raw_pickle_checkpoint_loads_without_warnings(files):
    """A pickled module in a raw (pre-zip) checkpoint makes torch warn about its source code."""
    path = files.root / "raw.pth"
    torch.save({"state_dict": files.state, "meta": {"net": torch.nn.Conv2d(1, 1, 1)}}, path,
               _use_new_zipfile_serialization=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert [str(w.message) for w in caught] == []


def test_safetensors_naming_a_tensor_twice(files):
    """Both entries valid on their own; safetensors keeps the last one and drops the other silently."""
    path = files.root / "twice.safetensors"
    entry = '"a": {{"dtype": "F32", "shape": [{n}], "data_offsets": [0, {end}]}}'
    header = ("{" + entry.format(n=2, end=8) + ", " + entry.format(n=4, end=16) + "}").encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(RFDeployError, match="'a' twice"):
        load_checkpoint(path)
