"""MS-TCN (Farha & Gall, CVPR 2019) as G2L searches it, under the original module names.

G2L (Gao et al., CVPR 2021; github.com/ShangHua-Gao/RFNext, ``model.py`` / ``model_global.py``) uses the
MS-TCN model unchanged and only searches the dilation of every ``conv_dilated``: the sole Conv1d with a
kernel larger than 1. Its structure files name those convs as ``named_modules()`` of the bare
``MultiStageModel`` does: ``stage1.layers.{i}.conv_dilated`` and ``stages.{s}.layers.{i}.conv_dilated``.

Stage 1 maps frame features to class logits; every later stage refines the softmax of the previous
stage's logits. All stages' logits are returned, stacked along a new leading dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdeploy.models import register


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # the original always multiplies by mask[:, 0:1, :]; at inference the mask is all ones
    return x if mask is None else x * mask[:, 0:1, :]


class DilatedResidualLayer(nn.Module):
    """Dilated 3-tap conv -> ReLU -> 1x1 conv -> dropout, plus the input."""

    def __init__(self, dilation: int, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_dilated = nn.Conv1d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(out_channels, out_channels, 1)
        self.dropout = nn.Dropout()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = F.relu(self.conv_dilated(x))
        out = self.dropout(self.conv_1x1(out))
        return _masked(x + out, mask)


class SingleStageModel(nn.Module):
    """1x1 conv in, a stack of dilated residual layers, 1x1 conv out to class logits."""

    def __init__(self, num_layers: int, num_f_maps: int, dim: int, num_classes: int,
                 dilations: Sequence[int] | None = None):
        super().__init__()
        dilations = [2 ** i for i in range(num_layers)] if dilations is None else list(dilations)
        if len(dilations) != num_layers:
            raise ValueError(f"{len(dilations)} dilations for {num_layers} layers")
        self.conv_1x1 = nn.Conv1d(dim, num_f_maps, 1)
        self.layers = nn.ModuleList(DilatedResidualLayer(d, num_f_maps, num_f_maps) for d in dilations)
        self.conv_out = nn.Conv1d(num_f_maps, num_classes, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv_1x1(x)
        for layer in self.layers:
            out = layer(out, mask)
        return _masked(self.conv_out(out), mask)


class MultiStageModel(nn.Module):
    """``num_stages`` single-stage TCNs in a row; returns ``(num_stages, N, num_classes, T)`` logits.

    ``dilations`` (optional, ``num_stages * num_layers`` values, stage-major) gives every layer its own
    dilation, as G2L's global search does; by default layer ``i`` of each stage has dilation ``2 ** i``.
    """

    def __init__(self, num_stages: int = 4, num_layers: int = 10, num_f_maps: int = 64, dim: int = 2048,
                 num_classes: int = 48, dilations: Sequence[int] | None = None):
        super().__init__()
        if dilations is not None and len(dilations) != num_stages * num_layers:
            raise ValueError(f"{len(dilations)} dilations for {num_stages} stages of {num_layers} layers")

        def stage_dilations(s: int) -> Sequence[int] | None:
            return None if dilations is None else dilations[s * num_layers:(s + 1) * num_layers]

        self.stage1 = SingleStageModel(num_layers, num_f_maps, dim, num_classes, stage_dilations(0))
        self.stages = nn.ModuleList(
            SingleStageModel(num_layers, num_f_maps, num_classes, num_classes, stage_dilations(s))
            for s in range(1, num_stages)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.stage1(x, mask)
        outputs = [out]
        for stage in self.stages:
            out = stage(_masked(F.softmax(out, dim=1), mask), mask)
            outputs.append(out)
        return torch.stack(outputs, dim=0)


@register(input_shape=(1, 2048, 1000), description="MS-TCN as searched by G2L", component="")
def mstcn() -> nn.Module:
    """Breakfast settings (48 classes, I3D features): G2L's main.py defaults for the model."""
    return MultiStageModel(num_stages=4, num_layers=10, num_f_maps=64, dim=2048, num_classes=48)
