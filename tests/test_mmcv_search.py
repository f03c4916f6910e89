"""A real mmcv RF-Next search, trained a few steps, exported by rfdeploy and compared with mmcv's forward."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook
from mmengine.logging import MessageHub
from torch import nn

from rfdeploy import api
from rfdeploy.loader.rates import mmcv_padding


class Backbone(nn.Module):
    """Odd, even, unit, strided, grouped and rectangular kernels: everything mmcv decides per dim."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.tall = nn.Conv2d(16, 16, (3, 1), padding=(1, 0), groups=4)
        self.even = nn.Conv2d(16, 16, (2, 3), padding=(0, 1))  # searched in w only
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.down(self.stem(x)))
        x = x + self.depthwise(x)
        return self.out(torch.relu(self.even(self.tall(x))))


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.neck = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.neck(self.backbone(x))


class DistributedWrapper(nn.Module):
    """Names like DistributedDataParallel's: ``module.`` in front of everything."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def search_config(num_branches: int) -> dict:
    return {"search": {"step": 0, "max_step": 12, "search_interval": 2, "exp_rate": 0.5, "init_alphas": 0.01,
                       "mmin": 1, "mmax": 24, "num_branches": num_branches, "skip_layer": ["stem"]}}


def train(model: nn.Module, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 24, 24, generator=generator)
        loss = (model(x) - 1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def searched_run(tmp_path, num_branches: int, distributed: bool):
    """Search as RFSearchHook does in training: steps of training, estimate-and-expand, more training."""
    torch.manual_seed(0)
    model = DistributedWrapper(Detector()) if distributed else Detector()
    hook = RFSearchHook("search", search_config(num_branches), verbose=False)
    hook.init_model(model)
    train(model, 5, seed=1)
    hook.step(model, str(tmp_path))  # step 1: nothing yet
    hook.step(model, str(tmp_path))  # step 2: estimate rates from the alphas, expand, write the structure
    train(model, 5, seed=2)  # the alphas of the new branches move away from init_alphas
    structure = tmp_path / "local_search_config_step2.json"
    assert structure.exists()
    hub = MessageHub.get_current_instance()
    hub.update_scalar("train/loss", 0.5)
    checkpoint = tmp_path / "epoch_2.pth"
    torch.save({"meta": {"epoch": 2, "seed": np.int64(0)}, "state_dict": model.state_dict(),
                "message_hub": hub.state_dict()}, checkpoint)
    return model, structure, checkpoint


@pytest.mark.parametrize("num_branches", [2, 3])
@pytest.mark.parametrize("distributed", [False, True], ids=["plain-names", "module-prefixed"])
def test_export_of_a_trained_search_equals_mmcv(tmp_path, num_branches, distributed):
    model, structure, checkpoint = searched_run(tmp_path, num_branches, distributed)
    searched_ops = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dRFSearchOp)}
    alphas = [m.branch_weights.detach() for m in searched_ops.values()]
    assert all((a - 0.01).abs().max() > 1e-4 for a in alphas), "training should move the alphas"

    backbone = model.module.backbone if distributed else model.backbone
    result = api.export(Backbone(), checkpoint, structure, input_shapes=[(2, 3, 20, 28)], out=tmp_path / "out")

    assert result.passed, result.report["verification"]
    # a conv-only network: any Abs, ReduceSum or Div would be the alpha normalisation left behind
    assert not {"Abs", "ReduceSum", "Div"} & set(result.report["onnx_ops"])
    assert result.report["onnx_ops"]["Conv"] >= 4
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert set(layers) == {"down", "depthwise", "tall", "even"}
    for name, layer in layers.items():  # mmcv's own rates, read off its live ops
        op = getattr(backbone, name)
        assert [tuple(r) for r in layer["rates"]] == [tuple(r) for r in op.dilation_rates]
    assert result.report["load"]["skipped_entries"] == [
        name for name in json.loads(structure.read_text())["structure"] if "neck" in name]

    x = torch.randn(2, 3, 20, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = backbone(x).numpy()
    actual = ort.InferenceSession(str(tmp_path / "out" / "model.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected, atol=1e-5 * max(1.0, float(np.abs(expected).max())), rtol=0)


def test_mmcv_padding_is_what_the_searched_op_uses():
    op = Conv2dRFSearchOp(nn.Conv2d(4, 4, (5, 3), stride=(2, 1)), search_config(3)["search"], verbose=False)
    for rate in op.dilation_rates:
        assert mmcv_padding((5, 3), (2, 1), rate) == op.get_padding(rate)
