"""Hand-derived receptive fields through the traced graph: dilation, stride, pooling, joins, searched layers,
1-D models, global context, what the report says about each layer, and its errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfdeploy.analysis import analyze
from rfdeploy.errors import RFDeployError


class Chain(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def conv(k=3, stride=1, dilation=1, padding=None, channels=2, dims=2):
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    padding = dilation * (k - 1) // 2 if padding is None else padding
    return cls(channels, channels, k, stride, padding, dilation)


def rf_of(report, name):
    return next(layer.rf for layer in report.layers if layer.name == name)


def test_dilation_widens_the_kernel():
    # k_eff = d * (k - 1) + 1: 3x3 at d=2 spans 5; d=1,2,4 stacked: 1 + 2 + 4 + 8 = 15.
    assert analyze(Chain(conv(dilation=2)), (32, 32)).receptive_field == (5, 5)
    report = analyze(Chain(conv(), conv(dilation=2), conv(dilation=4)), (32, 32))
    assert [layer.rf for layer in report.layers] == [(3, 3), (7, 7), (15, 15)]
    assert report.layers[2].dilation == (4, 4)


def test_stride_multiplies_the_growth_of_later_layers():
    # 3x3/2: r=3, j=2; then 3x3: 3 + 2*2 = 7; then 3x3/2 at j=2: 11 (j=4); then 3x3: 11 + 2*4 = 19.
    report = analyze(Chain(conv(stride=2), conv(), conv(stride=2), conv()), (64, 64))
    assert [layer.rf[0] for layer in report.layers] == [3, 7, 11, 19]
    assert [layer.jump[0] for layer in report.layers] == [2, 2, 4, 4]
    assert [layer.input_rf[0] for layer in report.layers] == [1, 3, 7, 11]


def test_anisotropic_kernels_keep_each_dimension_apart():
    # (1x7) then (7x1): h grows only in the second, w only in the first: (7, 7) in the end, (1, 7) between.
    report = analyze(Chain(nn.Conv2d(2, 2, (1, 7), padding=(0, 3)), nn.Conv2d(2, 2, (7, 1), padding=(3, 0))),
                     (16, 40))
    assert [layer.rf for layer in report.layers] == [(1, 7), (7, 7)]


class FunctionalPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv()
        self.b = conv()
        self.c = conv()

    def forward(self, x):
        x = F.max_pool2d(self.a(x), 2)  # padding-free 2x2/2: 3 + 1*1 = 4, j=2
        x = self.b(x)  # 4 + 2*2 = 8
        x = F.avg_pool2d(x, kernel_size=3, stride=1)  # 8 + 2*2 = 12
        return self.c(x)  # 12 + 2*2 = 16


def test_padding_free_pooling_modules_and_functions():
    # conv 3 -> MaxPool2d(2): 3 + 1 = 4 (j=2) -> conv: 4 + 2*2 = 8 -> AvgPool2d(2): 8 + 2 = 10 (j=4).
    report = analyze(Chain(conv(), nn.MaxPool2d(2), conv(), nn.AvgPool2d(2)), (32, 32))
    assert [layer.rf[0] for layer in report.layers] == [3, 4, 8, 10]
    assert report.layers[1].op == "MaxPool2d" and report.layers[1].kernel == (2, 2)
    report = analyze(FunctionalPools(), (32, 32))
    assert [layer.rf[0] for layer in report.layers] == [3, 4, 8, 12, 16]
    assert [layer.op for layer in report.layers][1::2] == ["max_pool2d", "avg_pool2d"]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv()
        self.conv2 = conv()
        self.after = conv()

    def forward(self, x):
        return self.after(torch.relu(self.conv2(self.conv1(x))) + x)


def test_a_residual_join_sees_as_far_as_its_farthest_path():
    # conv1 3, conv2 5; the identity path sees 1; after the add: max(5, 1) = 5; `after`: 5 + 2 = 7.
    report = analyze(Residual(), (32, 32))
    assert rf_of(report, "after") == (7, 7)
    assert [layer.input_rf for layer in report.layers] == [(1, 1), (3, 3), (5, 5)]
    (join,) = report.joins
    assert join.op == "add" and set(join.inputs) == {"conv2", "input"} and join.rf == (5, 5)
    assert report.layers[-1].inputs == (join.name,)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.narrow = conv(k=1)
        self.wide = conv(k=5)
        self.pool = nn.MaxPool2d(3, 1, padding=1)
        self.head = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x):
        joined = torch.cat([self.narrow(x), self.wide(x), self.pool(x)], dim=1)
        return self.head(joined)


def test_a_concatenation_sees_as_far_as_its_widest_branch():
    # branches see 1, 5 and 3; the cat sees 5; the 3x3 head: 5 + 2 = 7.
    report = analyze(Inception(), (32, 32))
    assert rf_of(report, "head") == (7, 7) and rf_of(report, "head") == report.receptive_field
    (join,) = report.joins
    assert join.op == "cat" and join.rf == (5, 5)


class TwoHeads(nn.Module):
    """An FPN-like multi-output net: a fine output and a coarse one, upsampled back and fused."""

    def __init__(self):
        super().__init__()
        self.stem = conv()
        self.down = conv(stride=2)
        self.fine = conv()
        self.fuse = conv()

    def forward(self, x):
        stem = self.stem(x)  # 3 (j=1)
        coarse = self.down(stem)  # 3 + 2 = 5 (j=2)
        up = F.interpolate(coarse, scale_factor=2, mode="nearest")  # nearest: still 5, j=1
        fused = self.fuse(up + self.fine(stem))  # add: max(5, 5) = 5; 3x3: 5 + 2*1 = 7
        return coarse, fused


def test_multi_output_network_and_upsampling():
    report = analyze(TwoHeads(), (32, 32))
    assert rf_of(report, "down") == (5, 5) and rf_of(report, "fuse") == (7, 7)
    assert report.layers[-1].jump == (1, 1)
    assert report.receptive_field == (7, 7)


def test_searched_rates_override_the_module_dilation():
    # a searched 3x3 reaches as far as its widest branch: rates 1, 2, 3 -> 3 * 2 + 1 = 7; then 3x3: 9.
    model = Chain(conv(), conv())
    report = analyze(model, (32, 32), dilations={"layers.0": [(1, 1), (2, 2), (3, 3)]})
    first = report.layers[0]
    assert first.rf == (7, 7) and first.dilation == (3, 3) and first.rates == ((1, 1), (2, 2), (3, 3))
    assert report.layers[1].rf == (9, 9)
    # rates may differ per dim: the widest per dim is (2, 3) -> (5, 7)
    report = analyze(model, (32, 32), dilations={"layers.0": [(1, 3), (2, 1)]})
    assert report.layers[0].rf == (5, 7)


def test_searched_conv_modules_are_read_as_they_are():
    # rfdeploy's SearchedConv (what a checkpoint loads into) with rates 1 and 4: 4 * 2 + 1 = 9.
    from rfdeploy.loader.searched_conv import SearchedConv

    searched = SearchedConv(torch.ones(2, 2, 3, 3), None, torch.ones(2), [(1, 1), (4, 4)], [(1, 1), (4, 4)],
                            (1, 1), 1)
    report = analyze(Chain(conv(), searched), (32, 32))
    assert report.layers[1].name == "layers.1" and report.layers[1].rf == (11, 11)
    assert report.layers[1].rates == ((1, 1), (4, 4))


def test_mmcv_search_op_is_one_layer_with_all_its_branches():
    rfsearch = pytest.importorskip("mmcv.cnn.rfsearch.operator")
    config = {"num_branches": 3, "exp_rate": 0.5, "mmin": 1, "mmax": 24, "init_alphas": 0.01}
    op = rfsearch.Conv2dRFSearchOp(nn.Conv2d(2, 2, 3, padding=2, dilation=2), config, verbose=False)
    # centre 2, e = 0.5: rates 1, 2, 3 -> reaches 7
    report = analyze(Chain(op), (32, 32))
    (layer,) = report.layers
    assert layer.name == "layers.0" and layer.rates == ((1, 1), (2, 2), (3, 3)) and layer.rf == (7, 7)


class TemporalStage(nn.Module):
    """An MS-TCN single stage: 1x1 in, dilated residual layers at d = 1, 2, 4, 8, 1x1 out."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv1d(4, 2, 1)
        self.dilated = nn.ModuleList(nn.Conv1d(2, 2, 3, padding=d, dilation=d) for d in (1, 2, 4, 8))
        self.conv_out = nn.Conv1d(2, 3, 1)

    def forward(self, x, mask=None):
        x = self.conv_in(x)
        for layer in self.dilated:
            x = x + F.relu(layer(x))
        return self.conv_out(x)


def test_one_dimensional_temporal_model():
    # each 3-tap layer adds 2d: 3, 7, 15, 31.
    report = analyze(TemporalStage(), (12,))
    assert [rf_of(report, f"dilated.{i}") for i in range(4)] == [(3,), (7,), (15,), (31,)]
    assert report.receptive_field == (31,)
    # at T = 12: dilated.2's input sees 7 (productive) and it sees 15 > 12 (border); dilated.3's input
    # sees 15 > 12 and conv_out's 31: both unproductive.
    assert report.border_layer == "dilated.2"
    assert [layer.name for layer in report.unproductive] == ["dilated.3", "conv_out"]


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = conv()
        self.fc1 = nn.Conv2d(2, 1, 1)
        self.fc2 = nn.Conv2d(1, 2, 1)
        self.tail = conv()

    def forward(self, x):
        x = self.body(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.tail(x * gate)


def test_a_pooled_gate_adds_context_but_no_spatial_extent():
    # the gate is the same at every position: the product sees what `body` sees (3), `tail` 5.
    report = analyze(SqueezeExcite(), (32, 32))
    assert rf_of(report, "tail") == (5, 5)
    assert all(layer.is_global and layer.productive for layer in report.layers if layer.name.startswith("fc"))
    assert any("squeeze-excitation" in note for note in report.notes)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = conv(k=4, stride=4, padding=0)
        self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
        self.after = nn.Linear(2, 2)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, HW, C): positions kept apart
        mixed = self.attn(tokens, tokens, tokens)[0]
        return self.after(tokens + mixed)


def test_attention_sees_everything_and_token_layouts_are_followed():
    report = analyze(Attention(), (16, 16))
    assert report.receptive_field == (4, 4)
    assert rf_of(report, "embed") == (4, 4)
    assert next(layer for layer in report.layers if layer.name == "after").is_global


def test_flops_share_of_unproductive_layers():
    # At 4x4: a (3x3, 3->8) sees 3 <= 4; b (3x3, 8->8) gets 3 and sees 5 > 4: border;
    # c (1x1) gets 5 > 4: unproductive. FLOPs = 2 * out positions * out channels * in channels * k^2:
    # a 2*16*8*3*9 = 6912, b 2*16*8*8*9 = 18432, c 2*16*8*8*1 = 2048.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1))
    report = analyze(model, (4, 4))
    assert [layer.flops for layer in report.layers] == [6912, 18432, 2048]
    assert [layer.productive for layer in report.layers] == [True, True, False]
    assert report.border_layer == "1"
    assert report.unproductive_flops_share == pytest.approx(2048 / (6912 + 18432 + 2048))


def test_a_layer_is_unproductive_only_once_its_input_exceeds_every_dimension():
    # 3x3 then 5x5 then 3x3 at 12x4: RFs 3, 7, 9. The last one's input sees 7: more than 4 wide but not
    # more than 12 high, so it still adds context (vertically).
    report = analyze(Chain(conv(), conv(k=5), conv()), (12, 4))
    assert [layer.productive for layer in report.layers] == [True, True, True]
    assert report.border_layer is None


def test_json_report():
    report = analyze(Residual(), (4, 4))
    data = json.loads(json.dumps(report.to_json()))
    assert data["receptive_field"] == [7, 7]
    assert [(layer["name"], layer["rf"], layer["productive"]) for layer in data["layers"]] == [
        ("conv1", [3, 3], True), ("conv2", [5, 5], True), ("after", [7, 7], False)]
    assert data["border_layer"] == "conv2" and data["unproductive_layers"] == 1


class LoopsOverChannels(nn.Module):
    """fx cannot trace ``range`` over a traced size; torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = conv(k=5)
        self.head = conv()

    def forward(self, x):
        y = self.conv(x)
        parts = [y[:, i:i + 1] for i in range(y.shape[1])]
        return self.head(torch.cat(parts, dim=1))


def test_torch_export_is_the_fallback_and_keeps_module_names():
    report = analyze(LoopsOverChannels(), (16, 16))
    assert report.tracer == "torch.export"
    assert [(layer.name, layer.op, layer.rf) for layer in report.layers] == [
        ("conv", "Conv2d", (5, 5)), ("head", "Conv2d", (7, 7))]


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv()

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_an_untraceable_model_gives_a_one_line_error():
    with pytest.raises(RFDeployError, match="cannot trace DataDependent") as error:
        analyze(DataDependent(), (8, 8))
    assert "\n" not in str(error.value)


def test_an_input_too_small_to_run_at_any_doubling_is_an_error():
    # six 2x2 pools need 64 positions; 1, 2, 4, 8 and 16 all fail
    model = nn.Sequential(conv(), *[nn.MaxPool2d(2) for _ in range(6)])
    with pytest.raises(RFDeployError, match="fails on a 2-channel input of size 1x1"):
        analyze(model, (1, 1))


def test_searched_rates_that_do_not_fit_the_layer_are_an_error():
    with pytest.raises(RFDeployError, match="layer 'layers.0'"):
        analyze(Chain(conv()), (8, 8), dilations={"layers.0": [(1, 2, 3)]})
    report = analyze(Chain(conv()), (8, 8), dilations={"nowhere": [(2, 2)]})
    assert any("not in the model" in note for note in report.notes)


def test_unknown_modules_are_treated_as_pointwise_and_noted():
    report = analyze(Chain(conv(), nn.Unfold(kernel_size=1), ), (8, 8))
    assert report.receptive_field == (3, 3)
    assert any("Unfold" in note for note in report.notes)


def test_a_module_called_twice_is_listed_twice_and_training_mode_is_restored():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = conv()

        def forward(self, x):
            return self.shared(self.shared(x))

    model = Twice().train()
    report = analyze(model, (8, 8))
    assert [(layer.name, layer.rf) for layer in report.layers] == [("shared", (3, 3)), ("shared#2", (5, 5))]
    assert model.training


def test_the_report_section_for_other_commands_never_raises():
    from rfdeploy.analysis import receptive_field_report

    section = receptive_field_report(Residual(), (1, 2, 4, 4))
    assert section["receptive_field"] == [7, 7] and section["border_layer"] == "conv2"
    assert "cannot trace" in receptive_field_report(DataDependent(), (1, 2, 8, 8))["error"]
