"""Shapes as the CLI writes them: ``1,3,224,224``, several separated by spaces."""

from __future__ import annotations

from collections.abc import Sequence


def shape_text(shape: Sequence[int]) -> str:
    return ",".join(map(str, shape))


def shapes_text(shapes: Sequence[Sequence[int]]) -> str:
    return " ".join(map(shape_text, shapes))
