"""ResNet as mmdet's ``ResNet`` backbone (style ``pytorch``), under mmdet's module names.

The stride of a downsampling Bottleneck sits in its 3x3 ``conv2``; the backbone returns the outputs of all
four stages (strides 4, 8, 16, 32), as a detector's neck consumes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from rfdeploy.models import register
from rfdeploy.models.blocks import Bottleneck, make_blocks


class ResNet(nn.Module):
    """Stem (7x7/2 conv, max-pool/2) then four stages ``layer1..layer4``; returns every stage's output."""

    stage_blocks: ClassVar[dict[int, tuple[int, ...]]] = {
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
    }
    expansion = Bottleneck.expansion

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        strides: tuple[int, ...] = (1, 2, 2, 2),
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
    ):
        super().__init__()
        if depth not in self.stage_blocks:
            raise ValueError(f"invalid depth {depth} for {type(self).__name__}")
        self.base_channels = base_channels
        self.out_indices = tuple(out_indices)
        self._make_stem(in_channels, stem_channels)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = stem_channels
        self.res_layers: list[str] = []
        for i, (num_blocks, stride) in enumerate(zip(self.stage_blocks[depth], strides)):
            planes = base_channels * 2**i
            self.add_module(f"layer{i + 1}", self.make_res_layer(inplanes, planes, num_blocks, stride))
            self.res_layers.append(f"layer{i + 1}")
            inplanes = planes * self.expansion

    def _make_stem(self, in_channels: int, stem_channels: int) -> None:
        self.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def make_res_layer(self, inplanes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        return make_blocks(Bottleneck, inplanes, planes, num_blocks, stride)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.maxpool(self.forward_stem(x))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


@torch.no_grad()
def randomize_weights(
    model: nn.Module,
    calibration_shape: tuple[int, ...] = (2, 3, 128, 128),
    residual_gain: tuple[float, float] = (0.1, 0.3),
    bias_std: float = 0.05,
    rescale: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Random weights, drawn from torch's global generator, as a stand-in for a trained checkpoint.

    Convs get kaiming-normal weights (biases normal with ``bias_std``), BatchNorms random affine parameters.
    ``rescale`` then sees every module, for a layer kaiming's scale does not suit. Each BatchNorm's running
    statistics are then measured on a random batch, as training would leave them: with statistics that do
    not match the activations, eval-mode scales compound multiplicatively over a hundred layers. The
    measurement runs in float64 so that the result does not depend on the thread count. The norm closing
    each residual branch is scaled to ``residual_gain`` so the residual stream grows slowly with depth.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                module.bias.normal_(0.0, bias_std)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
    for module in model.modules():
        if rescale is not None:
            rescale(module)
        last_norm = getattr(module, "last_norm", None)
        if isinstance(last_norm, nn.BatchNorm2d):
            last_norm.weight.uniform_(*residual_gain)
    if not next(model.parameters()).is_meta:  # shapes only (recognising a checkpoint): nothing to measure
        calibrate_batchnorm(model, torch.randn(calibration_shape, dtype=torch.float64))
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batch: Tensor) -> None:
    """Set every BatchNorm's running mean / variance to its statistics over ``batch``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    dtype = next(model.parameters()).dtype
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
    model.to(batch.dtype).train()
    model(batch)
    model.to(dtype).train(was_training)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.zero_()


@register(input_shape=(1, 3, 224, 224), description="mmdet ResNet depth 50, style pytorch")
def resnet50() -> nn.Module:
    return randomize_weights(ResNet(depth=50))
