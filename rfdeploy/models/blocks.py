"""Building blocks shared by the zoo's networks, as OpenMMLab defines them: the residual blocks (ResNet, Res2Net,
HRNet) and the transformers' initialisation (ConvNeXt, PVT)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)


class BasicBlock(nn.Module):
    """mmdet ``BasicBlock``: two 3x3 convs and an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """mmdet ``Bottleneck``, pytorch style: 1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, plus the
    shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        """The norm closing the residual branch (what mmdet's ``zero_init_residual`` zeroes)."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_blocks(block: type[BasicBlock | Bottleneck], in_channels: int, channels: int, num_blocks: int,
                stride: int = 1) -> nn.Sequential:
    """mmdet ``ResLayer`` (avg_down=False): the first block changes width / resolution and projects its
    shortcut when the shape changes; the rest keep it."""
    out_channels = channels * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    layers = [block(in_channels, channels, stride, downsample)]
    layers += [block(out_channels, channels) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


def truncated_normal(module: nn.Linear | nn.Conv2d) -> None:
    nn.init.trunc_normal_(module.weight, std=0.02)


def fan_out_normal(module: nn.Conv2d) -> None:
    """He-normal by fan-out, as mmcv's ``kaiming_init(mode="fan_out")`` for a conv."""
    fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
    nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))


def transformer_init(module: nn.Module, conv_init: Callable[[nn.Conv2d], None] = truncated_normal) -> None:
    """The OpenMMLab transformers' ``init_weights`` without a checkpoint: truncated normal (std 0.02) linears,
    unit LayerNorms, zero biases, convs by ``conv_init``. For ``nn.Module.apply``."""
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
        return
    if isinstance(module, nn.Linear):
        truncated_normal(module)
    elif isinstance(module, nn.Conv2d):
        conv_init(module)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)
