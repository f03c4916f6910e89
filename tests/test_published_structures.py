"""Acceptance: every published RF-Next structure file, on its zoo backbone, exports exactly.

The oracle is mmcv-lite's own ``RFSearchHook`` in ``fixed_multi_branch`` mode, given the published file
as users give it (``rfstructure_file``), with random alphas standing in for a trained search.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook
from zoo_util import PUBLISHED, Detector, component_entries, published

from rfdeploy import api, models

CASES = [  # file, zoo model, skip_layer of the search config (fixtures README), searched backbone convs
    ("convnext_t_cascade_mask_rcnn_coco.json", "convnext_tiny", [], 18),
    ("pvtv2_b0_mask_rcnn_coco.json", "pvt_v2_b0", [], 12),
    ("res2net50_panoptic_fpn_coco.json", "res2net50", ["stem", "layer1"], 39),
    ("res2net101_cascade_mask_rcnn_coco.json", "res2net101", ["stem", "layer1"], 90),
    ("hrnetv2p_w18_cascade_mask_rcnn_coco.json", "hrnet_w18", ["stem", "layer1"], 261),
]
INPUT = (1, 3, 64, 64)


def mmcv_searched_detector(file: str, zoo_name: str, skip_layer: list[str], seed: int = 0) -> Detector:
    search = published(file)["search"]
    config = {"search": {key: search[key] for key in ("step", "max_step", "search_interval", "exp_rate",
                                                      "init_alphas", "mmin", "mmax")}}
    config["search"]["num_branches"] = search.get("num_branches", search.get("S"))
    config["search"]["skip_layer"] = skip_layer
    detector = Detector(models.build(zoo_name))
    hook = RFSearchHook("fixed_multi_branch", config, rfstructure_file=str(PUBLISHED / file), verbose=False)
    hook.init_model(detector)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in detector.modules():
            if isinstance(module, Conv2dRFSearchOp):  # a trained search: uneven, some negative
                module.branch_weights.copy_(torch.randn(module.branch_weights.shape, generator=generator))
    return detector.eval()


@pytest.mark.slow
@pytest.mark.parametrize("file, zoo_name, skip_layer, searched_convs", CASES, ids=[c[1] for c in CASES])
def test_published_structure_exports_equal_to_mmcv(tmp_path, file, zoo_name, skip_layer, searched_convs):
    detector = mmcv_searched_detector(file, zoo_name, skip_layer)
    assert sum(isinstance(m, Conv2dRFSearchOp) for m in detector.modules()) == searched_convs
    checkpoint = tmp_path / "searched.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": detector.state_dict()}, checkpoint)

    result = api.export(zoo_name, checkpoint, PUBLISHED / file, input_shapes=[INPUT], out=tmp_path / "out")

    report = result.report
    assert report["verification"]["passed"], report["verification"]
    assert {layer["name"] for layer in report["layers"]} == component_entries(published(file))
    outside = {k for k in published(file)["structure"] if not k.startswith("module.backbone.")}
    assert len(report["load"]["skipped_entries"]) == len(outside)
    assert not {"Abs", "ReduceSum"} & set(report["onnx_ops"])

    x = torch.randn(*INPUT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = [t.numpy() for t in detector(x)]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    actual = session.run(None, {"input": x.numpy()})
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, atol=1e-4 * max(1.0, float(np.abs(e).max())), rtol=0)
