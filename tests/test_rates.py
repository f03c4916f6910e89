"""Branch rates and paddings, re-derived from a centre dilation exactly as each search did.

mmcv >= 2 is checked against mmcv-lite's own ``Conv2dRFSearchOp``; the research format and G2L against
their expansion rules transcribed here from the original code (docs/formats.md 2 and 4), and every
format on hand-derived literals whose rounding ties make ``floor(v + 0.5)`` give a different answer.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from mmcv.cnn.rfsearch import Conv2dRFSearchOp
from original_rfsearch import expands_rate
from torch import nn

from rfdeploy.loader import rates as R

EXP_RATES = [0.1, 0.25, 0.5, 0.75]


def expansion(exp_rate=0.5, mmin=1, mmax=24, num_branches=3) -> R.Expansion:
    return R.Expansion(exp_rate=exp_rate, mmin=mmin, mmax=mmax, num_branches=num_branches)


def mmcv_op(centre, kernel, stride, exp_rate, mmin, mmax, num_branches) -> Conv2dRFSearchOp:
    """mmcv-lite's real searched op around a real conv whose dilation is the centre."""
    conv = nn.Conv2d(1, 1, kernel, stride=stride, dilation=centre)
    config = {"init_alphas": 0.01, "num_branches": num_branches, "exp_rate": exp_rate, "mmin": mmin,
              "mmax": mmax}
    return Conv2dRFSearchOp(conv, config, verbose=False)


def original_expands_rate(d, exp_rate, mmin, mmax):
    return expands_rate(d, {"exp_rate": exp_rate, "mmin": mmin, "mmax": mmax})


def original_research_rates(d, S, exp_rate, mmin, mmax):
    """Older mmcv ``Conv2dRFSearchOp.__init__`` (``S``, ``weights``): ``[1 1 x] -> [1 x]``; S=2 drops the centre."""
    rates = original_expands_rate(d, exp_rate, mmin, mmax)
    if d == 1:
        return rates[1:]
    if S == 2:
        return [rates[0], rates[2]]
    return rates


def floor_half_up(v: float) -> int:
    """The wrong rounding: ties away from even."""
    return math.floor(v + 0.5)


# ---------------------------------------------------------------- mmcv >= 2, against mmcv-lite itself

@given(
    dh=st.integers(1, 30), dw=st.integers(1, 30),
    kh=st.sampled_from([1, 2, 3, 4, 5, 7]), kw=st.sampled_from([1, 2, 3, 4, 5, 7]),
    sh=st.integers(1, 3), sw=st.integers(1, 3),
    exp_rate=st.sampled_from(EXP_RATES), mmin=st.integers(1, 4), span=st.integers(0, 40),
    num_branches=st.sampled_from([2, 3]),
)
def test_mmcv_rates_and_paddings_equal_mmcv_lite_conv2d_rfsearch_op(dh, dw, kh, kw, sh, sw, exp_rate, mmin, span,
                                                                     num_branches):
    mmax = mmin + span
    op = mmcv_op((dh, dw), (kh, kw), (sh, sw), exp_rate, mmin, mmax, num_branches)
    ours = R.mmcv_rates((dh, dw), (kh, kw), R.Expansion(exp_rate, mmin, mmax, num_branches))
    assert [tuple(r) for r in ours] == [tuple(int(v) for v in r) for r in op.dilation_rates]
    for rate in op.dilation_rates:
        assert tuple(R.mmcv_padding((kh, kw), (sh, sw), rate)) == tuple(op.get_padding(rate))


@pytest.mark.parametrize("centre, kernel, exp, expected", [
    # d=1, e=0.5: (1-e)*1=0.5 -> round 0 -> clip 1; (1+e)*1=1.5 -> 2.  [small, d, large] = [1, 1, 2] -> dedup
    ((1, 1), (3, 3), expansion(0.5, num_branches=3), [(1, 1), (2, 2)]),
    ((1, 1), (3, 3), expansion(0.5, num_branches=2), [(1, 1), (2, 2)]),
    # d=5, e=0.5: 2.5 -> 2 (ties to even), 7.5 -> 8
    ((5, 5), (3, 3), expansion(0.5, num_branches=3), [(2, 2), (5, 5), (8, 8)]),
    ((5, 5), (3, 3), expansion(0.5, num_branches=2), [(2, 2), (8, 8)]),
    # d=3, e=0.5: 1.5 -> 2, 4.5 -> 4
    ((3, 3), (3, 3), expansion(0.5, num_branches=3), [(2, 2), (3, 3), (4, 4)]),
    # non-square, per dim: 3 -> (2, 4); 5 -> (2, 8)
    ((3, 5), (3, 3), expansion(0.5, num_branches=2), [(2, 2), (4, 8)]),
    # kernel (1, 3): dim 0 keeps its centre 2 in every branch; dim 1: 1.5 -> 2, 3, 4.5 -> 4
    ((2, 3), (1, 3), expansion(0.5, num_branches=3), [(2, 2), (2, 3), (2, 4)]),
    # kernel (3, 2), d=(1, 4): candidates (1,2) (1,4) (2,6) are distinct; fixing dim 1 to 4 afterwards
    # makes two equal branches, which mmcv keeps (each has its own alpha)
    ((1, 4), (3, 2), expansion(0.5, num_branches=3), [(1, 4), (1, 4), (2, 4)]),
    # mmax clips the large branch: 30 -> 24
    ((20, 20), (3, 3), expansion(0.5, mmax=24, num_branches=3), [(10, 10), (20, 20), (24, 24)]),
    # the centre branch is the raw centre, not clipped (mmcv puts `dilation` itself in the list)
    ((30, 30), (3, 3), expansion(0.5, mmax=24, num_branches=3), [(15, 15), (30, 30), (24, 24)]),
    # e=0.25, d=2: 1.5 -> 2, 2.5 -> 2: every branch is (2, 2)
    ((2, 2), (3, 3), expansion(0.25, num_branches=3), [(2, 2)]),
])
def test_mmcv_rates_hand_derived(centre, kernel, exp, expected):
    assert [tuple(r) for r in R.mmcv_rates(centre, kernel, exp)] == expected


@pytest.mark.parametrize("kernel, stride, rate, expected", [
    ((3, 3), (1, 1), (2, 2), (2, 2)),  # (0 + 2*2)//2
    ((3, 3), (2, 2), (1, 1), (1, 1)),  # (1 + 1*2)//2
    ((3, 3), (3, 3), (1, 1), (2, 2)),  # (2 + 1*2)//2: the stride term matters
    ((2, 5), (1, 2), (3, 3), (1, 6)),  # (0 + 3*1)//2, (1 + 3*4)//2
    ((1, 3), (2, 1), (4, 5), (0, 5)),  # (1 + 4*0)//2, (0 + 5*2)//2
])
def test_mmcv_padding_hand_derived(kernel, stride, rate, expected):
    assert tuple(R.mmcv_padding(kernel, stride, rate)) == expected


# ---------------------------------------------------------------- research format ("S", "weights")

@given(d=st.integers(1, 60), S=st.sampled_from([2, 3]), exp_rate=st.sampled_from(EXP_RATES),
       mmin=st.integers(1, 3), span=st.integers(0, 40))
def test_research_rates_equal_the_transcribed_original(d, S, exp_rate, mmin, span):
    mmax = mmin + span
    assert list(R.research_rates(d, S, R.Expansion(exp_rate, mmin, mmax, S))) == \
        original_research_rates(d, S, exp_rate, mmin, mmax)


@pytest.mark.parametrize("d, S, exp, expected", [
    # d=1: three = [clip(round(0.5)=0)=1, 1, round(1.5)=2] -> three[1:]
    (1, 2, expansion(0.5, num_branches=2), [1, 2]),
    (1, 3, expansion(0.5, num_branches=3), [1, 2]),
    # d=1, e=0.25: three = [1, 1, round(1.25)=1] -> three[1:] = [1, 1], not de-duplicated
    (1, 2, expansion(0.25, num_branches=2), [1, 1]),
    # d=5, e=0.5: three = [round(2.5)=2, 5, round(7.5)=8]; S=2 -> [three[0], three[2]]
    (5, 2, expansion(0.5, num_branches=2), [2, 8]),
    (5, 3, expansion(0.5, num_branches=3), [2, 5, 8]),
    # d=3: [round(1.5)=2, 3, round(4.5)=4]
    (3, 2, expansion(0.5, num_branches=2), [2, 4]),
    (3, 3, expansion(0.5, num_branches=3), [2, 3, 4]),
    # d=30, mmax=24: [15, clip(30)=24, clip(45)=24] (here the centre is clipped too)
    (30, 3, expansion(0.5, mmax=24, num_branches=3), [15, 24, 24]),
])
def test_research_rates_hand_derived(d, S, exp, expected):
    assert list(R.research_rates(d, S, exp)) == expected


@pytest.mark.parametrize("kernel, rate, expected", [
    ((3, 3), 4, (4, 4)),  # 4*(3-1)//2
    ((5, 5), 3, (6, 6)),  # 3*(5-1)//2
    ((3, 1), 2, (2, 2)),  # kernel_size[0] decides both dims, as the original computed it
])
def test_research_padding_hand_derived(kernel, rate, expected):
    assert tuple(R.research_padding(kernel, rate)) == expected


# ---------------------------------------------------------------- G2L

@given(d=st.integers(1, 3000), exp_rate=st.sampled_from(EXP_RATES), mmin=st.integers(1, 3),
       mmax=st.sampled_from([24, 512, 2048]))
def test_g2l_rates_equal_the_transcribed_original(d, exp_rate, mmin, mmax):
    assert list(R.g2l_rates(d, R.Expansion(exp_rate, mmin, mmax, 3))) == \
        original_expands_rate(d, exp_rate, mmin, mmax)


@pytest.mark.parametrize("d, expected", [
    (4, [4, 4, 4]),        # 3.6 -> 4, 4, 4.4 -> 4: never de-duplicated
    (1, [1, 1, 1]),        # 0.9 -> 1, 1, 1.1 -> 1
    (5, [4, 5, 6]),        # 4.5 -> 4 (tie to even), 5.5 -> 6
    (15, [14, 15, 16]),    # 13.5 -> 14, 16.5 -> 16
    (25, [22, 25, 28]),    # 22.5 -> 22, 27.500000000000004 -> 28
    (2048, [1843, 2048, 2048]),  # 1843.2 -> 1843, 2252.8 -> 2253 -> clip 2048
])
def test_g2l_rates_hand_derived(d, expected):
    assert list(R.g2l_rates(d, expansion(0.1, mmin=1, mmax=2048, num_branches=3))) == expected


# ---------------------------------------------------------------- the rounding ties bite

TIE_CASES = [
    # (rule, centre, exp_rate, expected with round-half-even)
    ("mmcv", 5, 0.5, [2, 5, 8]),        # 2.5 -> 2, 7.5 -> 8
    ("mmcv", 3, 0.5, [2, 3, 4]),          # 1.5 -> 2, 4.5 -> 4
    ("research", 3, 0.5, [2, 3, 4]),
    ("research", 9, 0.5, [4, 9, 14]),     # 4.5 -> 4, 13.5 -> 14
    ("g2l", 5, 0.1, [4, 5, 6]),           # 4.5 -> 4, 5.5 -> 6
    ("g2l", 25, 0.1, [22, 25, 28]),       # 22.5 -> 22
]


def _computed(rule, d, e):
    if rule == "mmcv":
        return [r[0] for r in R.mmcv_rates((d, d), (3, 3), expansion(e, mmax=2048, num_branches=3))]
    if rule == "research":
        return list(R.research_rates(d, 3, expansion(e, mmax=2048, num_branches=3)))
    return list(R.g2l_rates(d, expansion(e, mmax=2048, num_branches=3)))


@pytest.mark.parametrize("rule, d, e, expected", TIE_CASES)
def test_ties_round_to_even_where_floor_half_up_would_differ(rule, d, e, expected):
    wrong = [max(1, floor_half_up((1 - e) * d)), d, floor_half_up((1 + e) * d)]
    assert wrong != expected, "the case must be a rounding tie that floor(v + 0.5) gets wrong"
    assert _computed(rule, d, e) == expected


def test_mmcv_lite_agrees_with_the_tie_literals():
    op = mmcv_op((5, 3), (3, 3), (1, 1), 0.5, 1, 24, 3)
    # dim 0: 2.5 -> 2, 5, 7.5 -> 8; dim 1: 1.5 -> 2, 3, 4.5 -> 4
    assert [tuple(int(v) for v in r) for r in op.dilation_rates] == [(2, 2), (5, 3), (8, 4)]
    assert torch.equal(op.branch_weights.detach(), torch.full((3,), 0.01))
