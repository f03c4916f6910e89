"""Zoo: mmdet HRNet (HRNetV2p-W18) and G2L's MS-TCN, checked against real names, shapes and mmcv's hook."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from zoo_util import Detector, component_entries, published, searchable_names

from rfdeploy.models import build, get

HRNET_STRUCTURE = "hrnetv2p_w18_cascade_mask_rcnn_coco.json"
HRNET_SKIP = ("stem", "layer1")


@pytest.fixture(scope="module")
def hrnet() -> nn.Module:
    return build("hrnet_w18")


@pytest.fixture(scope="module")
def mstcn() -> nn.Module:
    return build("mstcn")


# --- HRNet -------------------------------------------------------------------------------------------


def test_hrnet_registry_entry():
    entry = get("hrnet_w18")
    assert entry.input_shape == (1, 3, 224, 224)
    assert entry.component == "backbone"


def test_hrnet_names_match_published_structure(hrnet):
    entries = component_entries(published(HRNET_STRUCTURE))
    searchable = searchable_names(hrnet, skip_layer=HRNET_SKIP)
    assert len(entries) == 261
    assert entries - searchable == set(), "published entries that are not searchable convs here"
    assert searchable - entries == set(), "searchable convs the published structure leaves unnamed"
    # the stem convs are searched (they are named conv1/conv2, not stem); layer1's 3x3s are not
    assert {"conv1", "conv2", "transition1.0.0", "transition1.1.0.0", "transition3.3.0.0"} <= entries
    layer1_3x3 = {n for n in searchable_names(hrnet) if n.startswith("layer1.")}
    assert layer1_3x3 == {f"layer1.{j}.conv2" for j in range(4)}


# Literal keys and shapes of a real mmdet HRNet (HRNetV2p-W18) state dict.
MMDET_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.running_var": (64,),
    "conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.3.conv2.weight": (64, 64, 3, 3),
    "transition1.0.0.weight": (18, 256, 3, 3),
    "transition1.0.1.weight": (18,),
    "transition1.1.0.0.weight": (36, 256, 3, 3),
    "transition1.1.0.1.bias": (36,),
    "transition2.2.0.0.weight": (72, 36, 3, 3),
    "transition3.3.0.0.weight": (144, 72, 3, 3),
    "stage2.0.branches.0.0.conv1.weight": (18, 18, 3, 3),
    "stage2.0.branches.1.3.bn2.weight": (36,),
    "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
    "stage2.0.fuse_layers.0.1.1.running_var": (18,),
    "stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
    "stage3.3.branches.2.3.conv2.weight": (72, 72, 3, 3),
    "stage3.0.fuse_layers.2.0.0.0.weight": (18, 18, 3, 3),
    "stage3.0.fuse_layers.2.0.1.0.weight": (72, 18, 3, 3),
    "stage4.0.fuse_layers.0.3.0.weight": (18, 144, 1, 1),
    "stage4.2.fuse_layers.3.0.1.0.weight": (18, 18, 3, 3),
    "stage4.2.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3),
    "stage4.2.fuse_layers.3.0.2.1.num_batches_tracked": (),
    "stage4.2.branches.3.3.conv2.weight": (144, 144, 3, 3),
}


def test_hrnet_state_dict_keys(hrnet):
    state = hrnet.state_dict()
    assert len(state) == 1830
    for key, shape in MMDET_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    # the last stride-2 conv of a fuse path has BN but no ReLU; the earlier ones have both
    fuse = hrnet.stage4[2].fuse_layers[3][0]
    assert [len(step) for step in fuse] == [3, 3, 2]
    assert hrnet.stage2[0].fuse_layers[0][0] is None
    assert hrnet.transition2[0] is None and hrnet.transition2[1] is None


def test_hrnet_parameter_count(hrnet):
    # mmdet HRNet with the HRNetV2p-W18 extra: 9,562,260 parameters (the "9.56M" HRNet-W18 backbone)
    assert sum(p.numel() for p in hrnet.parameters()) == 9_562_260


def test_hrnet_random_init_is_deterministic_and_nontrivial(hrnet):
    again = build("hrnet_w18")
    for (key, a), b in zip(hrnet.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key
    bn = hrnet.stage3[1].branches[2][0].bn1
    assert 0.5 <= float(bn.running_var.min()) and float(bn.running_var.max()) <= 1.5
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def test_hrnet_forward_channels_and_strides(hrnet):
    with torch.no_grad():
        outputs = hrnet(torch.randn(1, 3, 64, 64))
    assert len(outputs) == 4
    assert [o.shape[1] for o in outputs] == [18, 36, 72, 144]
    assert [64 // o.shape[-1] for o in outputs] == [4, 8, 16, 32]
    assert [64 // o.shape[-2] for o in outputs] == [4, 8, 16, 32]
    for o in outputs:  # random weights, but activations stay in a sane range
        assert torch.isfinite(o).all() and 0.1 < float(o.std()) < 100


def test_hrnet_mmcv_rfsearch_oracle(hrnet, tmp_path):
    rfsearch = pytest.importorskip("mmcv.cnn.rfsearch")
    structure = published(HRNET_STRUCTURE)
    search = {k: v for k, v in structure["search"].items() if k != "S"}
    search.update(num_branches=structure["search"]["S"], skip_layer=list(HRNET_SKIP))
    structure_file = tmp_path / "structure.json"
    structure_file.write_text(json.dumps({"search": search, "structure": structure["structure"]}))

    detector = Detector(build("hrnet_w18"))
    hook = rfsearch.RFSearchHook(mode="fixed_multi_branch", config={"search": search},
                                 rfstructure_file=str(structure_file), verbose=False)
    hook.init_model(detector)

    wrapped = {name for name, m in detector.named_modules() if isinstance(m, rfsearch.Conv2dRFSearchOp)}
    assert len(wrapped) == 261
    assert wrapped == {f"backbone.{name}" for name in component_entries(structure)}
    op = detector.backbone.stage4[2].branches[3][2].conv2
    assert op.op_layer.dilation == (9, 9)

    with torch.no_grad():
        outputs = detector.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 18, 16, 16), (1, 36, 8, 8), (1, 72, 4, 4), (1, 144, 2, 2)]


# --- MS-TCN ------------------------------------------------------------------------------------------

NUM_STAGES, NUM_LAYERS = 4, 10


def dilated_convs(model: nn.Module) -> dict[str, nn.Conv1d]:
    """G2L's searcher rule: every Conv1d with 1 < kernel_size < 5."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv1d) and 1 < m.kernel_size[0] < 5}


def test_mstcn_registry_entry():
    entry = get("mstcn")
    assert entry.input_shape == (1, 2048, 1000)
    assert entry.component == ""


def test_mstcn_dilated_conv_names_dilations_and_paddings(mstcn):
    convs = dilated_convs(mstcn)
    prefixes = ["stage1"] + [f"stages.{s}" for s in range(NUM_STAGES - 1)]
    assert set(convs) == {f"{p}.layers.{i}.conv_dilated" for p in prefixes for i in range(NUM_LAYERS)}
    for prefix in prefixes:
        for i in range(NUM_LAYERS):
            conv = convs[f"{prefix}.layers.{i}.conv_dilated"]
            assert conv.kernel_size == (3,)
            assert conv.dilation == (2 ** i,) and conv.padding == (2 ** i,)
            assert conv.in_channels == conv.out_channels == 64


def test_mstcn_state_dict_and_parameter_count(mstcn):
    shapes = {k: tuple(v.shape) for k, v in mstcn.state_dict().items()}
    assert shapes["stage1.conv_1x1.weight"] == (64, 2048, 1)
    assert shapes["stage1.layers.9.conv_dilated.weight"] == (64, 64, 3)
    assert shapes["stage1.layers.0.conv_1x1.bias"] == (64,)
    assert shapes["stage1.conv_out.weight"] == (48, 64, 1)
    assert shapes["stages.0.conv_1x1.weight"] == (64, 48, 1)
    assert shapes["stages.2.layers.4.conv_dilated.bias"] == (64,)
    assert shapes["stages.2.conv_out.bias"] == (48,)
    assert len(shapes) == NUM_STAGES * (4 + 4 * NUM_LAYERS)  # weight + bias of 2 + 2 * NUM_LAYERS convs
    assert sum(p.numel() for p in mstcn.parameters()) == 813_504


def test_mstcn_forward_shapes_and_stages(mstcn):
    assert 1 + len(mstcn.stages) == NUM_STAGES
    x = torch.randn(2, 2048, 37)  # shorter than most dilations: padding keeps the length anyway
    with torch.no_grad():
        out = mstcn(x)
    assert out.shape == (NUM_STAGES, 2, 48, 37)
    with torch.no_grad():  # stage s + 1 refines the softmax of stage s
        first = mstcn.stage1(x)
        second = mstcn.stages[0](torch.softmax(first, dim=1))
    torch.testing.assert_close(out[0], first, rtol=0, atol=0)
    torch.testing.assert_close(out[1], second, rtol=0, atol=0)


def test_mstcn_mask_matches_original_semantics(mstcn):
    x = torch.randn(1, 2048, 40)
    with torch.no_grad():
        plain = mstcn(x)
        ones = mstcn(x, torch.ones(1, 48, 40))
        mask = torch.ones(1, 48, 40)
        mask[..., 30:] = 0
        masked = mstcn(x, mask)
    torch.testing.assert_close(plain, ones, rtol=0, atol=0)
    assert masked[..., 30:].abs().max() == 0


def test_mstcn_per_layer_dilations():
    from rfdeploy.models.mstcn import MultiStageModel

    dilations = [1 + (7 * k) % 23 for k in range(2 * 3)]
    model = MultiStageModel(num_stages=2, num_layers=3, num_f_maps=8, dim=16, num_classes=5, dilations=dilations)
    got = [m.dilation[0] for m in dilated_convs(model).values()]
    assert got == dilations
    assert model(torch.randn(1, 16, 11)).shape == (2, 1, 5, 11)
    with pytest.raises(ValueError):
        MultiStageModel(num_stages=2, num_layers=3, dilations=[1, 2])
