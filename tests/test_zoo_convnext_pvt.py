"""Zoo: ConvNeXt-T (mmpretrain ``ConvNeXt``) and PVTv2-b0 (mmdet ``PyramidVisionTransformerV2``).

Checked against the published RF-Next structure files (names of the searched convs), against the
originals' parameter names, shapes and counts, and against mmcv's own ``RFSearchHook`` as an oracle.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from zoo_util import Detector, component_entries, published, searchable_names

from rfdeploy import models

CASES = {
    "convnext_tiny": {
        "structure": "convnext_t_cascade_mask_rcnn_coco.json",
        "searched": 18,
        "channels": (96, 192, 384, 768),
    },
    "pvt_v2_b0": {
        "structure": "pvtv2_b0_mask_rcnn_coco.json",
        "searched": 12,
        "channels": (32, 64, 160, 256),
    },
}

# Literal keys and shapes of the original modules (mmpretrain/models/backbones/convnext.py,
# mmdet/models/backbones/pvt.py with mmcv's PatchEmbed / MultiheadAttention).
SPOT_KEYS = {
    "convnext_tiny": {
        "downsample_layers.0.0.weight": (96, 3, 4, 4),
        "downsample_layers.0.1.weight": (96,),
        "downsample_layers.1.0.weight": (96,),
        "downsample_layers.1.1.weight": (192, 96, 2, 2),
        "downsample_layers.3.1.weight": (768, 384, 2, 2),
        "stages.0.0.depthwise_conv.weight": (96, 1, 7, 7),
        "stages.0.0.norm.weight": (96,),
        "stages.0.0.pointwise_conv1.weight": (384, 96),
        "stages.0.0.pointwise_conv2.weight": (96, 384),
        "stages.0.0.gamma": (96,),
        "stages.2.8.depthwise_conv.bias": (384,),
        "stages.3.2.pointwise_conv1.bias": (3072,),
        "norm0.weight": (96,),
        "norm3.bias": (768,),
    },
    "pvt_v2_b0": {
        "layers.0.0.projection.weight": (32, 3, 7, 7),
        "layers.0.0.norm.weight": (32,),
        "layers.0.1.0.norm1.weight": (32,),
        "layers.0.1.0.attn.attn.in_proj_weight": (96, 32),
        "layers.0.1.0.attn.attn.in_proj_bias": (96,),
        "layers.0.1.0.attn.attn.out_proj.weight": (32, 32),
        "layers.0.1.0.attn.sr.weight": (32, 32, 8, 8),
        "layers.0.1.0.attn.norm.weight": (32,),
        "layers.0.1.0.ffn.layers.0.weight": (256, 32, 1, 1),
        "layers.0.1.0.ffn.layers.1.weight": (256, 1, 3, 3),
        "layers.0.1.0.ffn.layers.4.weight": (32, 256, 1, 1),
        "layers.1.0.projection.weight": (64, 32, 3, 3),
        "layers.2.1.1.attn.sr.weight": (160, 160, 2, 2),
        "layers.3.1.1.ffn.layers.1.weight": (1024, 1, 3, 3),
        "layers.3.2.weight": (256,),
    },
}
ABSENT_KEYS = {
    "convnext_tiny": ["norm.weight", "head.fc.weight", "stages.0.0.drop_path.weight"],
    # sr_ratio 1 in the last stage: no reduction conv, no norm after it.
    "pvt_v2_b0": [
        "layers.3.1.0.attn.sr.weight",
        "layers.3.1.0.attn.norm.weight",
        "layers.0.1.2.norm1.weight",
    ],
}


def _convnext_params(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)) -> int:
    total = 3 * widths[0] * 16 + widths[0] + 2 * widths[0]  # stem conv 4x4 + LN
    for i, (depth, c) in enumerate(zip(depths, widths)):
        if i:
            total += 2 * widths[i - 1] + widths[i - 1] * c * 4 + c  # LN + conv 2x2
        block = (49 * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + c  # dw, LN, pw1, pw2, gamma
        total += depth * block + 2 * c  # blocks + norm{i}
    return total


def _pvt_v2_params(
    widths=(32, 64, 160, 256),
    depths=(2, 2, 2, 2),
    kernels=(7, 3, 3, 3),
    sr_ratios=(8, 4, 2, 1),
    mlp_ratios=(8, 8, 4, 4),
) -> int:
    total, c_in = 0, 3
    for c, depth, k, r, m in zip(widths, depths, kernels, sr_ratios, mlp_ratios):
        h = m * c
        total += k * k * c_in * c + c + 2 * c  # patch embedding conv + LN
        attn = (3 * c * c + 3 * c) + (c * c + c) + ((r * r * c * c + c + 2 * c) if r > 1 else 0)
        ffn = (c * h + h) + (9 * h + h) + (h * c + c)
        total += depth * (2 * c + attn + 2 * c + ffn) + 2 * c  # layers + stage norm
        c_in = c
    return total


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These inputs are tiny: one thread is fastest, and immune to a CPU shared with other jobs, where
    two OpenMP threads were seen to run 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(single_thread) -> dict[str, nn.Module]:
    return {name: models.build(name) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_registered_with_default_input(name):
    entry = models.get(name)
    assert entry.input_shape == (1, 3, 224, 224)
    assert entry.component == "backbone"


@pytest.mark.parametrize("name", CASES)
def test_published_structure_names_exactly_the_searchable_convs(zoo, name):
    case = CASES[name]
    structure = published(case["structure"])
    named = component_entries(structure)
    searchable = searchable_names(zoo[name])
    assert named - searchable == set(), "structure entries naming no searchable conv of the zoo model"
    assert searchable - named == set(), "searchable convs the structure file leaves out"
    assert len(searchable) == case["searched"]


@pytest.mark.parametrize("name", CASES)
def test_state_dict_names_and_shapes_follow_the_original(zoo, name):
    state = zoo[name].state_dict()
    for key, shape in SPOT_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_KEYS[name]:
        assert key not in state


def test_convnext_tiny_parameter_count(zoo):
    count = sum(p.numel() for p in zoo["convnext_tiny"].parameters())
    # torchvision / timm convnext_tiny: 28,589,128 with its head (LN 768 + Linear 768->1000); the
    # detector backbone drops the head and normalises each of the 4 outputs (norm0..norm3).
    assert 28_589_128 - (2 * 768 + 768 * 1000 + 1000) + 2 * (96 + 192 + 384 + 768) == 27_821_472
    assert count == _convnext_params() == 27_821_472


def test_pvt_v2_b0_parameter_count(zoo):
    count = sum(p.numel() for p in zoo["pvt_v2_b0"].parameters())
    # The paper's 3.4M; the classifier (per-stage norms + Linear 256->1000) has 3,666,760.
    assert 3_666_760 - (256 * 1000 + 1000) == 3_409_760
    assert count == _pvt_v2_params() == 3_409_760


@pytest.mark.parametrize("name", CASES)
def test_forward_returns_four_maps_at_strides_4_to_32(zoo, name):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = zoo[name](x)
    assert len(outs) == 4
    for out, channels, stride in zip(outs, CASES[name]["channels"], (4, 8, 16, 32)):
        assert tuple(out.shape) == (2, channels, 64 // stride, 96 // stride)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CASES)
def test_build_is_deterministic(zoo, name):
    again = models.build(name)
    for (key, a), b in zip(zoo[name].state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", CASES)
def test_every_searched_conv_reaches_the_output(zoo, name):
    """No searched conv is numerically invisible (as with mmpretrain's layer scale 1e-6): equivalence tests
    of searched models rely on every dilation change showing in the outputs.

    Sensitivity of conv i: |dL/dy_i| * |y_i|, the first-order change of a unit-scale random readout L of
    the outputs when y_i, the conv's output, changes by its own size. Around 10-500 here; ~1e-5 with
    ConvNeXt's gamma at 1e-6.
    """
    model = copy.deepcopy(zoo[name])
    activations: dict[str, torch.Tensor] = {}

    def keep(conv_name):
        def hook(module, inputs, output):
            output.retain_grad()
            activations[conv_name] = output

        return hook

    for conv in searchable_names(model):
        model.get_submodule(conv).register_forward_hook(keep(conv))
    generator = torch.Generator().manual_seed(0)
    outs = model(torch.randn(1, 3, 64, 64, generator=generator))
    readout = sum((o * torch.randn(o.shape, generator=generator)).sum() / o.numel() ** 0.5 for o in outs)
    readout.backward()

    sensitivity = {conv: (y.grad.norm() * y.norm()).item() for conv, y in activations.items()}
    assert len(sensitivity) == CASES[name]["searched"]
    assert min(sensitivity.values()) > 0.1, sensitivity


def _mmcv_config(published_file: dict) -> dict:
    search = {k: v for k, v in published_file["search"].items() if k != "S"}
    search.update(num_branches=published_file["search"]["S"], skip_layer=[])
    return {"search": search, "structure": {}}


@pytest.mark.parametrize("name", CASES)
def test_mmcv_rfsearch_hook_wraps_exactly_the_published_convs(name, tmp_path):
    rfsearch = pytest.importorskip("mmcv.cnn.rfsearch")
    case = CASES[name]
    structure = published(case["structure"])
    structure_file = tmp_path / "structure.json"
    structure_file.write_text(json.dumps({"structure": structure["structure"]}))

    detector = Detector(models.build(name))
    hook = rfsearch.RFSearchHook(
        mode="fixed_multi_branch",
        config=_mmcv_config(structure),
        rfstructure_file=str(structure_file),
        verbose=False,
    )
    hook.init_model(detector)

    wrapped = {n for n, m in detector.named_modules() if isinstance(m, rfsearch.Conv2dRFSearchOp)}
    assert len(wrapped) == case["searched"]
    assert {n.removeprefix("backbone.") for n in wrapped} == component_entries(structure)

    with torch.no_grad():
        outs = detector(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == list(case["channels"])
    assert all(torch.isfinite(o).all() for o in outs)
