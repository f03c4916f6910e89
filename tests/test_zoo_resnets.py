"""Zoo: mmdet ResNet-50 and Res2Net-50 / -101 (26w4s), checked against mmdet's names and mmcv's RFSearchHook.

Literal names, shapes and parameter counts below are mmdet's (mmdet/models/backbones/resnet.py,
res2net.py, layers/res_layer.py); the Res2Net figures equal the published Res2Net-v1b-26w4s classifier
counts (25.72M, 45.23M) minus the 2048x1000 fc (2,049,000), as ResNet-50's 23.5M is 25.56M minus it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from zoo_util import Detector, component_entries, mmcv_searchable, published, searchable_names

from rfdeploy import models

RES2NET_FILES = {
    "res2net50": ("res2net50_panoptic_fpn_coco.json", 39),
    "res2net101": ("res2net101_cascade_mask_rcnn_coco.json", 90),
}
SKIP_LAYER = ["stem", "layer1"]
STAGE_CHANNELS = (256, 512, 1024, 2048)
STAGE_STRIDES = (4, 8, 16, 32)


@pytest.fixture(scope="module")
def zoo():
    built: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in built:
            built[name] = models.build(name)
        return built[name]

    return get


def test_registered_with_default_input():
    for name in ("resnet50", "res2net50", "res2net101"):
        entry = models.get(name)
        assert entry.input_shape == (1, 3, 224, 224)
        assert entry.component == "backbone"


# --- names against the published structure files -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RES2NET_FILES))
def test_published_structure_names_the_searchable_convs(zoo, name):
    file, count = RES2NET_FILES[name]
    structure = published(file)
    assert structure["search"]["skip_layer"] == SKIP_LAYER
    entries = component_entries(structure)
    model = zoo(name)
    assert len(entries) == count
    assert entries - searchable_names(model) == set()  # every entry names a searchable conv
    assert searchable_names(model, SKIP_LAYER) == entries  # and none outside skip_layer is left out


# --- state dict against mmdet's names and shapes --------------------------------------------------------

RESNET50_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_var": (64,),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.bias": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.bn3.weight": (1024,),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
}
RES2NET50_KEYS = {
    "stem.0.weight": (32, 3, 3, 3),
    "stem.1.weight": (32,),
    "stem.3.weight": (32, 32, 3, 3),
    "stem.4.running_var": (32,),
    "stem.6.weight": (64, 32, 3, 3),
    "stem.7.running_mean": (64,),
    "layer1.0.conv1.weight": (104, 64, 1, 1),
    "layer1.0.bn1.weight": (104,),
    "layer1.0.convs.0.weight": (26, 26, 3, 3),
    "layer1.0.bns.2.weight": (26,),
    "layer1.0.conv3.weight": (256, 104, 1, 1),
    "layer1.0.downsample.1.weight": (256, 64, 1, 1),  # downsample.0 is the AvgPool2d, even in layer1
    "layer1.0.downsample.2.running_var": (256,),
    "layer2.0.conv1.weight": (208, 256, 1, 1),
    "layer2.0.convs.0.weight": (52, 52, 3, 3),  # width = floor(128 * 26 / 64) = 52
    "layer2.0.downsample.1.weight": (512, 256, 1, 1),
    "layer3.0.convs.0.weight": (104, 104, 3, 3),
    "layer3.5.bns.1.bias": (104,),
    "layer4.0.convs.2.weight": (208, 208, 3, 3),
    "layer4.2.conv1.weight": (832, 2048, 1, 1),
    "layer4.2.conv3.weight": (2048, 832, 1, 1),
}
ABSENT = {
    "resnet50": ["fc.weight", "stem.0.weight", "layer1.0.downsample.2.weight"],
    "res2net50": ["conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer1.0.bn2.weight",
                  "layer1.0.convs.3.weight", "layer1.0.downsample.0.weight", "layer4.3.conv1.weight"],
    "res2net101": ["layer3.23.conv1.weight", "conv1.weight"],
}  # fmt: skip
PARAMETERS = {"resnet50": 23_508_032, "res2net50": 23_669_352, "res2net101": 43_176_920}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet50", RESNET50_KEYS),
        ("res2net50", RES2NET50_KEYS),
        ("res2net101", {**RES2NET50_KEYS, "layer3.22.convs.2.weight": (104, 104, 3, 3)}),
    ],
)
def test_state_dict_names_and_shapes(zoo, name, expected):
    state = zoo(name).state_dict()
    assert {key: tuple(state[key].shape) for key in expected if key in state} == expected
    assert [key for key in ABSENT[name] if key in state] == []
    assert not any(key.endswith(".pool.weight") for key in state)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count(zoo, name):
    assert sum(p.numel() for p in zoo(name).parameters()) == PARAMETERS[name]


def test_res2net_strides_and_pools(zoo):
    model = zoo("res2net50")
    modules = dict(model.named_modules())
    assert modules["stem.0"].stride == (2, 2) and modules["stem.3"].stride == (1, 1)
    assert isinstance(modules["stem.8"], nn.ReLU)
    assert "layer1.0.pool" not in modules  # stage-first block of layer1 has stride 1: no pool
    for stage in (2, 3, 4):
        pool = modules[f"layer{stage}.0.pool"]
        assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
        assert all(conv.stride == (2, 2) for conv in modules[f"layer{stage}.0.convs"])
        assert f"layer{stage}.1.pool" not in modules
        shortcut = modules[f"layer{stage}.0.downsample.0"]
        assert isinstance(shortcut, nn.AvgPool2d) and (shortcut.kernel_size, shortcut.ceil_mode) == (2, True)
    assert [model.layer1[0].stage_type, model.layer1[1].stage_type] == ["stage", "normal"]


def test_resnet_stride_in_conv2(zoo):
    modules = dict(zoo("resnet50").named_modules())
    for stage in (2, 3, 4):
        assert modules[f"layer{stage}.0.conv1"].stride == (1, 1)
        assert modules[f"layer{stage}.0.conv2"].stride == (2, 2)
        assert modules[f"layer{stage}.0.downsample.0"].stride == (2, 2)


# --- forward --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "res2net50", "res2net101"])
def test_forward_returns_four_stages(zoo, name):
    with torch.no_grad():
        outs = zoo(name)(torch.randn(1, 3, 64, 64))
    assert len(outs) == 4
    for out, channels, stride in zip(outs, STAGE_CHANNELS, STAGE_STRIDES):
        assert tuple(out.shape) == (1, channels, 64 // stride, 64 // stride)
        assert torch.isfinite(out).all()


def mmdet_bottle2neck_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mmdet ``Bottle2neck._inner_forward`` (without plugins / checkpointing), transcribed line by line."""
    identity = x
    out = block.relu(block.bn1(block.conv1(x)))
    spx = torch.split(out, block.width, 1)
    sp = block.relu(block.bns[0](block.convs[0](spx[0].contiguous())))
    out = sp
    for i in range(1, block.scales - 1):
        sp = spx[i] if block.stage_type == "stage" else sp + spx[i]
        sp = block.relu(block.bns[i](block.convs[i](sp.contiguous())))
        out = torch.cat((out, sp), 1)
    conv2_stride = block.convs[0].stride[0]
    if block.stage_type == "normal" or conv2_stride == 1:
        out = torch.cat((out, spx[block.scales - 1]), 1)
    else:
        out = torch.cat((out, block.pool(spx[block.scales - 1])), 1)
    out = block.bn3(block.conv3(out))
    if block.downsample is not None:
        identity = block.downsample(x)
    return block.relu(out + identity)


def test_bottle2neck_matches_mmdet_forward(zoo):
    model = zoo("res2net50")
    x = model.maxpool(model.stem(torch.randn(2, 3, 48, 40)))
    with torch.no_grad():
        for stage in ("layer1", "layer2"):
            for block in getattr(model, stage)[:2]:
                expected = mmdet_bottle2neck_forward(block, x)
                x = block(x)
                torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_deterministic_and_nontrivial_batchnorms(zoo):
    first, again, other = models.build("res2net50"), models.build("res2net50"), models.build("res2net50", 1)
    state, state_again = first.state_dict(), again.state_dict()
    assert all(torch.equal(state[key], state_again[key]) for key in state)
    assert not torch.equal(state["layer2.0.convs.0.weight"], other.state_dict()["layer2.0.convs.0.weight"])
    for name, count in (("resnet50", 1 + 16 * 3 + 4), ("res2net50", 3 + 16 * 5 + 4)):
        norms = [m for m in zoo(name).modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(norms) == count
        for norm in norms:  # folding each BatchNorm must change numbers
            assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
            assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
            assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))


def test_activations_well_scaled_at_default_input(zoo):
    """100 layers deep, eval-mode activations neither explode nor vanish."""
    with torch.no_grad():
        outs = zoo("res2net101")(torch.randn(models.get("res2net101").input_shape))
    for out in outs:
        assert 0.1 < out.std().item() < 10


# --- mmcv oracle: what RFSearchHook does with these backbones -------------------------------------------


def mmcv_search_config(search: dict) -> dict:
    """The published search config in mmcv >= 2's spelling (``num_branches``, ``skip_layer``)."""
    config = {k: v for k, v in search.items() if k not in ("S", "normlize")}
    config.setdefault("num_branches", search.get("S"))
    config.setdefault("skip_layer", SKIP_LAYER)
    return {"search": config}


@pytest.mark.parametrize("name", sorted(RES2NET_FILES))
def test_mmcv_fixed_multi_branch_with_published_structure(tmp_path, name):
    rfsearch = pytest.importorskip("mmcv.cnn.rfsearch")
    file, count = RES2NET_FILES[name]
    structure = published(file)
    structure_file = tmp_path / file
    structure_file.write_text(json.dumps(structure))

    detector = Detector(models.build(name))
    hook = rfsearch.RFSearchHook(
        mode="fixed_multi_branch",
        config=mmcv_search_config(structure["search"]),
        rfstructure_file=str(structure_file),
        verbose=False,
    )
    hook.init_model(detector)

    wrapped = {n: m for n, m in detector.named_modules() if isinstance(m, rfsearch.Conv2dRFSearchOp)}
    assert len(wrapped) == count
    assert {"module." + n for n in wrapped} == {
        k for k in structure["structure"] if k.startswith("module.backbone")
    }
    for n, op in wrapped.items():  # the centre dilation the file gives is what mmcv set
        centre = structure["structure"]["module." + n]
        assert list(op.op_layer.dilation) == (centre if isinstance(centre, list) else [centre, centre])
    with torch.no_grad():
        outs = detector(torch.randn(1, 3, 64, 64))
    expected = [(c, 64 // s, 64 // s) for c, s in zip(STAGE_CHANNELS, STAGE_STRIDES)]
    assert [tuple(o.shape[1:]) for o in outs] == expected
    assert all(torch.isfinite(o).all() for o in outs)


def test_mmcv_search_mode_wraps_resnet50_3x3s_and_stem(zoo):
    rfsearch = pytest.importorskip("mmcv.cnn.rfsearch")
    search = published(RES2NET_FILES["res2net101"][0])["search"]
    config = {"search": {**search, "step": 0, "skip_layer": []}}
    detector = Detector(copy.deepcopy(zoo("resnet50")))
    rfsearch.RFSearchHook(mode="search", config=config, verbose=False).init_model(detector)

    wrapped = {n for n, m in detector.named_modules() if isinstance(m, rfsearch.Conv2dRFSearchOp)}
    blocks = [f"layer{i + 1}.{j}" for i, n in enumerate((3, 4, 6, 3)) for j in range(n)]
    assert wrapped == {"backbone.conv1"} | {f"backbone.{block}.conv2" for block in blocks}
    assert len(wrapped) == 16 + 1
    assert wrapped == {"backbone." + n for n in searchable_names(zoo("resnet50"))}
    unwrapped = [n for n, m in detector.named_modules() if mmcv_searchable(m) and not n.endswith(".op_layer")]
    assert unwrapped == []
    with torch.no_grad():
        outs = detector(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == list(STAGE_CHANNELS)
