"""Shared by the zoo tests: the published structure files and mmcv's rule for which convs it searches."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PUBLISHED = FIXTURES / "published-structures"  # a copy inside the project: a clone needs nothing beside it


def published(name: str) -> dict:
    return json.loads((PUBLISHED / name).read_text())


def mmcv_searchable(conv: nn.Module) -> bool:
    """mmcv ``RFSearchHook.wrap_model``'s test: a Conv2d with some odd kernel size > 1."""
    if not isinstance(conv, nn.Conv2d):
        return False
    kh, kw = conv.kernel_size
    return (kh > 1 and kh % 2 == 1) or (kw > 1 and kw % 2 == 1)


def searchable_names(model: nn.Module, skip_layer=(), fullname_prefix: str = "module.backbone.") -> set[str]:
    """Names of the convs mmcv's hook would search in ``model`` deployed as a detector's backbone."""
    return {
        name
        for name, module in model.named_modules()
        if mmcv_searchable(module) and not any(skip in fullname_prefix + name for skip in skip_layer)
    }


def component_entries(structure: dict, prefix: str = "module.backbone.") -> set[str]:
    return {key[len(prefix):] for key in structure["structure"] if key.startswith(prefix)}


class Detector(nn.Module):
    """A stand-in detector holding only ``backbone``: mmcv's hook then sees ``module.backbone.*`` names."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)
