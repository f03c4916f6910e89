"""Loading untrusted checkpoints: tensors come out, pickled code never runs, bad files fail cleanly."""

from __future__ import annotations

import builtins
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from safetensors.torch import save_file

from rfdeploy.errors import RFDeployError
from rfdeploy.loader.checkpoint import load_checkpoint


def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "layer1.0.conv2.op_layer.weight": torch.randn(4, 4, 3, 3, generator=generator),
        "layer1.0.conv2.branch_weights": torch.tensor([0.3, -0.5, 0.2]),
        "layer1.0.bn2.num_batches_tracked": torch.tensor(7),
        "rfconv.rates": torch.tensor([[1, 1], [2, 3]], dtype=torch.int32),
    }


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


class RunsShell:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class OpensFile:
    """Unpickling this would create ``marker`` through ``builtins.open``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


class ExecsCode:
    """Unpickling this would ``exec`` Python that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = [RunsShell, OpensFile, ExecsCode]


def load_or_clean_error(path: Path):
    """The state dict, or the RFDeployError naming the file: nothing else may come out."""
    try:
        return load_checkpoint(path)
    except RFDeployError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        return None


# ---------------------------------------------------------------- good files

def test_safetensors_checkpoint_loads(tmp_path):
    path = tmp_path / "searched.safetensors"
    save_file(weights(), str(path))
    assert_same_tensors(load_checkpoint(path), weights())


def test_bare_state_dict_loads(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(weights(), path)
    assert_same_tensors(load_checkpoint(path), weights())


def test_mmengine_checkpoint_with_message_hub_and_numpy_meta_yields_its_state_dict(tmp_path):
    hub = MessageHub.get_instance("rfdeploy-checkpoint-safety")
    hub.update_scalar("train/loss", 0.75)
    hub.update_scalar("train/lr", 0.01)
    hub.update_info("iter", 120)
    hub_state = hub.state_dict()
    assert isinstance(hub_state["log_scalars"]["train/loss"], HistoryBuffer)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {
        "meta": {"epoch": np.int64(12), "iter": np.int32(120), "lr": np.float64(0.01), "best": np.float32(0.5),
                 "seed": 42, "mmengine_version": "0.10.4", "dataset_meta": {"classes": ("person", "car")},
                 "history": np.arange(4.0)},
        "state_dict": weights(),
        "optimizer": optimizer.state_dict(),
        "message_hub": hub_state,
    }
    path = tmp_path / "epoch_12.pth"
    torch.save(checkpoint, path)
    assert_same_tensors(load_checkpoint(path), weights())


# ---------------------------------------------------------------- malicious pickles

@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("where", ["meta", "state_dict", "top"])
def test_malicious_pickle_in_a_checkpoint_never_runs(tmp_path, payload, where):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    if where == "meta":
        checkpoint = {"meta": {"evil": evil}, "state_dict": weights()}
    elif where == "state_dict":
        checkpoint = {"state_dict": {**weights(), "evil": evil}}
    else:
        checkpoint = evil
    path = tmp_path / "evil.pth"
    torch.save(checkpoint, path)
    assert not marker.exists()

    state = load_or_clean_error(path)

    assert not marker.exists(), "unpickling ran the payload"
    if state is not None:  # the tensors, and nothing the payload made
        assert_same_tensors(state, weights())


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-torch-format", "raw-pickle"])
def test_malicious_non_zip_pickles_never_run(tmp_path, payload, legacy):
    marker = tmp_path / "pwned"
    checkpoint = {"meta": {"evil": payload(marker)}, "state_dict": weights()}
    path = tmp_path / "evil.pth"
    if legacy:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(checkpoint, protocol=2))

    state = load_or_clean_error(path)

    assert not marker.exists(), "unpickling ran the payload"
    if state is not None:
        assert_same_tensors(state, weights())


# ---------------------------------------------------------------- broken files

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors", "empty"])
def test_truncated_checkpoint_is_a_clean_error_naming_the_file(tmp_path, kind):
    path = tmp_path / ("broken.safetensors" if kind == "safetensors" else "broken.pth")
    if kind == "safetensors":
        save_file(weights(), str(path))
    else:
        torch.save({"state_dict": weights()}, path, _use_new_zipfile_serialization=kind != "legacy")
    _truncate(path) if kind != "empty" else path.write_bytes(b"")
    with pytest.raises(RFDeployError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_missing_checkpoint_is_a_clean_error_naming_the_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(RFDeployError, match="nowhere.pth"):
        load_checkpoint(path)


def test_checkpoint_without_tensors_is_a_clean_error(tmp_path):
    path = tmp_path / "meta-only.pth"
    torch.save({"meta": {"epoch": 3}, "state_dict": {"note": "no tensors here"}}, path)
    with pytest.raises(RFDeployError, match="meta-only.pth"):
        load_checkpoint(path)


def test_a_bit_flipped_inside_a_tensor_record_fails_its_crc(tmp_path):
    path = tmp_path / "flipped.pth"
    torch.save({"state_dict": weights()}, path)
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if "/data/" in info.filename)
    flipped = bytearray(path.read_bytes())
    local = record.header_offset  # its local header: 30 bytes, then the name and extra field it gives there
    names = int.from_bytes(flipped[local + 26:local + 28], "little") + int.from_bytes(flipped[local + 28:local + 30],
                                                                                      "little")
    data_start = local + 30 + names
    flipped[data_start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(RFDeployError, match="CRC") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and record.filename in str(error.value)


def test_a_tensor_on_the_meta_device_is_named(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"state_dict": {**weights(), "conv.weight": torch.empty(4, 3, 3, 3, device="meta")}}, path)
    with pytest.raises(RFDeployError, match="conv.weight.*meta") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
