"""Whole detectors built by real mmdet 3.3, searched by mmcv-lite's own RFSearchHook, exported by rfdeploy.

mmdet 3.3 accepts mmcv < 2.2 only, so these tests run in ``make test``'s second pass, with mmcv-lite 2.1.0
and mmdet in an overlay (``.mmdet/``) in front of the venv's mmcv-lite 2.2 (whose oracle tests stay where they
are). mmcv-lite lacks mmcv's compiled extension; a detector's tensor-mode forward needs none of it, so a
stand-in module (tests/mmcv_ext_stand_in.py) is enough to import mmdet. The reference is mmcv's own
forward of the searched detector: backbone, neck and head.
"""

# ruff: noqa: C408  (configs written as mmdet writes them)
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

mmcv = pytest.importorskip("mmcv")
if not mmcv.__version__.startswith("2.1."):
    pytest.skip(f"needs mmcv-lite 2.1 with mmdet 3.3 (here mmcv {mmcv.__version__}): make test runs it with the "
                ".mmdet overlay", allow_module_level=True)

import mmcv_ext_stand_in

mmcv_ext_stand_in.install()
pytest.importorskip("mmdet")
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from rfdeploy import api, cli

register_all_modules()
SHAPE = (1, 3, 64, 96)
SEARCH = {"step": 0, "max_step": 12, "search_interval": 1, "exp_rate": 0.5, "init_alphas": 0.01, "mmin": 1,
          "mmax": 24, "num_branches": 3, "skip_layer": ["stem"]}
BACKBONE = dict(type="ResNet", depth=18, base_channels=16, num_stages=4, out_indices=(0, 1, 2, 3),
                norm_cfg=dict(type="BN"), norm_eval=True, style="pytorch")
NECK = dict(type="FPN", in_channels=[16, 32, 64, 128], out_channels=32, start_level=1, num_outs=5)
HEAD = dict(num_classes=3, in_channels=32, stacked_convs=2, feat_channels=32)
ANCHORS = dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
               strides=[8, 16, 32, 64, 128])
CONFIGS = {
    "retinanet": dict(type="RetinaNet", backbone=BACKBONE, neck=dict(NECK, add_extra_convs="on_input"),
                      bbox_head=dict(type="RetinaHead", anchor_generator=ANCHORS, **HEAD)),
    "fcos": dict(type="FCOS", backbone=BACKBONE,
                 neck=dict(NECK, add_extra_convs="on_output", relu_before_extra_convs=True),
                 bbox_head=dict(type="FCOSHead", strides=[8, 16, 32, 64, 128],
                                norm_cfg=dict(type="GN", num_groups=8, requires_grad=True), **HEAD)),
}


def build(name: str) -> nn.Module:
    """The plain detector, as mmdet builds it from its config; weights and BatchNorm statistics seeded."""
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(CONFIGS[name]))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def retinanet() -> nn.Module:
    return build("retinanet")


def fcos() -> nn.Module:
    return build("fcos")


def draw_alphas(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, Conv2dRFSearchOp):
            module.branch_weights.data = torch.randn(3, generator=generator)  # negatives included


def searched(name: str, hook: RFSearchHook) -> nn.Module:
    model = build(name)
    hook.init_model(model)
    draw_alphas(model, seed=1)
    return model.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        nested = model(x)  # mode="tensor": per head output, one tensor per pyramid level
    return [t.numpy() for level in nested for t in level]


def assert_onnx_equals(onnx_file, reference: nn.Module) -> None:
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(5))
    expected = outputs(reference, x)
    actual = ort.InferenceSession(str(onnx_file)).run(None, {"input": x.numpy()})
    assert len(actual) == len(expected) >= 10  # 5 levels x (scores, boxes[, centerness])
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=1e-4 * max(1.0, float(np.abs(e).max())), rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_an_in_memory_searched_detector_exports_whole_and_equal_to_mmcv(tmp_path, name):
    model = searched(name, RFSearchHook("search", {"search": copy.deepcopy(SEARCH)}, verbose=False))
    ops = [n for n, m in model.named_modules() if isinstance(m, Conv2dRFSearchOp)]
    assert {n.split(".")[0] for n in ops} == {"backbone", "neck", "bbox_head"}

    result = api.export(model, input_shapes=[SHAPE], out=tmp_path / "out")

    assert result.passed, result.report["verification"]
    assert [layer["name"] for layer in result.report["layers"]] == ops
    assert not {"Abs", "ReduceSum", "Div", "BatchNormalization", "Identity"} & set(result.report["onnx_ops"])
    assert_onnx_equals(tmp_path / "out" / "model.onnx", model)


def test_cli_exports_a_searched_detector_from_its_checkpoint_and_structure(tmp_path, capsys):
    hook = RFSearchHook("search", {"search": copy.deepcopy(SEARCH)}, verbose=False)
    model = searched("retinanet", hook)
    hook.step(model, str(tmp_path))  # estimate every op's dilation from its alphas, expand, write the structure
    draw_alphas(model, seed=2)  # what the next stretch of training does to the new branches' alphas
    structure = tmp_path / "local_search_config_step1.json"
    moved = [n for n, d in json.loads(structure.read_text())["structure"].items() if tuple(d) != (1, 1)]
    assert moved, "the drawn alphas should move some dilations away from 1"
    ckpt = tmp_path / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": model.state_dict()}, ckpt)

    code = cli.main(["export", "--model", "test_mmdet_detectors:retinanet", "--ckpt", str(ckpt), "--structure",
                     str(structure), "--input-shape", ",".join(map(str, SHAPE)), "--out", str(tmp_path / "out")])

    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["load"]["skipped_entries"] == [] and len(report["layers"]) > len(moved) > 0
    assert_onnx_equals(tmp_path / "out" / "model.onnx", model)


# ---------------------------------------------------------------- --config: the files an RF-Next user holds

def write_config(path, structure=None, hook_mode="fixed_multi_branch", model="retinanet", scope="mmdet") -> None:
    """An mmdet config as RF-Next's are written: the model, the test pipeline, the search hook."""
    hooks = [] if structure is None else [dict(type="RFSearchHook", mode=hook_mode, rfstructure_file=str(structure),
                                               verbose=True, by_epoch=True, config=dict(search=SEARCH))]
    model_cfg = dict(CONFIGS[model], data_preprocessor=dict(type="DetDataPreprocessor", pad_size_divisor=32))
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(90, 60), keep_ratio=True),
                dict(type="PackDetInputs")]
    path.write_text(f"default_scope = {scope!r}\nmodel = {model_cfg!r}\ntest_pipeline = {pipeline!r}\n"
                    f"custom_hooks = {hooks!r}\n")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def searched_files(request, tmp_path_factory):
    """A detector (RetinaNet, FCOS) searched by mmcv's hook one step, saved as mmengine saves it, and its structure
    file."""
    root = tmp_path_factory.mktemp(f"config-{request.param}")
    hook = RFSearchHook("search", {"search": copy.deepcopy(SEARCH)}, verbose=False)
    model = searched(request.param, hook)
    hook.step(model, str(root))
    draw_alphas(model, seed=2)
    ckpt = root / "epoch_1.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": model.state_dict()}, ckpt)
    return request.param, model, ckpt, root / "local_search_config_step1.json"


def test_cli_exports_a_detector_from_its_config_checkpoint_and_the_hooks_structure(searched_files, tmp_path, capsys):
    name, model, ckpt, structure = searched_files
    config = tmp_path / f"{name}_rfsearch.py"
    write_config(config, structure, model=name)

    code = cli.main(["export", "--config", str(config), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")])

    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["structure"] == str(structure)  # named by the hook, not given
    assert report["verification"]["input_shapes"] == [list(SHAPE)]  # the test Resize (90, 60), padded to 32
    assert any("RFSearchHook mode fixed_multi_branch" in note for note in report["load"]["notes"])
    assert len(report["layers"]) == len(json.loads(structure.read_text())["structure"])
    assert_onnx_equals(tmp_path / "out" / "model.onnx", model)


def test_a_config_without_the_search_hook_is_a_plain_model_and_says_so(tmp_path):
    config = tmp_path / "plain.py"
    write_config(config)
    loaded = api.load(config=config)
    assert not any(isinstance(m, Conv2dRFSearchOp) for m in loaded.searched.modules())
    assert any("no RFSearchHook" in note for note in loaded.info.notes)
    assert loaded.input_shapes == [SHAPE]


@pytest.mark.parametrize(("write", "named"), [
    (lambda path: write_config(path, path.parent / "missing.json"), "missing.json does not exist"),
    (lambda path: path.write_text("default_scope = 'mmdet'\nmodel = dict(type='NoSuchDetector')\n"),
     "cfg.model does not build"),
    (lambda path: write_config(path, scope="mmseg"), "pip install mmsegmentation"),
    (lambda path: path.write_text("model = dict(\n"), "cannot be read"),
])
def test_a_bad_config_is_one_line_naming_it(tmp_path, capsys, write, named):
    config = tmp_path / "bad_config.py"
    write(config)
    code = cli.main(["export", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("rfdeploy: error:"), err
    assert named in err and "bad_config.py" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- --mmdeploy: mmdeploy's end2end model, search kept

DEPLOY_ORT = dict(
    onnx_config=dict(type="onnx", export_params=True, keep_initializers_as_inputs=False, opset_version=11,
                     save_file="end2end.onnx", input_names=["input"], output_names=["dets", "labels"],
                     input_shape=None, optimize=True),
    codebase_config=dict(type="mmdet", task="ObjectDetection", model_type="end2end",
                         post_processing=dict(score_threshold=0.05, confidence_threshold=0.005, iou_threshold=0.5,
                                              max_output_boxes_per_class=200, pre_top_k=5000, keep_top_k=100,
                                              background_label_id=-1)),
    backend_config=dict(type="onnxruntime"))
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                max_per_img=100)


DETECTOR_TYPES = {"retinanet": "RetinaNet", "fcos": "FCOS"}


def write_full_config(path, structure, model="retinanet") -> None:
    """A config as mmdeploy needs it: the test pipeline with its image loading and packing, the head's test_cfg."""
    write_config(path, structure, model=model)
    kind = DETECTOR_TYPES[model]
    text = path.read_text().replace(f"'type': '{kind}'", f"'type': '{kind}', 'test_cfg': {TEST_CFG!r}")
    text = text.replace("'pad_size_divisor': 32", "'pad_size_divisor': 32, 'mean': [123.675, 116.28, 103.53], "
                                                   "'std': [58.395, 57.12, 57.375], 'bgr_to_rgb': True")
    path.write_text(text + "test_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n")


def test_mmdeploy_exports_the_compiled_detector_end2end_equal_to_the_searched_one(searched_files, tmp_path):
    from mmdeploy.apis import build_task_processor
    from mmdeploy.core import RewriterContext, patch_model
    from mmdeploy.utils import IR
    from mmengine.config import Config

    name, _, ckpt, structure = searched_files
    config, deploy = tmp_path / f"{name}_rfsearch.py", tmp_path / "detection_onnxruntime_static.py"
    write_full_config(config, structure, name)
    deploy.write_text("".join(f"{key} = {value!r}\n" for key, value in DEPLOY_ORT.items()))
    out = tmp_path / "out"

    # a process of its own, as a user runs it (with the stand-in for mmcv's compiled ops), so that its stdout is real
    argv = ["export", "--config", str(config), "--ckpt", str(ckpt), "--mmdeploy", str(deploy), "--out", str(out),
            "--json", "--triton", str(tmp_path / "repo")]
    program = f"import mmcv_ext_stand_in; mmcv_ext_stand_in.install(); from rfdeploy import cli; exit(cli.main({argv!r}))"
    paths = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=paths), check=False)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # mmengine's and mmdeploy's logs went to stderr
    assert report["mmdeploy"]["passed"]
    served = tmp_path / "repo" / report["triton"]["model"]
    assert (served / "1" / "model.onnx").read_bytes() == (out / "end2end.onnx").read_bytes()
    assert 'name: "dets"' in (served / "config.pbtxt").read_text()
    assert {"end2end.onnx", "deploy.json", "pipeline.json", "detail.json"} <= {p.name for p in out.iterdir()}
    check = json.loads((out / "report.json").read_text())["mmdeploy"]
    assert check["passed"] and check["unmatched"] == 0 and check["rows"] > 0
    # independently of rfdeploy's check: the searched detector as mmcv's hook builds it, through mmdeploy's own
    # rewritten forward in PyTorch, against end2end.onnx in onnxruntime
    model_cfg, deploy_cfg = Config.fromfile(str(config)), Config.fromfile(str(deploy))
    searched_model = api.load(config=config, ckpt=ckpt).searched
    processor = build_task_processor(model_cfg, deploy_cfg, "cpu")
    image = np.random.default_rng(7).integers(0, 256, (SHAPE[2], SHAPE[3], 3), dtype=np.uint8)
    data, tensor = processor.create_input(image, None, searched_model.data_preprocessor)
    patched = patch_model(copy.deepcopy(searched_model), cfg=deploy_cfg, backend="onnxruntime", ir=IR.ONNX)
    with RewriterContext(cfg=deploy_cfg, backend="onnxruntime", ir=IR.ONNX, opset=11), torch.no_grad():
        dets, labels = patched(tensor, data_samples=data["data_samples"], mode="predict")
    got_dets, got_labels = ort.InferenceSession(str(out / "end2end.onnx")).run(None, {"input": tensor.numpy()})
    strong = dets[0, :, 4] > 0.1  # clear of the score cut-off
    assert strong.any()
    for row, label in zip(dets[0][strong].numpy(), labels[0][strong].numpy()):
        same = (got_labels[0] == label) & (np.abs(got_dets[0] - row).max(axis=1) < 1e-3)
        assert same.any(), (row, label)


def test_mmdeploy_with_a_deploy_config_of_another_codebase_is_one_line(searched_files, tmp_path, capsys):
    name, _, ckpt, structure = searched_files
    config, deploy = tmp_path / f"{name}_rfsearch.py", tmp_path / "segmentation.py"
    write_full_config(config, structure, name)
    other = dict(DEPLOY_ORT, codebase_config=dict(type="mmseg", task="Segmentation"))
    deploy.write_text("".join(f"{key} = {value!r}\n" for key, value in other.items()))
    code = cli.main(["export", "--config", str(config), "--ckpt", str(ckpt), "--mmdeploy", str(deploy),
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is for codebase mmseg" in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- optimize on mmdeploy's own export of the searched model

TRT_BACKEND = dict(type="tensorrt", common_config=dict(fp16_mode=False, max_workspace_size=1 << 30),
                   model_inputs=[dict(input_shapes=dict(input=dict(min_shape=list(SHAPE), opt_shape=list(SHAPE),
                                                                   max_shape=list(SHAPE))))])
EXPORT_SEARCHED = """
import copy, functools, sys
import numpy as np, torch
import mmcv_ext_stand_in
mmcv_ext_stand_in.install()
import test_mmdet_detectors as T
from mmcv.cnn.rfsearch import RFSearchHook
from mmdeploy.apis import build_task_processor
from mmdeploy.apis.onnx import export
from mmdet.registry import MODELS
from mmengine.config import Config

model_cfg, deploy_cfg = Config.fromfile(sys.argv[1]), Config.fromfile(sys.argv[2])
torch.manual_seed(0)
model = MODELS.build(model_cfg.model)
RFSearchHook("search", {"search": copy.deepcopy(T.SEARCH)}, verbose=False).init_model(model)
T.draw_alphas(model, seed=1)
model.eval()
processor = build_task_processor(model_cfg, Config(copy.deepcopy(T.DEPLOY_ORT)), "cpu")
image = np.random.default_rng(0).integers(0, 256, (T.SHAPE[2], T.SHAPE[3], 3), dtype=np.uint8)
data, tensor = processor.create_input(image, None, model.data_preprocessor)
torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)  # mmdeploy 1.3.1 needs TorchScript's
export(model, tensor, sys.argv[3], backend=deploy_cfg.backend_config.type,
       input_metas={"data_samples": data["data_samples"], "mode": "predict"}, context_info={"deploy_cfg": deploy_cfg},
       input_names=["input"], output_names=["dets", "labels"], opset_version=11, dynamic_axes=None, verbose=False,
       keep_initializers_as_inputs=False, optimize=False)
"""


@pytest.fixture(scope="module", params=["onnxruntime", "tensorrt"])
def mmdeploy_export(request, tmp_path_factory):
    """mmdeploy's own end2end export of a searched RetinaNet (every branch and the alpha arithmetic in the graph), for
    the onnxruntime deploy config, and for a TensorRT one (its NMS a custom node onnxruntime cannot run). One process
    each: mmdeploy 1.3.1's rewriter context breaks on a second export in one process."""
    root = tmp_path_factory.mktemp(f"mmdeploy-{request.param}")
    config, deploy = root / "retinanet.py", root / "deploy.py"
    write_full_config(config, None)
    backend = DEPLOY_ORT["backend_config"] if request.param == "onnxruntime" else TRT_BACKEND
    deploy.write_text("".join(f"{key} = {value!r}\n" for key, value in dict(DEPLOY_ORT, backend_config=backend).items()))
    paths = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    result = subprocess.run([sys.executable, "-c", EXPORT_SEARCHED, str(config), str(deploy), str(root / "end2end")],
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=paths),
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return request.param, root / "end2end.onnx"


def test_optimize_rewrites_mmdeploys_export_of_a_searched_detector_exactly(mmdeploy_export, tmp_path, capsys):
    backend, end2end = mmdeploy_export
    original = onnx.load(str(end2end))
    out = tmp_path / "out"

    code = cli.main(["optimize", str(end2end), "--out", str(out)])

    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    check = report["verification"]
    if backend == "tensorrt":  # its NMS runs in TensorRT alone: each rewritten conv is checked on the activations
        assert check["scope"] == "each rewritten subgraph" and "TRTBatchedNMS" in report["onnx_ops"]["after"]
        assert check["subgraph_inputs"] == "activations of the graph run up to them"
    else:
        assert check["scope"] == "whole graph"
    assert check["passed"] and report["layers"] and not report["left_alone"]
    assert not {"Abs", "ReduceSum"} & set(report["onnx_ops"]["after"])
    rewritten = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in rewritten.graph.output] == [o.name for o in original.graph.output]
    folded = [init.raw_data for init in rewritten.graph.initializer if "rfdeploy" in init.name]
    assert folded and len(folded) == len(set(folded)), "a folded weight is written twice"
    assert report["shared_weight_bytes"] > 0  # the head's convs run once per pyramid level


def test_mmdeploys_plain_build_does_not_hold_the_searched_checkpoint(searched_files, tmp_path):
    """What mmdeploy alone does with these files: the config's model without the hook, the checkpoint loaded as
    mmengine loads it (a warning, no error), and every searched conv's weight left at its random init."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    name, _, ckpt, structure = searched_files
    config = tmp_path / f"{name}_rfsearch.py"
    write_config(config, structure, model=name)
    plain = MODELS.build(Config.fromfile(str(config)).model)
    searched_convs = list(json.loads(structure.read_text())["structure"])
    before = {name: plain.get_submodule(name).weight.detach().clone() for name in searched_convs}
    load_checkpoint(plain, str(ckpt), map_location="cpu", strict=False)
    unchanged = [name for name in searched_convs if torch.equal(plain.get_submodule(name).weight, before[name])]
    assert unchanged == searched_convs  # none of them took the checkpoint's weights
    assert sorted(api.load(config=config, ckpt=ckpt).info.searched) == sorted(searched_convs)  # rfdeploy reads them


def test_analyze_and_bench_take_the_config_too(searched_files, tmp_path, capsys):
    name, _, ckpt, structure = searched_files
    config = tmp_path / f"{name}_rfsearch.py"
    write_config(config, structure, model=name)
    searched_convs = len(json.loads(structure.read_text())["structure"])

    assert cli.main(["analyze", "--config", str(config), "--json"]) == 0  # the hook's structure, no checkpoint
    analysed = json.loads(capsys.readouterr().out)
    assert analysed["input_size"] == list(SHAPE[2:]) and "searched" in analysed["analysed"]

    assert cli.main(["bench", "--config", str(config), "--ckpt", str(ckpt), "--backends", "onnxruntime",
                     "--warmup", "1", "--iters", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["searched_layers"] == searched_convs and report["input_shapes"] == [list(SHAPE)]
