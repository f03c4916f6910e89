"""Searched models handed over in memory: the search ops a training script left in the model, no files.

References are the ops' own forwards: mmcv-lite's ``Conv2dRFSearchOp`` as its ``RFSearchHook`` installs it in
each mode, and the research op, G2L's ``Conv1dOp`` and ``RFConv2d`` as transcribed in test_formats.py.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from mmcv.cnn.rfsearch import Conv2dRFSearchOp, RFSearchHook
from test_formats import (
    G2L_GLOBAL,
    INPUT,
    MMCV_SEARCH,
    RESEARCH_SEARCH,
    G2LConv1dOp,
    ResearchConv2dRFSearchOp,
    TinyBackbone,
    assert_matches_reference,
    one_thread,  # noqa: F401  # the autouse fixture
    rfconv_model,
    save_checkpoint,
    seeded,
    set_child,
    write_json,
)
from torch import nn

from rfdeploy import api, cli, models
from rfdeploy.errors import RFDeployError
from rfdeploy.loader.in_memory import search_op_format
from rfdeploy.loader.searched_conv import SearchedConv


def hooked(mode: str, structure=None, seed: int = 7) -> nn.Module:
    """A TinyBackbone as mmcv-lite's RFSearchHook leaves it in ``mode``, branch weights drawn at random."""
    model = seeded(TinyBackbone, 1)
    hook = RFSearchHook(mode=mode, config={"search": copy.deepcopy(MMCV_SEARCH)},
                        rfstructure_file=None if structure is None else str(structure), verbose=False)
    hook.init_model(model)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, Conv2dRFSearchOp):
            module.branch_weights.data = torch.randn(3, generator=generator)  # negatives included
    return model.eval()


def search_op_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, Conv2dRFSearchOp)]


def export(tmp_path, model, shape=INPUT):
    return api.export(model, input_shapes=[shape], out=tmp_path / "out")


def test_a_model_after_mmcv_search_init_exports_equal_to_mmcv(tmp_path):
    model = hooked("search")
    ops = search_op_names(model)
    assert len(ops) == 3  # layer2's convs but the 1x1; stem and layer1 are skipped

    result = export(tmp_path, model)

    assert [layer["name"] for layer in result.report["layers"]] == ops
    for layer in result.report["layers"]:  # mmcv's own rates, read off the live ops
        assert [tuple(r) for r in layer["rates"]] == list(model.get_submodule(layer["name"]).dilation_rates)
    assert result.report["load"]["checkpoint_format"] == "in-memory mmcv"
    assert_matches_reference(result, model)


def test_a_fixed_multi_branch_model_exports_with_the_structure_dilations_it_holds(tmp_path):
    structure = write_json(tmp_path / "rf.json", {"search": MMCV_SEARCH, "structure": {
        "module.layer2.0": [2, 2], "module.layer2.3": [3, 3], "module.layer2.4": [1, 4]}})
    model = hooked("fixed_multi_branch", structure)
    assert model.get_submodule("layer2.3").dilation_rates == [(2, 2), (3, 3), (4, 4)]  # round(1.5), round(4.5)

    result = export(tmp_path, model)

    assert {layer["name"] for layer in result.report["layers"]} == set(search_op_names(model))
    assert_matches_reference(result, model)


def test_a_fixed_single_branch_model_is_a_plain_model_with_its_dilations(tmp_path):
    structure = write_json(tmp_path / "rf.json", {"search": MMCV_SEARCH, "structure": {
        "module.layer2.0": [2, 2], "module.layer2.3": [3, 3], "module.layer2.4": [1, 4]}})
    model = hooked("fixed_single_branch", structure)
    assert model.get_submodule("layer2.3").dilation == (3, 3) and not search_op_names(model)

    result = export(tmp_path, model)

    assert result.report["layers"] == []
    assert_matches_reference(result, model)


def test_research_g2l_and_rfconv_ops_in_memory_export_equal_to_their_forward(tmp_path):
    research = seeded(TinyBackbone, 1)
    for name, d in {"layer2.0": 1, "layer2.3": 5}.items():
        conv = research.get_submodule(name)
        conv.dilation, conv.padding = (d, d), (d * (conv.kernel_size[0] - 1) // 2,) * 2
        op = ResearchConv2dRFSearchOp(conv, d, dict(RESEARCH_SEARCH, S=3), 3)
        op.weights.data = torch.tensor([0.7, -0.2, 0.4])
        set_child(research, name, op)
    rfconv = rfconv_model(seeded(TinyBackbone, 1), {
        "layer2.0": ([(1, 1), (2, 3), (3, 5)], 3, [0.5, -0.3, 0.2]),
        "layer1.0": ([(2, 2), (3, 3), (4, 4)], 1, [1.0, 3.0, 3.0]),  # one live rate: its own conv forward
    })
    g2l = models.build("mstcn", seed=1)
    for index, name in enumerate(n for n, _ in list(g2l.named_modules()) if n.endswith("conv_dilated")):
        conv = g2l.get_submodule(name)
        d = (4, 5, 1, 7)[index % 4]
        conv.dilation, conv.padding = (d,), (d,)
        op = G2LConv1dOp(conv, d, G2L_GLOBAL)
        op.weights.data = torch.randn(3, generator=torch.Generator().manual_seed(index))
        set_child(g2l, name, op)

    for label, model, shape, count in [("research", research, INPUT, 2), ("rfconv", rfconv, INPUT, 2),
                                       ("g2l", g2l, (1, 2048, 64), 40)]:
        result = export(tmp_path / label, model.eval(), shape)
        assert len(result.report["layers"]) == count, label
        assert result.report["load"]["checkpoint_format"] == f"in-memory {label}"
        assert_matches_reference(result, model, shape)


def test_compile_of_an_in_memory_search_leaves_no_search_op():
    model = hooked("search")
    compiled = api.compile(model)
    assert not [name for name, m in compiled.named_modules()
                if search_op_format(m) is not None or isinstance(m, SearchedConv)]
    x = torch.randn(*INPUT)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-4)
    assert search_op_names(model), "the caller's model is left as it was"


def test_a_state_dict_in_place_of_a_checkpoint_path_loads_the_same(tmp_path):
    reference = hooked("search")
    structure = write_json(tmp_path / "rf.json", {"search": MMCV_SEARCH, "structure": {
        name: list(reference.get_submodule(name).op_layer.dilation) for name in search_op_names(reference)}})
    state = reference.state_dict()
    from_file = api.load(seeded(TinyBackbone, 0), save_checkpoint(tmp_path / "s.pth", state), structure)
    from_dict = api.load(seeded(TinyBackbone, 0), state, structure)

    x = torch.randn(*INPUT)
    with torch.no_grad():
        torch.testing.assert_close(from_dict.searched(x), from_file.searched(x), atol=0, rtol=0)
        torch.testing.assert_close(from_dict.searched(x), reference(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(RFDeployError, match="path or a state dict"):
        api.load(seeded(TinyBackbone, 0), 42, structure)


def test_a_model_holding_search_ops_refuses_checkpoint_and_structure_files(tmp_path):
    model = hooked("search")
    ckpt = save_checkpoint(tmp_path / "s.pth", model.state_dict())
    with pytest.raises(RFDeployError, match="already holds search ops .*'layer2.0'"):
        api.load(model, ckpt)


def test_cli_model_callable_returning_a_searched_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "searched_net.py").write_text(
        "from test_in_memory import hooked\n\ndef build():\n    return hooked('search')\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["export", "--model", "searched_net:build", "--input-shape", "1,3,24,24",
                     "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 3 and report["verification"]["passed"]


def test_a_structure_dict_in_place_of_a_file_loads_the_same_and_is_named_in_errors(tmp_path):
    reference = hooked("search")
    data = {"search": MMCV_SEARCH, "structure": {
        name: list(reference.get_submodule(name).op_layer.dilation) for name in search_op_names(reference)}}
    state = reference.state_dict()
    result = api.export(seeded(TinyBackbone, 0), state, data, input_shapes=[INPUT], out=tmp_path / "out")

    assert result.passed and len(result.report["layers"]) == 3
    assert (result.report["checkpoint"], result.report["structure"]) == ("<state dict>", "<structure dict>")
    assert_matches_reference(result, reference)
    with pytest.raises(RFDeployError, match="^<structure dict>: not a structure file"):
        api.load(seeded(TinyBackbone, 0), state, {"layers": {}})
