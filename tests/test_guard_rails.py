"""What verification cannot see, said in warnings: random weights, nothing searched, a backbone cut out of a
larger checkpoint, a structure file older than its checkpoint (mmcv's real RFSearchHook and mmengine files)."""

import json

import torch
from mmcv.cnn.rfsearch import RFSearchHook
from mmengine.logging import MessageHub
from test_mmcv_search import Backbone, Detector, search_config, train

from rfdeploy import api, cli


def test_export_without_checkpoint_warns_of_random_weights_and_of_nothing_searched(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export", "--model", "resnet50", "--input-shape", "1,3,32,32", "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rfdeploy: warning: ")]
    assert len(warnings) == 2
    assert "weights are random" in warnings[0] and "not a trained model" in warnings[0]
    assert "0 searched layers" in warnings[1]
    load = json.loads((out / "report.json").read_text())["load"]
    assert load["weights"] == "random" and load["warnings"] == [w.removeprefix("rfdeploy: warning: ")
                                                                for w in warnings]


def test_a_checkpoint_gives_checkpoint_weights_and_no_warning():
    state = {f"backbone.{key}": value for key, value in Backbone().state_dict().items()}
    loaded = api.load(Backbone(), ckpt=state)
    assert loaded.info.weights == "checkpoint"
    assert len(loaded.info.warnings) == 1 and loaded.info.warnings[0].startswith("0 searched layers")


def test_a_backbone_out_of_a_detector_checkpoint_says_backbone_only():
    state = {f"backbone.{key}": value for key, value in Backbone().state_dict().items()}
    state |= {"neck.weight": torch.zeros(4, 4, 3, 3), "neck.bias": torch.zeros(4)}
    warnings = api.load(Backbone(), ckpt=state).info.warnings
    assert any("backbone only (2 tensors of its other parts ignored); pass --model for the whole network" in w
               for w in warnings)


def search(tmp_path, steps: int) -> tuple[torch.nn.Module, RFSearchHook]:
    """``steps`` epochs of mmcv's search: training, then the hook's step, as mmengine runs them."""
    torch.manual_seed(0)
    model = Detector()
    hook = RFSearchHook("search", search_config(3), verbose=False)  # search_interval 2: files at steps 2, 4, ..
    hook.init_model(model)
    for epoch in range(steps):
        train(model, 2, seed=epoch)
        hook.step(model, str(tmp_path))
    return model, hook


def stale_warnings(structure, checkpoint) -> list[str]:
    return [w for w in api.load(Backbone(), checkpoint, structure).info.warnings if "search step" in w]


def test_a_structure_file_older_than_the_checkpoint_is_flagged(tmp_path):
    model, _ = search(tmp_path, 5)
    # mmengine's CheckpointHook after the 5th epoch: meta["epoch"] is the number of completed epochs
    checkpoint = tmp_path / "epoch_5.pth"
    torch.save({"meta": {"epoch": 5, "iter": 10}, "state_dict": model.state_dict()}, checkpoint)
    stale = stale_warnings(tmp_path / "local_search_config_step2.json", checkpoint)
    assert len(stale) == 1
    assert "written at search step 2" in stale[0] and "after epoch 5, past step 4" in stale[0]
    assert stale_warnings(tmp_path / "local_search_config_step4.json", checkpoint) == []


def test_the_message_hub_tells_the_epoch_when_meta_does_not(tmp_path):
    model, _ = search(tmp_path, 4)
    hub = MessageHub.get_instance("rfdeploy-guard-rails")
    hub.update_info("epoch", 3)  # mmengine's running (0-based) epoch: the 4th
    checkpoint = tmp_path / "epoch_4.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict(), "message_hub": hub.state_dict()}, checkpoint)
    assert len(stale_warnings(tmp_path / "local_search_config_step2.json", checkpoint)) == 1
    hub.update_info("epoch", 2)
    torch.save({"meta": {}, "state_dict": model.state_dict(), "message_hub": hub.state_dict()}, checkpoint)
    assert stale_warnings(tmp_path / "local_search_config_step2.json", checkpoint) == []
