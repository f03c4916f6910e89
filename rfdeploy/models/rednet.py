"""RedNet (Li et al., "Involution", CVPR 2021) as d-li14/involution's mmcls / mmdet ``RedNet`` backbone, under its
names: the Bottleneck's 3x3 ``conv2`` is a 7x7 involution, and the stem's middle conv a 3x3 one (``stem.1``).

An involution generates, at every output position, one ``k x k`` kernel per group of 16 channels from the input
itself (``conv1``: a 1x1 reduce with BN and ReLU; ``conv2``: a 1x1 span to ``k*k*groups`` channels; both mmcv
``ConvModule``s, after a ``stride x stride`` average pool when strided), and sums the ``k x k`` neighbourhood of
each channel weighted by its group's kernel. ``Involution.forward`` is the reference code, ``nn.Unfold`` included.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rfdeploy.models import register
from rfdeploy.models.blocks import Bottleneck, make_blocks
from rfdeploy.models.resnet import ResNet, randomize_weights


class ConvModule(nn.Module):
    """mmcv ``ConvModule`` (order conv, norm, act): ``conv``, ``bn`` and ``activate`` as mmcv names them; the conv
    has a bias only without a norm (mmcv's ``bias='auto'``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not norm)
        self.with_norm, self.with_activation = norm, act
        self.norm_name = "bn" if norm else None
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        return self.activate(x) if self.with_activation else x


class Involution(nn.Module):
    """d-li14's ``involution(channels, kernel_size, stride)`` (mmdet's adds ``dilation``), its forward verbatim
    in effect: ``out[c, p] = sum_t K[g(c), t, p] * x[c, p*stride + t*dilation - pad]``."""

    def __init__(self, channels: int, kernel_size: int, stride: int, dilation: int = 1, group_channels: int = 16,
                 reduction_ratio: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.channels = channels
        self.group_channels = group_channels
        self.groups = channels // self.group_channels
        self.conv1 = ConvModule(channels, channels // reduction_ratio, 1)
        self.conv2 = ConvModule(channels // reduction_ratio, kernel_size**2 * self.groups, 1, norm=False, act=False)
        if stride > 1:
            self.avgpool = nn.AvgPool2d(stride, stride)
        self.unfold = nn.Unfold(kernel_size, dilation, dilation * (kernel_size - 1) // 2, stride)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size**2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size**2, h, w)
        return (weight * out).sum(dim=3).view(b, self.channels, h, w)


class RedBottleneck(Bottleneck):
    """mmcls ``Bottleneck`` of RedNet: mmdet's Bottleneck with a 7x7 involution (carrying the stride) as ``conv2``."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__(in_channels, channels, stride, downsample)
        self.conv2 = Involution(channels, 7, stride)  # type: ignore[assignment]


class RedNet(ResNet):
    """Stem ``stem.0..stem.4`` (3x3/2 ConvModule, 3x3 involution, BN, ReLU, 3x3 ConvModule), max-pool, four
    stages of ``RedBottleneck``; returns every stage's output."""

    stage_blocks: ClassVar[dict[int, tuple[int, ...]]] = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}

    def _make_stem(self, in_channels: int, stem_channels: int) -> None:
        half = stem_channels // 2
        self.stem = nn.Sequential(
            ConvModule(in_channels, half, 3, stride=2, padding=1),
            Involution(half, 3, 1),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            ConvModule(half, stem_channels, 3, padding=1),
        )

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def make_res_layer(self, inplanes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        return make_blocks(RedBottleneck, inplanes, planes, num_blocks, stride)


def randomize_rednet(model: nn.Module) -> nn.Module:
    """Random weights that keep activations sane: ``randomize_weights``, with every involution's span conv
    scaled down.

    An involution multiplies its input by kernels computed from it: with kaiming-scaled span convs its output
    grows with the square of its input, block after block. Each span conv is drawn so that a position's
    kernel taps have a standard deviation near ``1/k`` (the sum over ``k*k`` taps then keeps the input's
    scale).
    """
    return randomize_weights(model, bias_std=0.02, rescale=_scale_span)


@torch.no_grad()
def _scale_span(module: nn.Module) -> None:
    if isinstance(module, Involution):
        span = module.conv2.conv
        span.weight.normal_(0.0, 1.0 / (module.kernel_size * span.in_channels**0.5))


@register(input_shape=(1, 3, 224, 224), description="RedNet-26 (involution), d-li14/involution mmcls names")
def rednet26() -> nn.Module:
    return randomize_rednet(RedNet(depth=26))


@register(input_shape=(1, 3, 224, 224), description="RedNet-38 (involution), d-li14/involution mmcls names")
def rednet38() -> nn.Module:
    return randomize_rednet(RedNet(depth=38))


@register(input_shape=(1, 3, 224, 224), description="RedNet-50 (involution), d-li14/involution mmcls names")
def rednet50() -> nn.Module:
    return randomize_rednet(RedNet(depth=50))
