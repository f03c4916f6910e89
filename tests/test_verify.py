"""Verification: comparisons as values, and a reference computed once per input."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rfdeploy.backends.torch_backend import TorchRunner
from rfdeploy.measure.verify import Comparison, Reference, compare, seeded_inputs, verify, verify_on


def test_comparison_holds_each_output_to_its_own_scale():
    expected = [np.array([100.0, -50.0]), np.array([0.1, 0.0])]
    actual = [np.array([100.5, -50.0]), np.array([0.1, 0.002])]
    result = compare(actual, expected)
    assert [(o.max_abs, o.scale) for o in result.outputs] == [(0.5, 100.0), (0.002, 0.1)]
    assert result.max_abs == 0.5 and result.max_rel == 0.02
    assert result.within(0.0, 0.02)  # 0.5 <= 0.02 * 100 and 0.002 <= 0.02 * 0.1
    assert not result.within(0.0, 0.01)  # the small output fails: 0.002 > 0.01 * 0.1
    assert not result.within(0.4, 0.0)


def test_outputs_that_do_not_line_up_never_pass():
    for actual in ([np.zeros(2)], [np.zeros(3), np.zeros(1)], [np.zeros((2, 1)), np.zeros(1)]):
        result = compare(actual, [np.zeros(2), np.zeros(1)])
        assert result.max_abs == float("inf") and not result.within(1e9, 1e9)
    assert not compare([np.array([np.nan])], [np.array([1.0])]).within(1e9, 1e9)


def test_comparisons_add_up_to_the_worst_of_both():
    worst = compare([np.array([1.0])], [np.array([1.5])]) + compare([np.array([3.0])], [np.array([2.0])])
    assert isinstance(worst, Comparison) and worst.max_abs == 1.0 and worst.max_rel == 0.5


def test_snr_and_cosine_follow_their_definitions():
    expected = [np.array([3.0, 4.0]), np.array([1.0, 0.0, 0.0])]
    actual = [np.array([3.0, 4.3]), np.array([0.0, 1.0, 0.0])]
    result = compare(actual, expected)
    # 25 / 0.09 for the first output; the second is all noise (signal 1, noise 2) and orthogonal
    assert math.isclose(result.outputs[0].snr_db, 10 * math.log10(25 / 0.09))
    assert math.isclose(result.snr_db, 10 * math.log10(1 / 2))
    assert math.isclose(result.outputs[0].cosine, (9 + 4 * 4.3) / (5 * math.hypot(3, 4.3)))
    assert result.cosine == 0.0
    assert result.meets(-3.1) and not result.meets(-3.0)


def test_identical_outputs_have_infinite_snr_and_mismatches_none():
    assert compare([np.ones(3)], [np.ones(3)]).snr_db == math.inf
    mismatch = compare([np.ones(2)], [np.ones(3)])
    assert mismatch.snr_db == -math.inf and not mismatch.meets(-1e9)
    assert not compare([np.array([np.nan, 1.0])], [np.ones(2)]).meets(-1e9)


def test_low_precision_runs_are_judged_by_snr_not_tolerance():
    model = nn.Conv2d(2, 3, 3).eval()
    sets = seeded_inputs([(1, 2, 8, 8)], 0)
    with TorchRunner(model, precision="bf16") as runner:
        strict = verify_on(runner, model, sets)
        by_snr = verify_on(runner, model, sets, precision="bf16", min_snr_db=20.0)
        too_strict = verify_on(runner, model, sets, precision="bf16", min_snr_db=80.0)
    assert not strict.passed and by_snr.passed and not too_strict.passed
    assert 20.0 < by_snr.snr_db < 80.0 and by_snr.precision == "bf16" and by_snr.cosine > 0.99


class CountingConv(nn.Conv2d):
    calls = 0

    def forward(self, x):
        CountingConv.calls += 1
        return super().forward(x)


def test_the_reference_runs_once_per_input_for_every_runner_checked_against_it():
    torch.manual_seed(0)
    model = CountingConv(2, 3, 3).eval()
    reference = Reference(model)
    CountingConv.calls = 0
    for _ in range(3):
        with TorchRunner(nn.Conv2d(2, 3, 3).eval()) as other:  # different weights: checked, and failing
            assert not verify(other, reference, [(1, 2, 8, 8)], trials=2).passed
    assert CountingConv.calls == 2
    with TorchRunner(model) as same:
        check = verify(same, reference, [(1, 2, 8, 8)], trials=2)
    assert check.passed and check.max_abs_err < 1e-6 and check.backend == "torch"
    assert CountingConv.calls == 2 + 2  # only the runner's own copy ran


def test_export_runs_the_searched_forward_once_per_verification_input(tmp_path, monkeypatch):
    from rfdeploy import api
    from rfdeploy.loader.searched_conv import SearchedConv
    from rfdeploy.measure import verify as verify_module

    searched_inputs = []
    real = verify_module.returned_value
    monkeypatch.setattr(verify_module, "returned_value",
                        lambda model, inputs: searched_inputs.append(inputs) or real(model, inputs))
    torch.manual_seed(0)
    searched = nn.Sequential(SearchedConv(torch.randn(4, 3, 3, 3), torch.randn(4), torch.tensor([0.3, 0.7]),
                                          [(1, 1), (2, 2)], [(1, 1), (2, 2)], (1, 1), 1)).eval()
    result = api.export(searched, input_shapes=[(1, 3, 8, 8)], out=tmp_path, write=False)
    checks = result.report["verification"]
    assert result.passed and checks["backend"] == "onnxruntime-cpu" and checks["torch"]["backend"] == "torch-compiled"
    assert len(searched_inputs) == checks["trials"] == 2  # shared by the onnxruntime and the torch check


def searched_forwards_during(export) -> int:
    """How many times ``export()`` ran a searched forward: every ``SearchedConv`` runs once in each, counted by
    torch's global forward hook."""
    from rfdeploy.loader.searched_conv import SearchedConv

    calls: dict[int, int] = {}

    def count(module, inputs, output):
        if isinstance(module, SearchedConv):
            calls[id(module)] = calls.get(id(module), 0) + 1

    handle = nn.modules.module.register_module_forward_hook(count)
    try:
        export()
    finally:
        handle.remove()
    assert len(set(calls.values())) == 1, calls
    return next(iter(calls.values()))


def two_branch_model() -> nn.Module:
    from rfdeploy.loader.searched_conv import SearchedConv

    torch.manual_seed(0)
    return nn.Sequential(SearchedConv(torch.randn(4, 3, 3, 3), torch.randn(4), torch.tensor([0.3, 0.7]),
                                      [(1, 1), (2, 2)], [(1, 1), (2, 2)], (1, 1), 1)).eval()


def test_an_export_runs_the_searched_forward_once_per_input_set_its_shape_check_included(tmp_path):
    from rfdeploy import api

    def static():
        assert api.export(two_branch_model(), input_shapes=[(1, 3, 8, 8)], out=tmp_path, write=False).passed

    def dynamic():  # two sets at each of two shapes
        assert api.export(two_branch_model(), input_shapes=[(1, 3, 8, 8)], out=tmp_path, write=False,
                          dynamic_shape=True).passed

    assert searched_forwards_during(static) == 2
    assert searched_forwards_during(dynamic) == 4


def test_the_compiled_torch_model_is_checked_on_the_first_input_set_and_the_onnx_model_on_all(tmp_path):
    from rfdeploy import api

    checks = api.export(two_branch_model(), input_shapes=[(1, 3, 8, 8)], out=tmp_path, write=False,
                        seed=5).report["verification"]
    assert checks["sources"] == ["seed 5", "seed 6"] and checks["trials"] == 2
    assert checks["torch"]["sources"] == ["seed 5"] and checks["torch"]["trials"] == 1 and checks["torch"]["passed"]


def test_a_forward_already_run_is_checked_from_its_kept_outputs_without_running_again():
    torch.manual_seed(0)
    model = CountingConv(2, 3, 3).eval()
    sets = seeded_inputs([(1, 2, 8, 8)], 0, trials=1)
    CountingConv.calls = 0
    compiled = Reference(model, name="torch-compiled")
    with compiled.watching(sets[0]):  # an exporter's forward
        model(*sets[0].tensors)
    assert CountingConv.calls == 1 and isinstance(compiled.structure, torch.Tensor)
    check = verify_on(compiled, Reference(nn.Sequential(model)), sets)
    assert check.passed and check.backend == "torch-compiled" and check.sources == ["seed 0"]
    assert CountingConv.calls == 2  # the reference's own forward only
    wrong = Reference(nn.Conv2d(2, 3, 3).eval(), name="torch-compiled")
    with wrong.watching(sets[0]):
        wrong.source(*sets[0].tensors)
    assert not verify_on(wrong, Reference(model), sets).passed


def test_an_input_past_a_million_values_is_verified_on_one_seeded_set_and_the_report_says_so(tmp_path):
    from rfdeploy import api

    large = api.export(two_branch_model(), input_shapes=[(1, 3, 600, 600)], out=tmp_path, write=False)
    checks = large.report["verification"]
    assert large.passed and checks["trials"] == 1 and checks["sources"] == ["seed 0"]
    assert "1080000 values" in checks["note"] and checks["torch"]["sources"] == ["seed 0"]
    small = api.export(two_branch_model(), input_shapes=[(1, 3, 500, 500)], out=tmp_path, write=False)
    assert small.report["verification"]["trials"] == 2 and small.report["verification"]["note"] is None


def test_output_error_figures_are_those_of_their_definitions_in_float64():
    from rfdeploy.measure.verify import output_error

    rng = np.random.default_rng(3)
    expected = (rng.standard_normal((2, 5, 7, 9)) * 4).astype(np.float32)
    actual = (expected + rng.standard_normal(expected.shape) * 1e-3).astype(np.float32)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    error = output_error(actual, expected)
    assert error.max_abs == np.abs(a - e).max() and error.scale == np.abs(e).max()
    assert math.isclose(error.signal, (e * e).sum(), rel_tol=1e-12)
    assert math.isclose(error.noise, ((a - e) ** 2).sum(), rel_tol=1e-9)
    assert math.isclose(error.cosine, (a * e).sum() / np.linalg.norm(a) / np.linalg.norm(e), rel_tol=1e-12)
    assert math.isclose(error.snr_db, 10 * math.log10((e * e).sum() / ((a - e) ** 2).sum()), rel_tol=1e-9)
