"""Every lowering equals the branch-by-branch searched forward, over a large space of searched convs."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rfdeploy.compiler.ir import BranchSum, ConvReLU, NotApplicable, from_searched, to_module
from rfdeploy.compiler.pipeline import lower_layer
from rfdeploy.loader.rates import mmcv_padding
from rfdeploy.loader.searched_conv import SearchedConv


@st.composite
def searched_convs(draw):
    dims = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 7)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    groups, per_group_in, per_group_out = draw(st.sampled_from([(1, 3, 4), (2, 2, 3), (4, 1, 1)]))
    num_branches = draw(st.integers(1, 3))
    rates = []
    for _ in range(num_branches):
        # a dim with an even or unit kernel is not searched: every branch keeps one dilation there
        rates.append(tuple(draw(st.integers(1, 4)) if k % 2 == 1 and k > 1 else 1 for k in kernel))
    alphas = draw(st.lists(st.sampled_from([0.0, 0.3, -0.7, 1.0, 2.5, 0.01]), min_size=num_branches,
                           max_size=num_branches).filter(lambda a: any(x != 0 for x in a)))
    branch_relu = dims == 1 and draw(st.booleans())
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(groups * per_group_out, per_group_in, *kernel, generator=generator)
    module = SearchedConv(
        weight,
        torch.randn(weight.shape[0], generator=generator) if bias else None,
        torch.tensor(alphas),
        rates,
        [mmcv_padding(kernel, stride, r) for r in rates],
        stride,
        groups,
        branch_relu=branch_relu,
        always_mix=branch_relu,
    )
    size = tuple(draw(st.integers(5, 30)) for _ in kernel)
    x = torch.randn(2, groups * per_group_in, *size, generator=generator)
    return module, x


def is_close(actual, expected) -> bool:
    scale = expected.abs().max().item() + 1e-6
    return actual.shape == expected.shape and (actual - expected).abs().max().item() <= 1e-5 * scale + 1e-6


def assert_close(actual, expected):
    assert is_close(actual, expected)


@given(searched_convs(), st.sampled_from(["auto", "multi", "single"]))
def test_every_lowering_equals_the_searched_forward(case, mode):
    module, x = case
    ir = lower_layer(from_searched("layer", module), mode)
    compiled = to_module(ir)
    with torch.no_grad():
        assert_close(compiled(x), module(x))
    assert not any(isinstance(m, SearchedConv) for m in compiled.modules())


@given(searched_convs())
def test_single_is_one_plain_conv_whenever_branches_are_linear(case):
    module, _ = case
    compiled = to_module(lower_layer(from_searched("layer", module), "single"))
    if module.branch_relu:
        live_rates = {r for r, a in zip(module.rates, module.alphas.tolist()) if a != 0}
        assert isinstance(compiled, (BranchSum, ConvReLU)) or len(live_rates) == 1
    else:
        assert isinstance(compiled, (nn.Conv1d, nn.Conv2d))


@given(searched_convs())
def test_multi_keeps_one_conv_per_distinct_live_rate(case):
    module, _ = case
    compiled = to_module(lower_layer(from_searched("layer", module), "multi"))
    convs = [m for m in compiled.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    live = {r for r, a in zip(module.rates, module.alphas[: len(module.rates)].tolist()) if a != 0}
    if len(module.rates) == 1 and not module.always_mix:  # a lone rate runs unmixed: its alpha is unused
        live = set(module.rates)
    assert len(convs) == len(live)


@given(searched_convs(), st.sampled_from(["auto", "multi", "single"]))
def test_every_pass_keeps_the_searched_forward(case, mode):
    """Checked after each pass, so that a failure names the pass that broke equality."""
    module, x = case
    with torch.no_grad():
        expected = module(x)

    def check(step, before, after) -> None:
        try:
            emitted = to_module(after)
        except NotApplicable:  # a negative alpha inside a ReLU branch: left as it is, never emitted
            return
        with torch.no_grad():
            assert is_close(emitted(x), expected), f"pass {step.name} broke equality ({before} -> {after})"

    lower_layer(from_searched("layer", module), mode, after_each=check)
