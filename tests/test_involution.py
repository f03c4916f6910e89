"""Involution: recognition, the IR's passes and every aggregation against the paper's equations (torch and
onnxruntime), over kernels 3/5/7, strides 1/2, dilations, group sizes and odd sizes."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from involution_reference import involution as reference
from torch import nn

from rfdeploy.backends.onnx_export import export_onnx, op_counts
from rfdeploy.compiler.aggregations import AGGREGATIONS
from rfdeploy.compiler.involution_ir import from_involution, to_module
from rfdeploy.compiler.passes.choose_aggregation import CANDIDATES, choose_aggregation
from rfdeploy.compiler.passes.fold_kernel_batchnorm import fold_kernel_batchnorm
from rfdeploy.compiler.pipeline import lower_involution
from rfdeploy.loader.involution import involution_layers, involution_parts
from rfdeploy.models.rednet import Involution


def built(channels=32, kernel=7, stride=1, dilation=1, group_channels=16, seed=0) -> Involution:
    """An involution with random weights and BatchNorm statistics far from the identity."""
    torch.manual_seed(seed)
    module = Involution(channels, kernel, stride, dilation, group_channels)
    bn = module.conv1.bn
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return module.eval()


def parts(module: nn.Module):
    found = involution_parts(module)
    assert found is not None
    return found


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= 1e-5 * max(scale, 1.0)


@st.composite
def involutions(draw):
    kernel = draw(st.sampled_from([3, 5, 7]))
    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 1, 2]))
    group_channels, groups = draw(st.sampled_from([(16, 1), (16, 2), (4, 3), (1, 8), (8, 4)]))
    # the reference itself needs the pooled kernel and the unfolded input to have the same size: stride 2 takes
    # even sizes (an odd one is refused by both, below)
    size = draw(st.integers(3, 15).map(lambda n: n if stride == 1 else 2 * (n // 2 + 1)))
    width = draw(st.integers(3, 15).map(lambda n: n if stride == 1 else 2 * (n // 2 + 1)))
    module = built(group_channels * groups, kernel, stride, dilation, group_channels, draw(st.integers(0, 2**16)))
    x = torch.randn(draw(st.sampled_from([1, 2])), group_channels * groups, size, width)
    return module, x


@given(involutions())
def test_the_zoo_module_is_the_papers_involution(case):
    module, x = case
    with torch.no_grad():
        close(module(x), reference(x, module))


@given(involutions(), st.sampled_from([*AGGREGATIONS, "auto"]))
def test_every_pass_and_aggregation_keeps_the_output(case, aggregation):
    module, x = case
    with torch.no_grad():
        expected = reference(x, module)

        def check(step, before, after):
            close(to_module(after)(x), expected)

        lowered = lower_involution(from_involution("inv", parts(module)), aggregation, after_each=check)
        assert lowered.reduce_norm is None  # folded
        assert lowered.lowering in (AGGREGATIONS if aggregation == "auto" else (aggregation,))


def test_odd_sizes_at_stride_2_are_refused_by_the_reference_and_the_lowering():
    module, x = built(32, 7, 2), torch.randn(1, 32, 9, 9)
    with pytest.raises((RuntimeError, ValueError)):
        reference(x, module)
    with pytest.raises(RuntimeError):
        module(x)
    for aggregation in AGGREGATIONS:
        with pytest.raises(RuntimeError):
            to_module(from_involution("inv", parts(module)).changed(lowering=aggregation))(x)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("stride", [1, 2])
def test_each_aggregation_in_onnxruntime_at_two_sizes_of_one_dynamic_graph(aggregation, stride):
    module = built(48, 7, stride, group_channels=16)
    lowered = to_module(lower_involution(from_involution("inv", parts(module)), aggregation))
    onnx_model = export_onnx(lowered, [torch.randn(1, 48, 14, 14)], dynamic_shape=True)
    assert "Gather" not in op_counts(onnx_model) or aggregation == "unfold"
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 48, 14, 14), (2, 48, 10, 6) if stride == 2 else (2, 48, 9, 11)]:
        x = torch.randn(shape)
        (out,) = session.run(None, {"input": x.numpy()})
        close(torch.from_numpy(out), reference(x, module).detach())


def test_fold_kernel_batchnorm_removes_the_norm_and_keeps_the_kernel():
    module, x = built(32, 3), torch.randn(2, 32, 8, 8)
    ir = from_involution("inv", parts(module)).changed(lowering="unfold")
    folded = fold_kernel_batchnorm(ir)
    assert ir.reduce_norm is not None and folded.reduce_norm is None and folded.reduce_bias is not None
    with torch.no_grad():
        close(to_module(folded)(x), reference(x, module))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in to_module(folded).modules())


def test_the_cost_model_says_why_and_forced_choices_are_kept():
    ir = from_involution("inv", parts(built(64, 7)))
    auto = choose_aggregation(ir, "auto", 56 * 56)
    assert auto.lowering in CANDIDATES and "cost model at 3136 output positions" in auto.notes[-1]
    assert choose_aggregation(ir, "shifts").lowering == "shifts"
    with pytest.raises(ValueError, match="unknown aggregation"):
        choose_aggregation(ir, "im2col")


def test_recognised_with_mmcvs_own_conv_module():
    from mmcv.cnn import ConvModule

    module = built(32, 7, 2)
    mmcv_module = built(32, 7, 2)
    mmcv_module.conv1 = ConvModule(32, 8, 1, norm_cfg={"type": "BN"}, act_cfg={"type": "ReLU"})
    mmcv_module.conv2 = ConvModule(8, 49 * 2, 1, norm_cfg=None, act_cfg=None)
    mmcv_module.load_state_dict(module.state_dict())
    mmcv_module.eval()
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        lowered = to_module(lower_involution(from_involution("inv", parts(mmcv_module)), "taps"))
        close(lowered(x), reference(x, module))


def test_what_differs_from_an_involution_is_left_alone():
    other_unfold = built(32, 7)
    other_unfold.unfold = nn.Unfold(7, 1, 2, 1)
    other_norm = built(32, 7)
    other_norm.conv1.bn = nn.GroupNorm(2, 8)
    other_act = built(32, 7)
    other_act.conv1.activate = nn.GELU()
    for module in (other_unfold, other_norm, other_act, nn.Unfold(3)):
        assert involution_parts(module) is None
    model = nn.Sequential(built(32, 3), nn.ReLU(), other_act)
    assert [name for name, _ in involution_layers(model)] == ["0"]


def test_lowered_graphs_are_plain_onnx_without_gathers():
    module = built(32, 7)
    for aggregation in CANDIDATES:
        lowered = to_module(lower_involution(from_involution("inv", parts(module)), aggregation))
        ops = op_counts(export_onnx(lowered, [torch.randn(1, 32, 10, 10)]))
        assert "Gather" not in ops, (aggregation, ops)
