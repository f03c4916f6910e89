"""Each searched-model format end to end: files written as the original code wrote them, exported by
``rfdeploy.api.export``, and the ONNX run in onnxruntime against a reference forward.

The references do not come from rfdeploy: the research-format op, RFConv2d and G2L's Conv1d op are
transcribed below from the original code (older mmcv ``rfsearch/operator.py``, open-mmlab/mmcv 198832f3;
ShangHua-Gao/RFNext ``rfconv.py`` and ``rf-action_segmentation/local_searcher/operators.py``); mmcv >= 2
checkpoints are made and run by mmcv-lite's own ``RFSearchHook`` / ``Conv2dRFSearchOp``. Expected rates
are derived by hand.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook
from mmcv.cnn.rfsearch.utils import get_single_padding
from original_rfsearch import expands_rate
from torch import nn

from rfdeploy import api, models

INPUT = (1, 3, 24, 24)
SEARCH_OPS = {"Abs", "ReduceSum"}


# ---------------------------------------------------------------- a tiny backbone and a detector around it

class TinyBackbone(nn.Module):
    """stem / layer1 (skipped by the searches, as for HRNet and Res2Net) and a searched layer2 holding a
    strided 3x3, a depthwise 5x5, a (1, 3) conv and a 1x1; BatchNorms with non-trivial statistics."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 5, padding=2, groups=8),
            nn.Conv2d(8, 8, (1, 3), padding=(0, 1)),
            nn.Conv2d(8, 6, 1),
        )

    def forward(self, x):
        return self.layer2(self.layer1(self.stem(x)))


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.neck = nn.Conv2d(6, 6, 3, padding=1)
        self.bbox_head = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1))

    def forward(self, x):
        return self.bbox_head(self.neck(self.backbone(x)))


def seeded(cls, seed: int) -> nn.Module:
    """``cls()`` with weights and BatchNorm statistics drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    model = cls()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# ---------------------------------------------------------------- files, export and comparison

def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def save_checkpoint(path: Path, state: dict, mmengine: bool = True) -> Path:
    state = {k: v.detach().clone() for k, v in state.items()}
    torch.save({"meta": {"epoch": 12}, "state_dict": state} if mmengine else state, path)
    return path


def onnx_outputs(onnx_model, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def assert_matches_reference(result, reference: nn.Module, shape=INPUT, seed=1234):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference.eval()(x).double().numpy()
    (actual,) = onnx_outputs(result.onnx_model, x)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert float(np.abs(actual - expected).max()) <= 1e-4 + 1e-4 * scale
    ops = {node.op_type for node in result.onnx_model.graph.node}
    assert not ops & SEARCH_OPS, f"search ops left in the graph: {ops & SEARCH_OPS}"
    assert result.report["verification"]["passed"] is True


def layer_rates(report) -> dict[str, list[list[int]]]:
    return {layer["name"]: [list(r) for r in layer["rates"]] for layer in report["layers"]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs: one thread avoids oversubscribing a small, shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export(tmp_path: Path, model, ckpt, structure=None, shape=INPUT):
    result = api.export(model, ckpt, structure, input_shapes=[shape], out=tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "report.json").is_file()
    return result


# ---------------------------------------------------------------- 1. mmcv >= 2 (references: mmcv-lite itself)

MMCV_SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01,
               "mmin": 1, "mmax": 24, "num_branches": 3, "skip_layer": ["stem", "layer1"]}


def mmcv_hook_reference(model: nn.Module, structure_file: Path, mode: str) -> nn.Module:
    """``model`` as mmcv-lite's RFSearchHook makes it in ``mode``, branch weights set to fixed random values."""
    reference = copy.deepcopy(model)
    hook = RFSearchHook(mode=mode, config={"search": copy.deepcopy(MMCV_SEARCH)},
                        rfstructure_file=str(structure_file), verbose=False)
    hook.init_model(reference)
    generator = torch.Generator().manual_seed(7)
    for module in reference.modules():
        if isinstance(module, Conv2dRFSearchOp):
            module.branch_weights.data = torch.randn(3, generator=generator)  # negatives included
    return reference.eval()


def test_mmcv_fixed_single_branch_plain_conv_checkpoint_uses_structure_dilations(tmp_path):
    # fixed_single_branch: plain `X.weight` keys; the structure sets each conv's one dilation (bare int or
    # [dh, dw]) and mmcv's get_single_padding((stride-1) + d*(k-1)) // 2 its padding
    structure = write_json(tmp_path / "structure.json", {"search": MMCV_SEARCH, "structure": {
        "module.layer2.0": [2, 3], "module.layer2.3": 3, "module.layer2.4": [1, 4]}})
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_single_branch")
    assert reference.layer2[0].dilation == (2, 3)
    assert reference.layer2[0].padding == (get_single_padding(3, 2, 2), get_single_padding(3, 2, 3)) == (2, 3)
    ckpt = save_checkpoint(tmp_path / "single.pth", reference.state_dict())
    assert "layer2.0.weight" in torch.load(ckpt)["state_dict"]

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt, structure)
    assert layer_rates(result.report) == {"layer2.0": [[2, 3]], "layer2.3": [[3, 3]], "layer2.4": [[1, 4]]}
    assert_matches_reference(result, reference)


def test_mmcv_multi_branch_structure_values_as_bare_ints_or_lists_are_the_same(tmp_path):
    # layer2.0: 3 (bare) == [3, 3]: 1.5 -> 2, 3, 4.5 -> 4;  layer2.3: [5, 5]: 2.5 -> 2, 5, 7.5 -> 8
    # layer2.4 (kernel (1, 3)): [1, 2]: dim 0 stays 1; dim 1: 1, 2, 3
    structure = write_json(tmp_path / "structure.json", {"search": MMCV_SEARCH, "structure": {
        "module.layer2.0": 3, "module.layer2.3": [5, 5], "module.layer2.4": [1, 2]}})
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    ckpt = save_checkpoint(tmp_path / "multi.pth", reference.state_dict())
    assert "layer2.0.op_layer.weight" in torch.load(ckpt)["state_dict"]

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt, structure)
    assert layer_rates(result.report) == {
        "layer2.0": [[2, 2], [3, 3], [4, 4]],
        "layer2.3": [[2, 2], [5, 5], [8, 8]],
        "layer2.4": [[1, 1], [1, 2], [1, 3]],
    }
    assert_matches_reference(result, reference)
    alphas = reference.layer2[0].branch_weights.detach().abs()
    reported = next(layer["alphas"] for layer in result.report["layers"] if layer["name"] == "layer2.0")
    np.testing.assert_allclose(reported, (alphas / alphas.sum()).numpy(), atol=1e-5)


def test_mmcv_unprefixed_entry_is_live_when_both_spellings_are_present(tmp_path):
    # a resumed search keeps the stale `module.layer2.0: [1, 1]` and adds the live `layer2.0: [5, 5]`
    centres = {"layer2.0": (5, 5), "layer2.3": (2, 2), "layer2.4": (1, 3)}
    reference = seeded(TinyBackbone, 1)
    generator = torch.Generator().manual_seed(3)
    for name, centre in centres.items():
        conv = reference.get_submodule(name)
        conv.dilation = centre
        op = Conv2dRFSearchOp(conv, MMCV_SEARCH, verbose=False)
        op.branch_weights.data = torch.rand(3, generator=generator) + 0.1
        set_child(reference, name, op)
    structure = write_json(tmp_path / "structure.json", {"search": MMCV_SEARCH, "structure": {
        "module.layer2.0": [1, 1], "module.layer2.3": [2, 2], "module.layer2.4": [1, 3],
        "layer2.0": [5, 5], "layer2.3": [2, 2], "layer2.4": [1, 3]}})
    ckpt = save_checkpoint(tmp_path / "resumed.pth", reference.state_dict())

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt, structure)
    # live centre 5: 2.5 -> 2, 5, 7.5 -> 8 (the stale centre 1 would give [1, 2])
    assert layer_rates(result.report)["layer2.0"] == [[2, 2], [5, 5], [8, 8]]
    assert layer_rates(result.report)["layer2.3"] == [[1, 1], [2, 2], [3, 3]]
    assert_matches_reference(result, reference)


def test_mmcv_detector_structure_deployed_on_its_backbone_skips_neck_and_head(tmp_path):
    structure = write_json(tmp_path / "structure.json", {"search": MMCV_SEARCH, "structure": {
        "module.backbone.layer2.0": [2, 2], "module.backbone.layer2.3": [3, 3],
        "module.backbone.layer2.4": [1, 1], "module.neck": [2, 2], "module.bbox_head.0": [1, 1]}})
    detector = mmcv_hook_reference(seeded(TinyDetector, 1), structure, "fixed_multi_branch")
    ckpt = save_checkpoint(tmp_path / "detector.pth", detector.state_dict())
    assert "backbone.layer2.0.op_layer.weight" in torch.load(ckpt)["state_dict"]

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt, structure)
    skipped = {name.removeprefix("module.") for name in result.report["load"]["skipped_entries"]}
    assert skipped == {"neck", "bbox_head.0"}
    assert layer_rates(result.report) == {
        "layer2.0": [[1, 1], [2, 2], [3, 3]],  # 2: 1, 2, 3
        "layer2.3": [[2, 2], [3, 3], [4, 4]],  # 3: 1.5 -> 2, 3, 4.5 -> 4
        "layer2.4": [[1, 1], [1, 2]],          # (1, 1): dim 1: 0.5 -> 0 -> 1, 1, 1.5 -> 2; dim 0 fixed
    }
    assert_matches_reference(result, detector.backbone)


# ---------------------------------------------------------------- 2. the research format ("S", "weights")

class ResearchConv2dRFSearchOp(nn.Module):
    """Transcribed from the older mmcv ``rfsearch/operator.py`` (open-mmlab/mmcv at 198832f3)
    ``Conv2dRFSearchOp(op_layer, init_dilation, global_config, S)``: rates from ``expands_rate``; ``[1 1 x] -> [1 x]``; S=2 keeps the outer two;
    ``weights`` has 3 entries; padding ``r * (kernel_size[0] - 1) // 2``; ``absavg`` normalisation."""

    def __init__(self, op_layer: nn.Conv2d, init_dilation: int, config: dict, S: int):
        super().__init__()
        self.op_layer = op_layer
        rates = expands_rate(init_dilation, config)
        self.weights = nn.Parameter(torch.Tensor(len(rates)))
        if init_dilation == 1:
            rates = rates[1:]
        elif S == 2:
            rates = [rates[0], rates[2]]
        self.rates = rates
        nn.init.constant_(self.weights, config["init_alphas"])

    def forward(self, x):
        w = self.weights[: len(self.rates)].abs()
        norm_w = w / w.sum()
        k0 = self.op_layer.kernel_size[0]
        out = [F.conv2d(x, self.op_layer.weight, self.op_layer.bias, self.op_layer.stride, r * (k0 - 1) // 2,
                        (r, r), self.op_layer.groups) * norm_w[i] for i, r in enumerate(self.rates)]
        y = out[0]
        for term in out[1:]:
            y = y + term
        return y


RESEARCH_SEARCH = {"step": 11, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01,
                   "normlize": "absavg", "mmin": 1, "mmax": 24, "finetune": False}


@pytest.mark.parametrize("S, expected", [
    # layer2.0: d=1 -> three [clip(0)=1, 1, round(1.5)=2] -> three[1:] = [1, 2] whatever S
    # layer2.3: d=5 -> [round(2.5)=2, 5, round(7.5)=8];  layer1.0: d=3 -> [round(1.5)=2, 3, round(4.5)=4]
    # S=2 keeps [three[0], three[2]]
    (2, {"layer2.0": [[1, 1], [2, 2]], "layer2.3": [[2, 2], [8, 8]], "layer1.0": [[2, 2], [4, 4]]}),
    (3, {"layer2.0": [[1, 1], [2, 2]], "layer2.3": [[2, 2], [5, 5], [8, 8]],
         "layer1.0": [[2, 2], [3, 3], [4, 4]]}),
])
def test_research_format_checkpoint_exports_equal_to_the_original_forward(tmp_path, S, expected):
    # layer1.0 named on purpose (d=3: 1.5 -> 2, 3, 4.5 -> 4); stem and the (1, 3) conv are not named and
    # stay plain
    centres = {"layer2.0": 1, "layer2.3": 5, "layer1.0": 3}
    config = dict(RESEARCH_SEARCH, S=S)
    reference = seeded(TinyBackbone, 1)
    generator = torch.Generator().manual_seed(S)
    for name, d in centres.items():
        conv = reference.get_submodule(name)
        k0 = conv.kernel_size[0]
        conv.dilation, conv.padding = (d, d), (d * (k0 - 1) // 2,) * 2  # the hook's set_model
        op = ResearchConv2dRFSearchOp(conv, d, config, S)
        op.weights.data = torch.tensor([0.7, -0.2, 0.4]) + 0.1 * torch.randn(3, generator=generator)
        set_child(reference, name, op)
    structure = write_json(tmp_path / "structure.json", {
        "search": config, "structure": {f"module.{name}": d for name, d in centres.items()}})
    ckpt = save_checkpoint(tmp_path / "research.pth", reference.state_dict())
    assert "layer2.3.weights" in torch.load(ckpt)["state_dict"]

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt, structure)
    assert layer_rates(result.report) == expected
    assert_matches_reference(result, reference)


# ---------------------------------------------------------------- 3. RFConv2d (self-describing, no structure)

class RFConv2dReference(nn.Conv2d):
    """Transcribed from ShangHua-Gao/RFNext ``rfconv.py`` (20333635) ``RFConv2d`` (inference only): buffers
    ``counter``, ``current_search_step``, ``rates`` (int32 [n, 2]), ``num_rates`` (int32 [1]), parameter
    ``sample_weights``; with one rate a plain conv (timm ``get_padding``), otherwise branches with padding
    ``rate * (k - 1) // 2`` mixed by ``|w| / sum |w|``."""

    def __init__(self, conv: nn.Conv2d, num_branches: int = 3):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.sample_weights = nn.Parameter(torch.Tensor(num_branches).fill_(0.01))
        self.register_buffer("counter", torch.zeros(1))
        self.register_buffer("current_search_step", torch.zeros(1))
        self.register_buffer("rates", torch.ones(size=(num_branches, 2), dtype=torch.int32))
        self.register_buffer("num_rates", torch.ones(1, dtype=torch.int32))

    def set_rates(self, rates, num_rates, sample_weights):
        for i, rate in enumerate(rates):
            self.rates[i] = torch.tensor(rate, dtype=torch.int32)
        self.num_rates[0] = num_rates
        self.sample_weights.data = torch.tensor(sample_weights, dtype=torch.float32)
        if num_rates == 1:  # what estimate() leaves: dilation rates[0], padding timm get_padding
            self.dilation = tuple(int(v) for v in self.rates[0])
            self.padding = tuple(((s - 1) + d * (k - 1)) // 2
                                 for k, s, d in zip(self.kernel_size, self.stride, self.dilation))

    def forward(self, x):
        if self.num_rates.item() == 1:
            return super().forward(x)
        n = self.num_rates.item()
        w = self.sample_weights[:n].abs()
        norm_w = w / w.sum()
        out = []
        for i in range(n):
            rate = (self.rates[i][0].item(), self.rates[i][1].item())
            padding = (rate[0] * (self.kernel_size[0] - 1) // 2, rate[1] * (self.kernel_size[1] - 1) // 2)
            out.append(F.conv2d(x, self.weight, self.bias, self.stride, padding, rate, self.groups) * norm_w[i])
        y = out[0]
        for term in out[1:]:
            y = y + term
        return y


def rfconv_model(base: nn.Module, layers: dict) -> nn.Module:
    model = copy.deepcopy(base)
    for name, (rates, num_rates, sample_weights) in layers.items():
        rf = RFConv2dReference(model.get_submodule(name))
        rf.set_rates(rates, num_rates, sample_weights)
        set_child(model, name, rf)
    return model.eval()


def test_rfconv2d_checkpoint_exports_equal_to_the_original_forward(tmp_path):
    reference = rfconv_model(seeded(TinyBackbone, 1), {
        # three live non-square rates on a strided 3x3
        "layer2.0": ([(1, 1), (2, 3), (3, 5)], 3, [0.5, -0.3, 0.2]),
        # two live rates of three: the stale third rate and its large weight must be ignored
        "layer2.3": ([(2, 2), (4, 4), (9, 9)], 2, [0.2, -0.6, 5.0]),
        # the (1, 3) conv: height rate stays 1
        "layer2.4": ([(1, 1), (1, 2), (1, 3)], 3, [0.1, 0.1, 0.8]),
        # one live rate: a plain conv with dilation rates[0]
        "layer1.0": ([(2, 2), (3, 3), (4, 4)], 1, [1.0, 3.0, 3.0]),
    })
    state = reference.state_dict()
    assert state["layer2.0.rates"].dtype == torch.int32 and state["layer2.0.num_rates"].shape == (1,)
    ckpt = save_checkpoint(tmp_path / "rfconv.pth", state, mmengine=False)

    result = export(tmp_path, seeded(TinyBackbone, 0), ckpt)
    assert layer_rates(result.report) == {
        "layer2.0": [[1, 1], [2, 3], [3, 5]],
        "layer2.3": [[2, 2], [4, 4]],
        "layer2.4": [[1, 1], [1, 2], [1, 3]],
        "layer1.0": [[2, 2]],
    }
    assert_matches_reference(result, reference)


class StridedThree(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_rfconv2d_single_rate_strided_conv_keeps_the_original_get_padding(tmp_path):
    # one live rate runs nn.Conv2d.forward with the padding estimate() set: timm get_padding(k=3, s=3, d=1)
    # = ((3 - 1) + 1 * 2) // 2 = 2 (not 1 * (3 - 1) // 2 = 1): a 12x12 input gives 5x5, not 4x4
    reference = rfconv_model(seeded(StridedThree, 1), {"conv": ([(1, 1), (2, 2), (3, 3)], 1, [1.0, 0.0, 0.0])})
    assert reference.conv.padding == (2, 2)
    ckpt = save_checkpoint(tmp_path / "rfconv.pth", reference.state_dict(), mmengine=False)
    result = export(tmp_path, seeded(StridedThree, 0), ckpt, shape=(1, 3, 12, 12))
    assert_matches_reference(result, reference, shape=(1, 3, 12, 12))


# ---------------------------------------------------------------- 4. G2L (MS-TCN, Conv1d, ReLU per branch)

class G2LConv1dOp(nn.Module):
    """Transcribed from ShangHua-Gao/RFNext ``rf-action_segmentation/local_searcher/operators.py`` (c95bd598)
    ``Conv1dOp``: three rates from ``expands_rate`` (never de-duplicated), ``weights`` of length 3,
    ``relu(conv1d(x, W, b, padding=r, dilation=r)) * norm_w[i]`` summed."""

    def __init__(self, op_layer: nn.Conv1d, init_dilation: int, config: dict):
        super().__init__()
        self.op_layer = op_layer
        self.rates = expands_rate(init_dilation, config)
        self.weights = nn.Parameter(torch.Tensor(len(self.rates)))
        nn.init.constant_(self.weights, config["init_alphas"])

    def forward(self, x):
        w = self.weights.abs()
        norm_w = w / w.sum()
        out = [F.relu(F.conv1d(x, self.op_layer.weight, self.op_layer.bias, padding=r, dilation=r)) * norm_w[i]
               for i, r in enumerate(self.rates)]
        y = out[0]
        for term in out[1:]:
            y = y + term
        return y


G2L_GLOBAL = {"step": 30, "max_step": 31, "search_interval": 3, "exp_rate": 0.1, "init_alphas": 0.01,
              "normlize": "absavg", "mmin": 1, "mmax": 2048, "finetune": False}


def test_g2l_mstcn_checkpoint_exports_equal_to_the_original_forward(tmp_path):
    reference = models.build("mstcn", seed=1)
    names = [name for name, m in reference.named_modules() if name.endswith("conv_dilated")]
    assert len(names) == 40
    # a centre per layer, the tie cases among them: 4 -> [4, 4, 4]; 5 -> [4, 5, 6]; 15 -> [14, 15, 16];
    # 25 -> [22, 25, 28]; 1 -> [1, 1, 1]; 10 -> [9, 10, 11]
    pool = [4, 5, 15, 25, 1, 10, 2, 7]
    centres = {name: pool[i % len(pool)] for i, name in enumerate(names)}
    expected = {4: [4, 4, 4], 5: [4, 5, 6], 15: [14, 15, 16], 25: [22, 25, 28], 1: [1, 1, 1],
                10: [9, 10, 11], 2: [2, 2, 2], 7: [6, 7, 8]}  # 1.8 -> 2, 2.2 -> 2; 6.3 -> 6, 7.7 -> 8
    generator = torch.Generator().manual_seed(11)
    for name, d in centres.items():
        conv = reference.get_submodule(name)
        conv.dilation, conv.padding = (d,), (d,)  # the searcher's set_model
        op = G2LConv1dOp(conv, d, G2L_GLOBAL)
        op.weights.data = torch.randn(3, generator=generator)
        set_child(reference, name, op)
    structure = write_json(tmp_path / "structure.json", {"global": G2L_GLOBAL, "model": centres})
    ckpt = tmp_path / "epoch-50.model"
    torch.save(reference.state_dict(), ckpt)  # as G2L's Trainer saves it: a bare state dict
    assert "stage1.layers.0.conv_dilated.op_layer.weight" in torch.load(ckpt)

    shape = (1, 2048, 40)
    result = export(tmp_path, "mstcn", ckpt, structure, shape=shape)
    rates = layer_rates(result.report)
    assert rates == {name: [[r] for r in expected[d]] for name, d in centres.items()}
    assert_matches_reference(result, reference, shape=shape)
