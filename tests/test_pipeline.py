"""The declared pass pipelines: their order, the README's table, and errors that name the pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from rfdeploy.compiler.ir import from_searched
from rfdeploy.compiler.passes.base import Pass, PassError, Preserves, check_order, flattened
from rfdeploy.compiler.pipeline import (
    GRAPH_PIPELINE,
    INVOLUTION_PIPELINE,
    KEEP_STRONGEST_BRANCH,
    LAYER_PIPELINE,
    MODEL_PIPELINE,
    SINK_TRANSPOSES,
    lower_layer,
)
from rfdeploy.loader.searched_conv import SearchedConv

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_pass_table() -> list[str]:
    """The first column of the README's pass table, in order."""
    text = README.read_text()
    table = text[text.index("| pass |"):].split("\n\n")[0].splitlines()[2:]
    return [re.match(r"\| `(\w+)` \|", row).group(1) for row in table]  # type: ignore[union-attr]


def test_the_readme_pass_table_is_the_declared_pipeline_in_order():
    declared = [p.name for p in flattened(LAYER_PIPELINE + INVOLUTION_PIPELINE + MODEL_PIPELINE + GRAPH_PIPELINE)]
    declared += [SINK_TRANSPOSES.name, KEEP_STRONGEST_BRANCH.name]
    assert readme_pass_table() == declared


def test_a_pass_before_one_it_needs_is_refused_when_the_pipeline_is_declared():
    fold, merge = (next(p for p in LAYER_PIPELINE if p.name == name) for name in ("fold_alphas", "merge_biases"))
    check_order([fold, merge])
    with pytest.raises(ValueError, match="pass merge_biases needs fold_alphas to run before it"):
        check_order([merge, fold])
    with pytest.raises(ValueError, match="needs fold_alphas"):
        check_order([merge])


def searched(bias: bool = True) -> SearchedConv:
    torch.manual_seed(0)
    return SearchedConv(torch.randn(4, 2, 3, 3), torch.randn(4) if bias else None, torch.tensor([0.4, 0.6]),
                        [(1, 1), (2, 2)], [(1, 1), (2, 2)], (1, 1), 1)


def test_an_unexpected_error_inside_a_pass_names_the_pass_and_the_layer(monkeypatch):
    def broken(ir):
        raise IndexError("tuple index out of range")

    from rfdeploy.compiler import pipeline

    steps = tuple(Pass("fold_alphas", broken, Preserves.ROUNDING) if p.name == "fold_alphas" else p
                  for p in LAYER_PIPELINE)
    monkeypatch.setattr(pipeline, "LAYER_PIPELINE", steps)
    with pytest.raises(PassError, match=r"^pass fold_alphas failed on layer backbone.conv2: IndexError: tuple "
                                        r"index out of range$") as error:
        lower_layer(from_searched("backbone.conv2", searched()))
    assert isinstance(error.value.__cause__, IndexError)


def test_after_each_sees_every_layer_pass_in_order():
    seen = []
    lowered = lower_layer(from_searched("conv", searched()), "multi",
                          after_each=lambda step, before, after: seen.append((step.name, len(after.branches))))
    assert seen == [("merge_equal_rates", 2), ("drop_zero_branches", 2), ("fold_alphas", 2), ("merge_biases", 2),
                    ("choose_lowering", 2)]
    assert lowered.lowering == "multi"
