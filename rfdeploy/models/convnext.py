"""ConvNeXt (Liu et al., "A ConvNet for the 2020s"), as mmpretrain's ``ConvNeXt`` builds it.

Module and parameter names follow ``mmpretrain/models/backbones/convnext.py`` so that an mmpretrain /
mmdet checkpoint and an RF-Next structure file (``module.backbone.stages.2.6.depthwise_conv``) apply as is.
The zoo entry is the detector backbone of mmdet's ConvNeXt-T Cascade Mask R-CNN config: all four stages
out, each through its own ``norm{i}``, and ``layer_scale_init_value=1.0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdeploy.models import register
from rfdeploy.models.blocks import transformer_init


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (mmpretrain's ``LN2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> pointwise expand -> GELU -> pointwise project, scaled by gamma.

    The pointwise convs are ``nn.Linear`` on channels-last tensors (mmpretrain's ``linear_pw_conv=True``).
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, layer_scale_init_value: float = 1e-6):
        super().__init__()
        hidden = int(mlp_ratio * channels)
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pointwise_conv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.pointwise_conv2 = nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.depthwise_conv(x)
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
        x = self.pointwise_conv2(self.act(self.pointwise_conv1(self.norm(x))))
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return shortcut + x * self.gamma.view(1, -1, 1, 1)


class ConvNeXt(nn.Module):
    """Patchify stem, then four stages of ConvNeXt blocks with LayerNorm + 2x2 stride-2 conv between them.

    ``downsample_layers[i]`` runs before ``stages[i]`` (index 0 is the stem); ``norm{i}`` normalises the
    output of every stage in ``out_indices``.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        channels: Sequence[int] = (96, 192, 384, 768),
        in_channels: int = 3,
        stem_patch_size: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init_value: float = 1e-6,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ):
        super().__init__()
        assert len(depths) == len(channels)
        self.out_indices = tuple(out_indices)

        stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel_size=stem_patch_size, stride=stem_patch_size),
            LayerNorm2d(channels[0], eps=1e-6),
        )
        self.downsample_layers = nn.ModuleList([stem])
        self.stages = nn.ModuleList()
        for i, (depth, width) in enumerate(zip(depths, channels)):
            if i > 0:
                self.downsample_layers.append(
                    nn.Sequential(
                        LayerNorm2d(channels[i - 1], eps=1e-6),
                        nn.Conv2d(channels[i - 1], width, kernel_size=2, stride=2),
                    )
                )
            self.stages.append(
                nn.Sequential(
                    *[ConvNeXtBlock(width, mlp_ratio, layer_scale_init_value) for _ in range(depth)]
                )
            )
            if i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(width, eps=1e-6))

        self.apply(transformer_init)  # mmpretrain's default init_cfg

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = stage(downsample(x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return tuple(outs)


@register(input_shape=(1, 3, 224, 224), description="mmpretrain ConvNeXt arch tiny")
def convnext_tiny() -> nn.Module:
    # mmdet's ConvNeXt-T detector configs set layer_scale_init_value=1.0 (not mmpretrain's 1e-6), which
    # also keeps every depthwise conv visible in the output of a randomly initialised model.
    return ConvNeXt(depths=(3, 3, 9, 3), channels=(96, 192, 384, 768), layer_scale_init_value=1.0)
