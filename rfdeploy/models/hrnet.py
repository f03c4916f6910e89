"""HRNet as mmdet builds it (``mmdet.models.backbones.HRNet``), under mmdet's module names.

The network keeps a high-resolution branch all the way through and adds a lower-resolution branch at each
stage; every ``HRModule`` runs its branches in parallel, then fuses them: branch ``j`` reaches branch ``i``
through a 1x1 conv + nearest upsampling when it is coarser (``j > i``), or through ``i - j`` stride-2 3x3
convs when it is finer (``j < i``).

Names follow mmdet exactly (``conv1``, ``bn1``, ``layer1.0.downsample.0``, ``transition1.1.0.0``,
``stage3.2.branches.1.3.conv2``, ``stage4.0.fuse_layers.3.0.2.0``, ...), so a real mmdet checkpoint's
backbone weights and an RF-Next structure file apply without renaming. The HRFPN neck is not part of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from rfdeploy.models import register
from rfdeploy.models.blocks import BasicBlock, Bottleneck, conv1x1, conv3x3, make_blocks

BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def conv_bn(in_channels: int, out_channels: int, stride: int, relu: bool) -> nn.Sequential:
    """3x3 conv + BN (+ ReLU) as a bare Sequential, so that the conv is named ``<...>.0``."""
    layers: list[nn.Module] = [conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def with_empty_slots(modules: Iterable[nn.Module | None]) -> nn.ModuleList:
    """A ModuleList that may hold ``None``, as mmdet's do, so that the entries after a gap keep their index."""
    slots = nn.ModuleList()
    for index, module in enumerate(modules):
        slots.add_module(str(index), module)
    return slots


class HRModule(nn.Module):
    """Parallel branches of residual blocks, then an all-to-all exchange between resolutions."""

    def __init__(self, block, num_blocks, channels, multiscale_output: bool = True):
        super().__init__()
        self.num_branches = len(channels)
        widths = [c * block.expansion for c in channels]
        self.branches = nn.ModuleList(
            make_blocks(block, widths[i], channels[i], num_blocks[i]) for i in range(self.num_branches)
        )
        self.fuse_layers = self._make_fuse_layers(widths, multiscale_output) if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=False)

    def _make_fuse_layers(self, widths: list[int], multiscale_output: bool) -> nn.ModuleList:
        num_outputs = self.num_branches if multiscale_output else 1
        return nn.ModuleList(
            with_empty_slots(self._fuse_path(widths, j, i) for j in range(self.num_branches))
            for i in range(num_outputs)
        )

    @staticmethod
    def _fuse_path(widths: list[int], j: int, i: int) -> nn.Module | None:
        """How branch ``j`` reaches branch ``i``: nothing for itself, else a resampling conv path."""
        if j == i:
            return None
        if j > i:  # coarser: match channels, then upsample
            return nn.Sequential(
                conv1x1(widths[j], widths[i]),
                nn.BatchNorm2d(widths[i]),
                nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
            )
        # finer: i - j stride-2 convs; only the last one changes channels, and it has no ReLU
        steps = i - j
        return nn.Sequential(*(
            conv_bn(widths[j], widths[i] if k == steps - 1 else widths[j], 2, relu=k < steps - 1)
            for k in range(steps)
        ))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, into_i in enumerate(cast(Iterable[nn.ModuleList], self.fuse_layers)):
            # summed in branch order, as mmdet does, so that outputs match it bit for bit
            terms = [x if j == i else path(x) for j, (path, x) in enumerate(zip(into_i, xs))]
            y = terms[0]
            for term in terms[1:]:
                y = y + term
            fused.append(self.relu(y))
        return fused


@dataclass(frozen=True)
class StageSpec:
    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


HRNETV2P_W18 = (
    StageSpec(1, "BOTTLENECK", (4,), (64,)),
    StageSpec(1, "BASIC", (4, 4), (18, 36)),
    StageSpec(4, "BASIC", (4, 4, 4), (18, 36, 72)),
    StageSpec(3, "BASIC", (4, 4, 4, 4), (18, 36, 72, 144)),
)


def make_transition(in_widths: list[int], out_widths: list[int]) -> nn.ModuleList:
    """From one stage's branches to the next's: adapt kept branches, grow new ones from the coarsest."""
    def transition(i: int, width: int) -> nn.Module | None:
        if i < len(in_widths):
            return conv_bn(in_widths[i], width, 1, relu=True) if width != in_widths[i] else None
        steps = i + 1 - len(in_widths)
        source = in_widths[-1]
        return nn.Sequential(*(
            conv_bn(source, width if k == steps - 1 else source, 2, relu=True) for k in range(steps)
        ))

    return with_empty_slots(transition(i, width) for i, width in enumerate(out_widths))


class HRNet(nn.Module):
    """mmdet ``HRNet``: a stride-4 stem, a Bottleneck ``layer1``, then three multi-branch stages.

    Returns the last stage's branch outputs, finest first (strides 4, 8, 16, 32 for four branches).
    """

    def __init__(self, stages: tuple[StageSpec, ...] = HRNETV2P_W18, in_channels: int = 3,
                 multiscale_output: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        stage1 = stages[0]
        block = BLOCKS[stage1.block]
        self.layer1 = make_blocks(block, 64, stage1.num_channels[0], stage1.num_blocks[0])
        widths = [stage1.num_channels[0] * block.expansion]

        for n, spec in enumerate(stages[1:], start=2):
            block = BLOCKS[spec.block]
            out_widths = [c * block.expansion for c in spec.num_channels]
            self.add_module(f"transition{n - 1}", make_transition(widths, out_widths))
            last_stage = n == len(stages)
            self.add_module(f"stage{n}", nn.Sequential(*(
                HRModule(block, spec.num_blocks, spec.num_channels,
                         multiscale_output=multiscale_output or not (last_stage and m == spec.num_modules - 1))
                for m in range(spec.num_modules)
            )))
            widths = out_widths
        self.num_stages = len(stages)
        self.out_channels = tuple(widths)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for n in range(2, self.num_stages + 1):
            transition = getattr(self, f"transition{n - 1}")
            # a kept branch continues from its own output; a new branch grows from the coarsest one
            sources = [ys[i] if i < len(ys) else ys[-1] for i in range(len(transition))]
            xs = [x if t is None else t(x) for t, x in zip(transition, sources)]
            ys = getattr(self, f"stage{n}")(xs)
        return ys


RESIDUAL_SCALE = 0.2  # found by trial: 1.0 gives ~1e9 outputs at 224x224, 0.2 gives O(1)


def init_weights(model: nn.Module) -> None:
    """Random but deployment-realistic weights: Kaiming convs, BNs with non-trivial stats and affine.

    With frozen (eval) BNs nothing renormalises the activations, and HRNet sums dozens of residual
    branches and fusion paths; the conv feeding each such sum is scaled down so that the outputs stay O(1)
    instead of growing with depth.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in [(module.weight, 0.5, 1.5), (module.bias, -0.1, 0.1),
                                      (module.running_mean, -0.1, 0.1), (module.running_var, 0.5, 1.5)]:
                nn.init.uniform_(cast(torch.Tensor, tensor), low, high)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BasicBlock):
                module.conv2.weight.mul_(RESIDUAL_SCALE)
            elif isinstance(module, Bottleneck):
                module.conv3.weight.mul_(RESIDUAL_SCALE)
            elif isinstance(module, HRModule) and module.fuse_layers is not None:
                for into_i in cast(Iterable[nn.ModuleList], module.fuse_layers):
                    for path in into_i.children():  # children() skips the empty slots
                        last_conv = [m for m in path.modules() if isinstance(m, nn.Conv2d)][-1]
                        last_conv.weight.mul_(RESIDUAL_SCALE)


@register(input_shape=(1, 3, 224, 224), description="mmdet HRNet, HRNetV2p-W18 extra")
def hrnet_w18() -> nn.Module:
    return HRNet(HRNETV2P_W18)
