"""Res2Net as mmdet's ``Res2Net`` backbone (scales 4, base width 26, deep stem, avg-down), mmdet's names.

A Bottle2neck replaces the Bottleneck's single 3x3 conv by ``scales - 1`` narrower 3x3 convs over channel
splits, each split seeing the previous split's output as well: a hierarchy of receptive fields in one block.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rfdeploy.models import register
from rfdeploy.models.blocks import conv1x1, conv3x3
from rfdeploy.models.resnet import ResNet, randomize_weights


class Bottle2neck(nn.Module):
    """1x1 -> split into ``scales`` groups -> cascaded 3x3 convs on all but the last group -> concat -> 1x1.

    In the first block of a stage (``stage_type='stage'``) the groups do not cascade (each 3x3 conv sees
    only its own split), and when that block downsamples, the untouched last split is average-pooled to
    the new resolution. Note that mmdet's first block of ``layer1`` is a 'stage' block with stride 1: no
    cascade and no pool.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        scales: int = 4,
        base_width: int = 26,
        base_channels: int = 64,
        stage_type: str = "normal",
    ):
        super().__init__()
        if scales < 2:
            raise ValueError("Res2Net degenerates to ResNet when scales = 1")
        if stage_type not in ("normal", "stage"):
            raise ValueError(f"unknown stage_type '{stage_type}'")
        width = planes * base_width // base_channels  # mmdet: floor(planes * (base_width / base_channels))
        self.width = width
        self.scales = scales
        self.stage_type = stage_type

        self.conv1 = conv1x1(inplanes, width * scales)
        self.bn1 = nn.BatchNorm2d(width * scales)
        self.convs = nn.ModuleList(conv3x3(width, width, stride) for _ in range(scales - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        downsamples_splits = stage_type == "stage" and stride != 1
        self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if downsamples_splits else None
        self.conv3 = conv1x1(width * scales, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))

        splits = torch.split(out, self.width, dim=1)
        outs = []
        sp = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i > 0:
                sp = splits[i] if self.stage_type == "stage" else sp + splits[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        last = splits[-1]
        outs.append(last if self.pool is None else self.pool(last))
        out = torch.cat(outs, dim=1)

        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_res2_layer(
    inplanes: int, planes: int, num_blocks: int, stride: int, scales: int, base_width: int, base_channels: int
) -> nn.Sequential:
    """mmdet ``Res2Layer``: its shortcut always starts with an AvgPool2d (kernel = stride, so a no-op in
    ``layer1``), which puts the 1x1 conv at ``downsample.1`` and its BN at ``downsample.2``."""
    outplanes = planes * Bottle2neck.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
            conv1x1(inplanes, outplanes),
            nn.BatchNorm2d(outplanes),
        )
    widths = {"scales": scales, "base_width": base_width, "base_channels": base_channels}
    blocks = [Bottle2neck(inplanes, planes, stride, downsample, stage_type="stage", **widths)]  # type: ignore[arg-type]
    blocks += [Bottle2neck(outplanes, planes, **widths) for _ in range(1, num_blocks)]  # type: ignore[arg-type]
    return nn.Sequential(*blocks)


class Res2Net(ResNet):
    """ResNet with the deep stem (three 3x3 convs, ``stem.0..stem.8``) and Res2Layer stages."""

    expansion = Bottle2neck.expansion

    def __init__(self, depth: int = 50, scales: int = 4, base_width: int = 26, **kwargs):
        self.scales = scales
        self.base_width = base_width
        super().__init__(depth=depth, **kwargs)

    def _make_stem(self, in_channels: int, stem_channels: int) -> None:
        half = stem_channels // 2
        self.stem = nn.Sequential(
            conv3x3(in_channels, half, stride=2), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            conv3x3(half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            conv3x3(half, stem_channels), nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def make_res_layer(self, inplanes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        return make_res2_layer(
            inplanes, planes, num_blocks, stride, self.scales, self.base_width, self.base_channels
        )


@register(input_shape=(1, 3, 224, 224), description="mmdet Res2Net depth 50, 26w4s")
def res2net50() -> nn.Module:
    return randomize_weights(Res2Net(depth=50))


@register(input_shape=(1, 3, 224, 224), description="mmdet Res2Net depth 101, 26w4s")
def res2net101() -> nn.Module:
    return randomize_weights(Res2Net(depth=101))
