"""Receptive fields of random networks against a brute-force oracle.

The oracle: with all-ones weights, no ReLU and an all-ones input, every input pixel an output position
depends on gets a positive gradient; the extent of the nonzero gradient of one central output position is
its receptive field. The input is made much larger than any field the network could have, so that the
window of the central position never reaches the border.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rfdeploy.analysis import analyze
from rfdeploy.loader.searched_conv import SearchedConv


def measured_rf(model: nn.Module, size: tuple[int, ...], channels: int = 1) -> tuple[int, ...]:
    x = torch.ones(1, channels, *size, dtype=torch.float64, requires_grad=True)
    y = model.double()(x)
    centre = (0, 0, *(n // 2 for n in y.shape[2:]))
    y[centre].backward()
    reached = x.grad[0].abs().sum(0).nonzero()
    low, high = reached.min(0).values, reached.max(0).values
    assert (low > 0).all() and (high < torch.tensor(size) - 1).all(), "the window touched the border"
    return tuple(int(e) for e in high - low + 1)


def ones(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.ones_(parameter)
    return module


@st.composite
def layer_specs(draw, dims: int, max_kernel: int, max_dilation: int):
    kind = draw(st.sampled_from(["conv", "conv", "avg"]))
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    if kind == "conv":
        dilation = tuple(draw(st.integers(1, max_dilation)) for _ in range(dims))
        padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    else:  # pooling: no dilation; padding at most half the kernel
        dilation = (1,) * dims
        padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    return kind, kernel, stride, dilation, padding


def build(spec, dims: int, in_channels: int = 1) -> nn.Module:
    kind, kernel, stride, dilation, padding = spec
    if kind == "conv":
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        return ones(cls(in_channels, 1, kernel, stride, padding, dilation, bias=False))
    cls = nn.AvgPool1d if dims == 1 else nn.AvgPool2d
    return cls(kernel, stride, padding)


def chains(dims: int, max_layers: int, max_kernel: int, max_dilation: int, max_jump: int):
    layers = st.lists(layer_specs(dims, max_kernel, max_dilation), min_size=1, max_size=max_layers)
    return layers.filter(lambda specs: all(math.prod(s[2][d] for s in specs) <= max_jump for d in range(dims)))


def safe_size(specs, dims: int, extra: int = 0) -> tuple[int, ...]:
    """Twice a crude upper bound of any field the layers can have (every kernel at the total jump)."""
    sizes = []
    for d in range(dims):
        jump = math.prod(s[2][d] for s in specs)
        span = 1 + extra + sum(s[3][d] * (s[1][d] - 1) for s in specs)
        sizes.append(2 * span * jump + 4 * jump + 8)
    return tuple(sizes)


@given(chains(dims=1, max_layers=6, max_kernel=5, max_dilation=3, max_jump=8))
def test_random_1d_chains_match_the_gradient_oracle(specs):
    model = nn.Sequential(*(build(spec, 1) for spec in specs))
    size = safe_size(specs, 1)
    assert analyze(model, size, in_channels=1).receptive_field == measured_rf(model, size)


@settings(max_examples=30)
@given(chains(dims=2, max_layers=4, max_kernel=3, max_dilation=3, max_jump=4))
def test_random_2d_chains_match_the_gradient_oracle(specs):
    model = nn.Sequential(*(build(spec, 2) for spec in specs))
    size = safe_size(specs, 2)
    assert analyze(model, size, in_channels=1).receptive_field == measured_rf(model, size)


class TwoPaths(nn.Module):
    """head -> (left, right) -> add or cat -> tail: a residual or an inception-like join."""

    def __init__(self, head, left, right, tail, join: str):
        super().__init__()
        self.head, self.left, self.right, self.tail, self.join = head, left, right, tail, join

    def forward(self, x):
        x = self.head(x)
        a, b = self.left(x), self.right(x)
        return self.tail(a + b if self.join == "add" else torch.cat([a, b], dim=1))


def same_padded_branch():
    """Stride-1 convs padded to keep the size: both branches stay aligned, windows centred."""
    odd = st.sampled_from([1, 3, 5])
    return st.lists(st.tuples(odd, st.integers(1, 3)), min_size=0, max_size=3)


@settings(max_examples=40)
@given(chains(dims=1, max_layers=3, max_kernel=4, max_dilation=2, max_jump=4), same_padded_branch(),
       same_padded_branch(), st.integers(1, 5), st.sampled_from(["add", "cat"]))
def test_random_joins_match_the_gradient_oracle(head_specs, left, right, tail_kernel, join):
    def branch(layers):
        return nn.Sequential(*(ones(nn.Conv1d(1, 1, k, padding=d * (k - 1) // 2, dilation=d, bias=False))
                               for k, d in layers))

    tail = ones(nn.Conv1d(1 if join == "add" else 2, 1, tail_kernel, bias=False))
    head = nn.Sequential(*(build(spec, 1) for spec in head_specs))
    model = TwoPaths(head, branch(left), branch(right), tail, join)
    extra = sum(d * (k - 1) for k, d in left + right) + tail_kernel
    size = safe_size(head_specs, 1, extra)
    assert analyze(model, size, in_channels=1).receptive_field == measured_rf(model, size)


@settings(max_examples=30)
@given(chains(dims=1, max_layers=2, max_kernel=3, max_dilation=2, max_jump=4),
       st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True), st.sampled_from([3, 5]),
       chains(dims=1, max_layers=2, max_kernel=3, max_dilation=2, max_jump=2))
def test_searched_layers_reach_as_far_as_their_widest_branch(head_specs, rates, kernel, tail_specs):
    # the searched model (every branch computed) is the oracle for the structure-only analysis of the plain one
    searched = SearchedConv(torch.ones(1, 1, kernel), None, torch.ones(len(rates)), [(r,) for r in rates],
                            [(r * (kernel - 1) // 2,) for r in rates], (1,), 1)
    head = [build(spec, 1) for spec in head_specs]
    tail = [build(spec, 1) for spec in tail_specs]
    searched_model = nn.Sequential(*head, searched, *tail)
    plain_model = nn.Sequential(*head, nn.Conv1d(1, 1, kernel, bias=False), *tail)
    specs = head_specs + [("conv", (kernel,), (1,), (max(rates),), (0,))] + tail_specs
    size = safe_size(specs, 1)
    expected = measured_rf(searched_model, size)
    assert analyze(searched_model, size, in_channels=1).receptive_field == expected
    structure = {str(len(head)): [(r,) for r in rates]}
    assert analyze(plain_model, size, dilations=structure, in_channels=1).receptive_field == expected
