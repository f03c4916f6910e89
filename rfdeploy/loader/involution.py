"""Involutions in a model, recognised by the attributes their forward reads (no involution library is imported).

d-li14/involution's ``involution`` (mmcls, mmdet, mmseg) and the zoo's ``Involution`` hold ``kernel_size``,
``stride``, ``channels``, ``groups``, ``group_channels``, an ``nn.Unfold`` named ``unfold`` that takes the
``k x k`` neighbourhoods, ``avgpool`` when strided, and two mmcv ``ConvModule``s: ``conv1`` (1x1 reduce, BN,
ReLU) and ``conv2`` (1x1 span to ``k*k*groups`` kernel values). A module that differs in any of these (other
unfold settings, another norm or activation) is not taken for one: it stays as it is, exported as written.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class InvolutionParts:
    channels: int
    kernel_size: int
    stride: int
    dilation: int
    groups: int
    reduce: nn.Conv2d
    reduce_norm: nn.BatchNorm2d | None
    reduce_relu: bool
    span: nn.Conv2d

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel_size - 1) // 2


def _ints(module: nn.Module, *names: str) -> bool:
    """Each attribute an int (``dilation`` may be missing: d-li14's mmcls class has none, meaning 1)."""
    return all(isinstance(getattr(module, name, 1 if name == "dilation" else None), int) for name in names)


def _conv_module(module: object) -> tuple[nn.Conv2d, nn.BatchNorm2d | None, bool] | None:
    """``(conv, norm, relu)`` of an mmcv ``ConvModule`` with a plain 1x1 conv, order conv-norm-act."""
    conv = getattr(module, "conv", None)
    if not isinstance(module, nn.Module) or type(conv) is not nn.Conv2d:
        return None
    if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((1, 1), (1, 1), (0, 0), (1, 1), 1):
        return None
    if tuple(getattr(module, "order", ("conv", "norm", "act"))) != ("conv", "norm", "act"):
        return None
    norm = getattr(module, str(getattr(module, "norm_name", None)), None) if getattr(module, "with_norm", False) else None
    if getattr(module, "with_norm", False) and type(norm) is not nn.BatchNorm2d:
        return None
    relu = bool(getattr(module, "with_activation", False))
    if relu and type(getattr(module, "activate", None)) is not nn.ReLU:
        return None
    return conv, norm, relu


def involution_parts(module: nn.Module) -> InvolutionParts | None:
    """The parts of an involution, or None when ``module`` is not one this module knows."""
    unfold = getattr(module, "unfold", None)
    if not isinstance(unfold, nn.Unfold) or not _ints(module, "kernel_size", "stride", "channels", "groups",
                                                      "group_channels", "dilation"):
        return None
    k, stride, dilation, groups, channels, group_channels = (
        int(getattr(module, name, 1)) for name in ("kernel_size", "stride", "dilation", "groups", "channels",
                                                   "group_channels"))
    if channels != groups * group_channels or k % 2 == 0:
        return None
    if (unfold.kernel_size, unfold.dilation, unfold.padding, unfold.stride) != (k, dilation, dilation * (k - 1) // 2,
                                                                                 stride):
        return None
    pool = getattr(module, "avgpool", None)
    if stride > 1 and not (type(pool) is nn.AvgPool2d and (pool.kernel_size, pool.stride, pool.padding) ==
                           (stride, stride, 0) and not pool.ceil_mode):
        return None
    reduce, span = _conv_module(getattr(module, "conv1", None)), _conv_module(getattr(module, "conv2", None))
    if reduce is None or span is None or span[1] is not None or span[2]:
        return None
    if reduce[0].in_channels != channels or span[0].out_channels != k * k * groups:
        return None
    return InvolutionParts(channels, k, stride, dilation, groups, reduce[0], reduce[1], reduce[2], span[0])


def is_involution(module: nn.Module) -> bool:
    return involution_parts(module) is not None


def involution_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every involution in ``model``, outermost first."""
    return [(name, module) for name, module in model.named_modules() if name and is_involution(module)]
