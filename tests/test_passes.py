"""Each compiler pass on its own: what it changes, what it must leave alone, and that outputs hold."""

import pytest
import torch
from torch import nn

from rfdeploy.compiler.ir import Branch, BranchSum, ConvIR, NotApplicable, from_searched, to_module
from rfdeploy.compiler.passes.choose_lowering import choose_lowering
from rfdeploy.compiler.passes.drop_zero_branches import drop_zero_branches
from rfdeploy.compiler.passes.fold_alphas import fold_alphas
from rfdeploy.compiler.passes.fold_batchnorm import fold_batchnorm
from rfdeploy.compiler.passes.lower_multi import lower_multi
from rfdeploy.compiler.passes.lower_single import lower_single
from rfdeploy.compiler.passes.merge_biases import merge_biases
from rfdeploy.compiler.passes.merge_equal_rates import merge_equal_rates
from rfdeploy.compiler.pipeline import compile_model
from rfdeploy.loader.searched_conv import SearchedConv

torch.manual_seed(0)
W = torch.randn(4, 3, 3, 3)
B = torch.randn(4)
X = torch.randn(2, 3, 17, 19)


def ir_of(rates, alphas, relu=False, weight=W, bias=B) -> ConvIR:
    dims = weight.dim() - 2
    branches = [Branch((r,) * dims, (r * (weight.shape[-1] - 1) // 2,) * dims, a, weight, bias)
                for r, a in zip(rates, alphas)]
    return ConvIR("layer", (1,) * dims, 1, tuple(branches), relu)


def run(ir: ConvIR, x=X) -> torch.Tensor:
    with torch.no_grad():
        return to_module(ir)(x)


def reference(rates, alphas, relu=False, weight=W, bias=B, x=X) -> torch.Tensor:
    """The searched forward, written out: sum_i alpha_i * act(conv(x, W, b, dilation r_i))."""
    conv = nn.functional.conv2d if weight.dim() == 4 else nn.functional.conv1d
    out = 0
    for r, a in zip(rates, alphas):
        y = conv(x, weight, bias, padding=r * (weight.shape[-1] - 1) // 2, dilation=r)
        out = out + a * (torch.relu(y) if relu else y)
    return out


def test_merge_equal_rates_sums_alphas_of_one_shared_weight():
    merged = merge_equal_rates(ir_of([1, 2, 1], [0.2, 0.5, 0.3]))
    assert [(b.rate, b.alpha) for b in merged.branches] == [((1, 1), pytest.approx(0.5)), ((2, 2), 0.5)]
    assert merged.branches[0].weight is W  # still the shared weight: legal across a ReLU too
    torch.testing.assert_close(run(merged), reference([1, 2, 1], [0.2, 0.5, 0.3]))


def test_merge_equal_rates_across_relu_keeps_outputs():
    x = torch.randn(1, 3, 30)
    w, b = torch.randn(5, 3, 3), torch.randn(5)
    ir = ir_of([2, 2, 3], [0.1, 0.6, 0.3], relu=True, weight=w, bias=b)
    merged = merge_equal_rates(ir)
    assert len(merged.branches) == 2
    torch.testing.assert_close(run(merged, x), reference([2, 2, 3], [0.1, 0.6, 0.3], True, w, b, x))


def test_merge_equal_rates_leaves_distinct_weights_apart_across_relu():
    w2 = torch.randn(5, 3, 3)
    ir = ConvIR("l", (1,), 1, (Branch((2,), (2,), 1.0, torch.randn(5, 3, 3), None), Branch((2,), (2,), 1.0, w2, None)),
                branch_relu=True)
    assert len(merge_equal_rates(ir).branches) == 2


def test_drop_zero_branches_removes_only_exact_zeros():
    ir = ir_of([1, 2, 3], [0.0, 1e-30, 0.7])
    dropped = drop_zero_branches(ir)
    assert [b.rate for b in dropped.branches] == [(2, 2), (3, 3)]
    assert drop_zero_branches(ir_of([1, 2], [0.0, 0.0])).branches == ir_of([1, 2], [0.0, 0.0]).branches


def test_fold_alphas_moves_each_alpha_into_weight_and_bias():
    folded = fold_alphas(ir_of([1, 2], [0.25, 0.75]))
    assert all(b.alpha == 1.0 for b in folded.branches)
    torch.testing.assert_close(folded.branches[0].weight, W * 0.25)
    torch.testing.assert_close(folded.branches[1].bias, B * 0.75)
    torch.testing.assert_close(run(folded), reference([1, 2], [0.25, 0.75]))


def test_fold_alphas_refuses_a_negative_alpha_before_a_relu():
    with pytest.raises(NotApplicable, match="negative alpha"):
        fold_alphas(ir_of([1, 2], [-0.5, 1.5], relu=True, weight=torch.randn(2, 2, 3), bias=None))


def test_merge_biases_puts_one_summed_bias_on_the_least_dilated_branch():
    merged = merge_biases(fold_alphas(ir_of([2, 1, 3], [0.2, 0.5, 0.3])))
    assert [b.bias is not None for b in merged.branches] == [False, True, False]
    torch.testing.assert_close(merged.branches[1].bias, B)  # 0.2*B + 0.5*B + 0.3*B
    torch.testing.assert_close(run(merged), reference([2, 1, 3], [0.2, 0.5, 0.3]))


def test_merge_biases_leaves_biases_inside_a_relu_alone():
    relu = fold_alphas(ir_of([1, 2], [0.5, 0.5], relu=True))
    assert merge_biases(relu) is relu


def test_lower_single_places_taps_at_the_gcd_of_the_rates():
    single = lower_single(ir_of([2, 4], [0.4, 0.6]))
    (branch,) = single.branches
    # taps at offsets {-2,0,2} and {-4,0,4}: gcd 2, five positions -4..4
    assert branch.rate == (2, 2) and branch.kernel_size == (5, 5) and branch.padding == (4, 4)
    centre = branch.weight[:, :, 2, 2]
    torch.testing.assert_close(centre, W[:, :, 1, 1] * 1.0)  # both branches' centre taps, 0.4 + 0.6
    assert single.lowering == "single"
    torch.testing.assert_close(run(single), reference([2, 4], [0.4, 0.6]), atol=1e-5, rtol=1e-5)


def test_lower_single_refuses_branches_with_a_relu_inside():
    with pytest.raises(NotApplicable, match="ReLU"):
        lower_single(ir_of([1, 2], [0.5, 0.5], relu=True, weight=torch.randn(2, 2, 3), bias=None))


def test_lower_single_refuses_branches_without_a_common_centre():
    off_centre = ConvIR("l", (1,), 1, (Branch((1,), (0,), 1.0, torch.randn(2, 2, 3), None),
                                       Branch((2,), (2,), 1.0, torch.randn(2, 2, 3), None)))
    with pytest.raises(NotApplicable, match="centre"):
        lower_single(off_centre)


def test_lower_single_refuses_a_merged_kernel_of_billions_of_weights():
    """Rates 65535 and 65536 have a gcd of 1: one merged kernel would span 131073 taps per dim."""
    far = fold_alphas(ir_of([65535, 65536], [0.5, 0.5]))
    with pytest.raises(NotApplicable, match="merged kernel"):
        lower_single(far)
    assert choose_lowering(far, "single").lowering == "multi"


def test_lower_multi_keeps_one_plain_conv_per_branch():
    multi = lower_multi(fold_alphas(ir_of([1, 3], [0.5, 0.5])))
    module = to_module(multi)
    assert multi.lowering == "multi" and isinstance(module, BranchSum) and len(module.convs) == 2
    torch.testing.assert_close(run(multi), reference([1, 3], [0.5, 0.5]))


def test_choose_lowering_falls_back_to_multi_and_says_why():
    ir = fold_alphas(ir_of([1, 2], [0.5, 0.5], relu=True, weight=torch.randn(2, 2, 3), bias=None))
    chosen = choose_lowering(ir, "single")
    assert chosen.lowering == "multi"
    assert any("single not applied" in note and "ReLU" in note for note in chosen.notes)


def test_choose_lowering_auto_prefers_fewer_taps_for_a_dense_conv():
    # rates 1 and 3: single is a dense 7x7 (49 taps) against 2 x 9 taps for multi
    dense = torch.randn(64, 64, 3, 3)
    assert choose_lowering(fold_alphas(ir_of([1, 3], [0.5, 0.5], weight=dense, bias=None))).lowering == "multi"
    # rates 1 and 2 on a depthwise-cheap conv: 25 taps once beats 18 taps read twice
    assert choose_lowering(fold_alphas(ir_of([1, 2], [0.5, 0.5], weight=torch.randn(1, 1, 3, 3), bias=None))).lowering == "single"


class ConvBN(nn.Module):
    def __init__(self, reuse_conv_output=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.reuse = reuse_conv_output
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y if self.reuse else self.bn(y)


def test_fold_batchnorm_folds_into_the_conv_and_keeps_outputs():
    model = ConvBN().eval()
    expected = model(X)
    folded, names, note = fold_batchnorm(model)
    assert names == ["bn"] and note is None and isinstance(folded.bn, nn.Identity)
    torch.testing.assert_close(folded(X), expected, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_leaves_a_conv_whose_output_is_also_used_elsewhere():
    model = ConvBN(reuse_conv_output=True).eval()
    assert fold_batchnorm(model)[1] == []
    assert isinstance(model.bn, nn.BatchNorm2d)


def searched_then_batchnorm(rates: list[int], bias: torch.Tensor | None) -> nn.Sequential:
    """A two-branch searched conv (weight ``W``, alphas 0.3 / 0.7) feeding an eval BatchNorm with statistics."""
    geometry = [(r, r) for r in rates]
    searched = nn.Sequential(SearchedConv(W, bias, torch.tensor([0.3, 0.7]), geometry, geometry, (1, 1), 1),
                             nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        searched[1].running_var.uniform_(0.5, 2)
        searched[1].running_mean.uniform_(-1, 1)
    return searched


@pytest.mark.parametrize("bias", [B, None], ids=["conv-bias", "no-conv-bias"])
def test_fold_batchnorm_into_a_multi_branch_lowering(bias):
    searched = searched_then_batchnorm([3, 1], bias)
    result = compile_model(searched, mode="multi")
    assert result.folded_batchnorms == ["1"] and isinstance(result.model[0], BranchSum)
    # one bias in all, on the undilated branch: the dilated conv stays bias-free
    assert [conv.bias is not None for conv in result.model[0].convs] == [False, True]
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), searched(X), atol=1e-5, rtol=1e-5)


def test_a_sum_of_dilated_convs_carries_its_bias_itself():
    ir = merge_biases(fold_alphas(ir_of([2, 4], [0.4, 0.6])))
    module = to_module(ir)
    assert isinstance(module, BranchSum) and module.bias is not None
    assert all(conv.bias is None for conv in module.convs)
    torch.testing.assert_close(run(ir), reference([2, 4], [0.4, 0.6]))


def test_fold_batchnorm_into_a_sum_of_dilated_convs_gives_the_sum_a_bias():
    searched = searched_then_batchnorm([2, 3], None)
    result = compile_model(searched, mode="multi")
    branch_sum = result.model[0]
    assert result.folded_batchnorms == ["1"] and isinstance(branch_sum, BranchSum)
    assert branch_sum.bias is not None and all(conv.bias is None for conv in branch_sum.convs)
    with torch.no_grad():
        torch.testing.assert_close(result.model(X), searched(X), atol=1e-5, rtol=1e-5)


def test_compile_reports_searched_alphas_and_leaves_no_search_op():
    searched = nn.Sequential(SearchedConv(W, B, torch.tensor([-1.0, 3.0]), [(1, 1), (2, 2)], [(1, 1), (2, 2)],
                                          (1, 1), 1))
    result = compile_model(searched)
    (layer,) = result.layers
    assert layer.alphas == [0.25, 0.75]  # |a| / sum |a|
    assert not any(isinstance(m, SearchedConv) for m in result.model.modules())
    assert from_searched("x", searched[0]).branches[0].alpha == pytest.approx(0.25)


def test_to_module_refuses_a_negative_alpha_before_a_relu():
    ir = ir_of([1, 2], [-0.5, 1.5], relu=True, weight=torch.randn(2, 2, 3), bias=None)
    with pytest.raises(NotApplicable, match="negative alpha"):
        to_module(ir)


def test_ir_prints_as_one_readable_line():
    ir = fold_alphas(ir_of([1, 2], [0.25, 0.75]))
    assert repr(ir) == "ConvIR(layer: kernel 3x3, rates 1x1 2x2, alphas 1 1, lowering -)"
    assert repr(choose_lowering(ir_of([1, 2], [0.25, 0.75]), "multi")) == \
        "ConvIR(layer: kernel 3x3, rates 1x1 2x2, alphas 0.25 0.75, lowering multi)"
    assert repr(ir.branches[0]) == "Branch(kernel 3x3, rate 1x1, padding 1x1, alpha 1, bias)"
