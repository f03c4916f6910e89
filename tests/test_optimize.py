"""``rfdeploy optimize``: ONNX in, ONNX out. The input graphs are what a generic exporter writes for real
searched models: ``torch.onnx.export`` (the TorchScript exporter rfdeploy uses) of mmcv-lite's own
``Conv2dRFSearchOp`` models and of ``rfdeploy.load(...).searched`` for the research, RFConv2d and G2L
formats, with and without constant folding. References are those models' own forwards (mmcv's, or the
transcribed original ops of ``test_formats``), or the input graph in onnxruntime; never rfdeploy's output.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from mmcv.cnn.rfsearch import Conv2dRFSearchOp
from test_formats import (
    G2L_GLOBAL,
    MMCV_SEARCH,
    RESEARCH_SEARCH,
    G2LConv1dOp,
    ResearchConv2dRFSearchOp,
    TinyBackbone,
    mmcv_hook_reference,
    one_thread,  # noqa: F401  # the autouse fixture: one thread for tiny convs
    rfconv_model,
    save_checkpoint,
    seeded,
    set_child,
    write_json,
)
from test_mmcv_search import searched_run
from torch import nn

from rfdeploy import api, cli
from rfdeploy.compiler.rewrite_onnx import compile_graph
from rfdeploy.loader.searched_conv import SearchedConv

SHAPE = (2, 3, 24, 24)
MMCV_STRUCTURE = {"search": MMCV_SEARCH, "structure": {
    "module.layer2.0": 3, "module.layer2.3": [5, 5], "module.layer2.4": [1, 2]}}
ALPHA_ARITHMETIC = {"Abs", "ReduceSum", "Div", "Gather", "Mul"}


def to_onnx(model: nn.Module, shape, fold: bool, dynamic: bool = False) -> onnx.ModelProto:
    """The model as a generic exporter writes it (``torch.onnx.export`` as rfdeploy calls it, folding optional)."""
    axes = {0: "batch", 2: "height"} | ({3: "width"} if len(shape) == 4 else {})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(*shape),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], do_constant_folding=fold,
                          dynamic_axes={"input": axes, "output": axes} if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def run_onnx(model: onnx.ModelProto | Path, x: torch.Tensor) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def assert_equals_forward(onnx_model, reference: nn.Module, shape=SHAPE, seed=5):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = reference.eval()(x).double().numpy()
    actual = run_onnx(onnx_model, x)
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def optimize(tmp_path: Path, model: onnx.ModelProto, **options) -> api.OptimizeResult:
    return api.optimize(save(model, tmp_path / "in.onnx"), out=tmp_path / "out", **options)


def normalized(alphas: torch.Tensor) -> list[float]:
    return (alphas.abs() / alphas.abs().sum()).tolist()


# ---------------------------------------------------------------- mmcv-lite's own searched model, exported as is

@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("mode", ["auto", "multi", "single"])
def test_mmcv_searched_model_exported_by_torch_onnx(tmp_path, fold, mode):
    structure = write_json(tmp_path / "structure.json", MMCV_STRUCTURE)
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    ops_by_name = {name: m for name, m in reference.named_modules() if isinstance(m, Conv2dRFSearchOp)}
    graph = to_onnx(reference, SHAPE, fold)
    assert {"Abs", "ReduceSum", "Div"} <= set(ops(graph))  # what a generic exporter leaves in

    result = optimize(tmp_path, graph, mode=mode)

    assert result.passed, result.report["verification"]
    assert result.report["verification"]["scope"] == "whole graph"
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert set(layers) == {"layer2/layer2.0", "layer2/layer2.3", "layer2/layer2.4"}
    for name, op in ops_by_name.items():  # mmcv's own rates and alphas, read off its live ops
        layer = layers["layer2/" + name]
        assert [tuple(r) for r in layer["rates"]] == [tuple(r) for r in op.dilation_rates]
        np.testing.assert_allclose(layer["alphas"], normalized(op.branch_weights.detach()[: len(op.dilation_rates)]), atol=1e-6)
        assert all(node.startswith(f"/layer2/{name}/") for node in layer["nodes"][:3])
    # the BatchNorm after layer2.0 folds into it (layer2.0 is followed by BN; the others by convs)
    assert layers["layer2/layer2.0"]["batchnorm"] == "/layer2/layer2.1/BatchNormalization"
    assert layers["layer2/layer2.3"]["batchnorm"] is None
    written = onnx.load(tmp_path / "out" / "model.onnx")
    assert not ALPHA_ARITHMETIC & set(ops(written))
    assert ops(written).count("BatchNormalization") == ops(graph).count("BatchNormalization") - 1
    if mode == "single":
        assert ops(written).count("Conv") == 6  # stem, layer1.0 and layer2.5 untouched; one per searched conv
    assert_equals_forward(written, reference)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["layers"] == result.report["layers"] and saved["verification"]["passed"] is True


def test_trained_mmcv_search_with_a_residual_around_a_searched_conv(tmp_path):
    # RFSearchHook's own search: trained, rates estimated and expanded, trained again; the searched
    # depthwise conv sits inside ``x + depthwise(x)``: only its own sum is the searched conv
    model, _, _ = searched_run(tmp_path, num_branches=3, distributed=False)
    searched = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dRFSearchOp)}
    shape = (2, 3, 20, 28)
    graph = to_onnx(model, shape, fold=True)

    result = optimize(tmp_path, graph)

    assert result.passed, result.report["verification"]
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert set(layers) == {name.replace(".", "/") for name in searched}
    for name, op in searched.items():
        layer = layers[name.replace(".", "/")]
        assert [tuple(r) for r in layer["rates"]] == [tuple(r) for r in op.dilation_rates]
        np.testing.assert_allclose(layer["alphas"], normalized(op.branch_weights.detach()[: len(op.dilation_rates)]), atol=1e-6)
    assert ops(result.onnx_model).count("Add") >= 1  # the residual stays
    assert not {"Abs", "ReduceSum", "Div", "Gather", "Mul"} & set(ops(result.onnx_model))
    assert_equals_forward(result.onnx_model, model, shape)


def test_untouched_nodes_stay_exactly_as_they_were(tmp_path):
    structure = write_json(tmp_path / "structure.json", MMCV_STRUCTURE)
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    graph = to_onnx(reference, SHAPE, fold=True)
    result = optimize(tmp_path, graph)
    replaced = {node for layer in result.report["layers"] for node in layer["nodes"]}
    kept = [node for node in graph.graph.node if node.name not in replaced]
    written = [node for node in result.onnx_model.graph.node if "/rfdeploy/" not in node.name]
    assert len(kept) >= 5
    assert [n.SerializeToString() for n in kept] == [n.SerializeToString() for n in written]
    assert result.onnx_model.opset_import == graph.opset_import


# ---------------------------------------------------------------- research, RFConv2d and G2L via rfdeploy.load

def research_files(tmp_path: Path):
    centres = {"layer2.0": 1, "layer2.3": 5, "layer1.0": 3}
    config = dict(RESEARCH_SEARCH, S=3)
    reference = seeded(TinyBackbone, 1)
    generator = torch.Generator().manual_seed(3)
    for name, d in centres.items():
        conv = reference.get_submodule(name)
        k0 = conv.kernel_size[0]
        conv.dilation, conv.padding = (d, d), (d * (k0 - 1) // 2,) * 2
        op = ResearchConv2dRFSearchOp(conv, d, config, 3)
        op.weights.data = torch.tensor([0.7, -0.2, 0.4]) + 0.1 * torch.randn(3, generator=generator)
        set_child(reference, name, op)
    structure = write_json(tmp_path / "structure.json", {
        "search": config, "structure": {f"module.{name}": d for name, d in centres.items()}})
    return reference, save_checkpoint(tmp_path / "research.pth", reference.state_dict()), structure


def rfconv_files(tmp_path: Path):
    reference = rfconv_model(seeded(TinyBackbone, 1), {
        "layer2.0": ([(1, 1), (2, 3), (3, 5)], 3, [0.5, -0.3, 0.2]),
        "layer2.3": ([(2, 2), (4, 4), (9, 9)], 2, [0.2, -0.6, 5.0]),
        "layer1.0": ([(2, 2), (3, 3), (4, 4)], 1, [1.0, 3.0, 3.0]),  # one live rate: a plain conv
    })
    return reference, save_checkpoint(tmp_path / "rfconv.pth", reference.state_dict(), mmengine=False), None


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
@pytest.mark.parametrize("files, searched", [
    (research_files, {"layer1.0", "layer2.0", "layer2.3"}),
    (rfconv_files, {"layer2.0", "layer2.3"}),
], ids=["research", "rfconv2d"])
def test_rfdeploy_searched_model_exported_by_torch_onnx(tmp_path, fold, files, searched):
    reference, ckpt, structure = files(tmp_path)
    loaded = api.load(TinyBackbone(), ckpt, structure)
    graph = to_onnx(loaded.searched, SHAPE, fold)
    result = optimize(tmp_path, graph)
    assert result.passed, result.report["verification"]
    names = {layer["name"].rpartition("/")[2]: layer for layer in result.report["layers"]}  # layer2/layer2.0
    assert set(names) == searched
    for name, layer in names.items():
        module = loaded.searched.get_submodule(name)
        assert isinstance(module, SearchedConv)
        assert [tuple(r) for r in layer["rates"]] == module.rates
    assert not {"Abs", "ReduceSum", "Div"} & set(ops(result.onnx_model))
    assert_equals_forward(result.onnx_model, reference)


class DilatedResidual(nn.Module):
    """MS-TCN's dilated residual layer: a searched Conv1d, ReLU, 1x1 conv, residual."""

    def __init__(self):
        super().__init__()
        self.conv_dilated = nn.Conv1d(8, 8, 3, padding=1)
        self.conv_1x1 = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        return x + self.conv_1x1(F.relu(self.conv_dilated(x)))


class TinyTCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*(DilatedResidual() for _ in range(3)))

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "unfolded"])
def test_g2l_conv1d_with_relu_inside_each_branch(tmp_path, fold):
    # centre 4 gives [4, 4, 4] (one rate: the three branches merge exactly through the ReLU, alphas >= 0);
    # 5 gives [4, 5, 6] and 10 gives [9, 10, 11]: these stay one conv + ReLU per branch (single is not exact)
    centres = {"layers.0.conv_dilated": 4, "layers.1.conv_dilated": 5, "layers.2.conv_dilated": 10}
    reference = seeded(TinyTCN, 1)
    generator = torch.Generator().manual_seed(4)
    for name, d in centres.items():
        conv = reference.get_submodule(name)
        conv.dilation, conv.padding = (d,), (d,)
        op = G2LConv1dOp(conv, d, G2L_GLOBAL)
        op.weights.data = torch.randn(3, generator=generator)
        set_child(reference, name, op)
    structure = write_json(tmp_path / "structure.json", {"global": G2L_GLOBAL, "model": centres})
    ckpt = tmp_path / "epoch-50.model"
    torch.save(reference.state_dict(), ckpt)
    loaded = api.load(TinyTCN(), ckpt, structure)
    shape = (1, 8, 50)

    result = optimize(tmp_path, to_onnx(loaded.searched, shape, fold), mode="single")

    assert result.passed, result.report["verification"]
    layers = {layer["name"]: layer for layer in result.report["layers"]}  # the exporter's scopes
    assert {name: layer["rates"] for name, layer in layers.items()} == {
        "layers/layers.0/conv_dilated": [[4], [4], [4]], "layers/layers.1/conv_dilated": [[4], [5], [6]],
        "layers/layers.2/conv_dilated": [[9], [10], [11]]}
    assert layers["layers/layers.0/conv_dilated"]["lowering"] == "plain"
    assert layers["layers/layers.1/conv_dilated"]["lowering"] == "multi"
    assert any("single not applied" in note for note in layers["layers/layers.1/conv_dilated"]["notes"])
    written = result.onnx_model
    # one per layer after the searched conv, and one inside each branch left after merging
    assert ops(written).count("Relu") == 3 + (1 + 3 + 3)
    assert not {"Abs", "ReduceSum", "Div"} & set(ops(written))
    assert_equals_forward(written, reference, shape)


def test_tune_chooses_each_layers_lowering_by_timing_it(tmp_path):
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), write_json(tmp_path / "s.json", MMCV_STRUCTURE),
                                    "fixed_multi_branch")
    result = optimize(tmp_path, to_onnx(reference, SHAPE, fold=True), tune="onnxruntime")
    assert result.passed, result.report["verification"]
    tuning = result.report["tuning"]
    assert tuning["backend"] == "onnxruntime"
    chosen = {layer["name"]: layer["chosen"] for layer in tuning["layers"]}
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert set(chosen) == set(layers)
    for layer in tuning["layers"]:  # timed at the shape the searched conv sees in the graph
        assert layer["input_shape"][:2] == [2, 8] and set(layer["median_ms"]) == {"single", "multi", "searched"}
        assert layers[layer["name"]]["lowering"] == layer["chosen"]


# ---------------------------------------------------------------- look-alikes are left alone

class LookAlike(nn.Module):
    """Two convs on one input at different dilations, each scaled, summed; ``kind`` breaks one condition."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.w1 = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.w2 = nn.Parameter(self.w1.detach().clone() if kind != "different-weights" else torch.randn(4, 3, 3, 3))
        scale = torch.rand(1, 4, 1, 1) if kind == "per-channel-scale" else torch.tensor(0.3)
        self.register_buffer("scale", scale)

    def forward(self, x):
        a = F.conv2d(x, self.w1, padding=1, dilation=1)
        b = F.conv2d(x, self.w2, padding=2, dilation=2)
        return a * self.scale + b * 0.7


@pytest.mark.parametrize("kind", ["different-weights", "per-channel-scale"])
def test_look_alikes_are_left_alone_with_a_note(tmp_path, kind):
    graph = to_onnx(LookAlike(kind), (1, 3, 10, 10), fold=True)
    assert ops(graph).count("Conv") == 2 and ops(graph).count("Mul") == 2
    result = optimize(tmp_path, graph)
    assert result.report["layers"] == []
    assert "no searched conv" in result.report["note"]
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "in.onnx").read_bytes()


def test_the_same_pattern_with_one_weight_and_scalar_scales_is_rewritten(tmp_path):
    # the control for the look-alikes: only the broken condition kept them from matching
    graph = to_onnx(LookAlike("searched"), (1, 3, 10, 10), fold=True)
    result = optimize(tmp_path, graph)
    assert [layer["rates"] for layer in result.report["layers"]] == [[[1, 1], [2, 2]]]
    assert result.report["layers"][0]["alphas"] == pytest.approx([0.3, 0.7])
    assert result.passed


# ---------------------------------------------------------------- a detector graph onnxruntime cannot run

def with_custom_nms(graph: onnx.ModelProto) -> onnx.ModelProto:
    """mmdeploy's end2end.onnx in what matters here: a custom-domain node after the backbone."""
    model = copy.deepcopy(graph)
    features = model.graph.output[0].name
    nms = onnx.helper.make_node("TRTBatchedNMS", [features, features], ["dets", "labels"], name="/TRTBatchedNMS",
                                domain="mmdeploy", background_label_id=-1, iou_threshold=0.5, keep_topk=100)
    model.graph.node.append(nms)
    model.graph.value_info.append(model.graph.output[0])
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_tensor_value_info("dets", onnx.TensorProto.FLOAT, None),
                               onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.INT32, None)])
    model.opset_import.append(onnx.helper.make_opsetid("mmdeploy", 1))
    return model


def test_custom_domain_graph_is_verified_per_subgraph_and_keeps_its_custom_node(tmp_path):
    structure = write_json(tmp_path / "structure.json", MMCV_STRUCTURE)
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    graph = with_custom_nms(to_onnx(reference, SHAPE, fold=True))
    with pytest.raises(Exception, match="TRTBatchedNMS|mmdeploy"):
        ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    result = optimize(tmp_path, graph)

    check = result.report["verification"]
    assert check["scope"] == "each rewritten subgraph" and check["passed"], check
    assert [s["layer"] for s in check["subgraphs"]] == [layer["name"] for layer in result.report["layers"]]
    assert len(check["subgraphs"]) == 3 and all(s["input_shapes"] for s in check["subgraphs"])
    written = onnx.load(tmp_path / "out" / "model.onnx")
    (nms,) = [node for node in written.graph.node if node.domain == "mmdeploy"]
    assert nms.SerializeToString() == graph.graph.node[-1].SerializeToString()
    assert [o.name for o in written.graph.output] == ["dets", "labels"]
    # the backbone part of the written graph, cut out independently, against mmcv's forward
    backbone = onnx.utils.Extractor(written).extract_model(["input"], [nms.input[0]])
    assert_equals_forward(backbone, reference)


# ---------------------------------------------------------------- dynamic dims, the CLI, bad input

def rfdeploy(*args: str, cwd: Path, capsys) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess would import torch again): exit code, stdout, stderr."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def dynamic_graph(tmp_path) -> Path:
    structure = write_json(tmp_path / "structure.json", MMCV_STRUCTURE)
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    return save(to_onnx(reference, SHAPE, fold=True, dynamic=True), tmp_path / "dynamic.onnx")


def test_dynamic_dims_need_an_input_shape_and_stay_dynamic(tmp_path, dynamic_graph, capsys):
    code, _, err = rfdeploy("optimize", str(dynamic_graph), "--out", "out", cwd=tmp_path, capsys=capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"rfdeploy: error: {dynamic_graph}: input 'input' has dynamic dims (batch, height, width); "
        + "give --input-shape to verify at a concrete shape"]
    assert not (tmp_path / "out").exists()

    code, _, err = rfdeploy("optimize", str(dynamic_graph), "--input-shape", "1,4,20,20", cwd=tmp_path,
                            capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "dim 1 fixed at 3" in err

    code, out, err = rfdeploy("optimize", str(dynamic_graph), "--input-shape", "3,3,32,40", "--out", "out",
                              "--json", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["verification"]["input_shapes"] == [[3, 3, 32, 40]] and report["verification"]["passed"]
    written = onnx.load(tmp_path / "out" / "model.onnx")
    dims = [d.dim_param for d in written.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_unreadable_onnx_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07not a protobuf at all\xff\xff")
    for path in ("broken.onnx", "missing.onnx"):
        code, _, err = rfdeploy("optimize", path, "--out", "out", cwd=tmp_path, capsys=capsys)
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith(f"rfdeploy: error: cannot read ONNX model '{path}': ")
    assert not (tmp_path / "out").exists()


def test_graph_without_searched_conv_is_a_note_not_an_error(tmp_path, capsys):
    save(to_onnx(seeded(TinyBackbone, 0), (1, 3, 16, 16), fold=True), tmp_path / "plain.onnx")
    code, _, err = rfdeploy("optimize", "plain.onnx", "--out", "out", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert "note: no searched conv rewritten in plain.onnx" in " ".join(err.split())
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_failed_verification_exits_1_and_keeps_earlier_outputs(tmp_path, dynamic_graph, capsys):
    code, _, err = rfdeploy("optimize", str(dynamic_graph), "--input-shape", "1,3,24,24", "--out", "out",
                            cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    before = (tmp_path / "out" / "model.onnx").read_bytes()
    # no tolerance at all: the lowered conv sums in another order than the branches did
    code, _, err = rfdeploy("optimize", str(dynamic_graph), "--input-shape", "2,3,40,40", "--mode", "single",
                            "--atol", "0", "--rtol", "0", "--out", "out", cwd=tmp_path, capsys=capsys)
    assert code == 1, err
    report = json.loads((tmp_path / "out" / "failed-report.json").read_text())
    assert report["verification"]["passed"] is False and report["verification"]["max_abs_err"] > 0
    assert (tmp_path / "out" / "model.onnx").read_bytes() == before


# ---------------------------------------------------------------- any single searched conv (property)

@settings(max_examples=25, deadline=None)
@given(dims=st.sampled_from([1, 2]), kernel=st.sampled_from([1, 2, 3, 5]), stride=st.sampled_from([1, 2]),
       groups=st.sampled_from([1, 2]), bias=st.booleans(), relu=st.booleans(),
       rates=st.lists(st.integers(1, 4), min_size=2, max_size=4),
       alphas=st.lists(st.floats(-2, 2).filter(lambda a: abs(a) > 1e-3), min_size=4, max_size=4),
       fold=st.booleans(), mode=st.sampled_from(["auto", "multi", "single"]),
       weights=st.sampled_from(["folded", "shared"]))
def test_any_searched_conv_graph_rewrites_to_an_equal_graph(dims, kernel, stride, groups, bias, relu, rates,
                                                            alphas, fold, mode, weights):
    generator = torch.Generator().manual_seed(len(rates) * 7 + kernel)
    weight = torch.randn(4, 4 // groups, *(kernel,) * dims, generator=generator)
    # centred paddings (odd kernels) as every searched op uses; even kernels keep rate 1 like mmcv
    geometry = [((r,) * dims, (r * (kernel - 1) // 2,) * dims) for r in (rates if kernel % 2 else [1] * len(rates))]
    conv = SearchedConv(weight, torch.randn(4, generator=generator) if bias else None,
                        torch.tensor(alphas[: len(rates)]), [g[0] for g in geometry], [g[1] for g in geometry],
                        (stride,) * dims, groups, branch_relu=relu, always_mix=True)
    shape = (2, 4, *(13,) * dims)
    graph = to_onnx(nn.Sequential(conv, nn.Identity()), shape, fold)
    result = compile_graph(graph, mode, weights=weights)
    assert len(result.layers) == 1 and not result.left_alone
    assert not {"Abs", "ReduceSum", "Div"} & set(ops(result.model))
    x = torch.randn(*shape, generator=generator)
    expected, actual = run_onnx(graph, x), run_onnx(result.model, x)
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_shared_weights_keep_one_weight_per_searched_conv_and_equal_outputs(tmp_path):
    structure = write_json(tmp_path / "structure.json", MMCV_STRUCTURE)
    reference = mmcv_hook_reference(seeded(TinyBackbone, 1), structure, "fixed_multi_branch")
    graph = to_onnx(reference, SHAPE, fold=True)

    (tmp_path / "folded").mkdir()
    (tmp_path / "shared").mkdir()
    folded = optimize(tmp_path / "folded", graph, mode="multi")
    shared = optimize(tmp_path / "shared", graph, weights="shared")

    assert shared.passed and shared.report["weights"] == "shared"
    assert {layer["lowering"] for layer in shared.report["layers"]} == {"shared"}
    written = shared.onnx_model
    weights = {node.input[1] for node in written.graph.node if node.op_type == "Conv" and "rfdeploy" in node.name}
    assert len(weights) == len(shared.report["layers"])  # every branch of a layer reads its one weight
    assert ops(written).count("Mul") >= sum(len(layer["rates"]) for layer in shared.report["layers"]) - 1
    assert written.ByteSize() < folded.onnx_model.ByteSize()
    assert_equals_forward(written, reference)
