"""The optimization profile: per engine input, the min / opt / max shapes it accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from rfdeploy.backends.onnx_export import graph_inputs, value_dims
from rfdeploy.errors import RFDeployError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NamedShape:
    """One ``--min-shape`` / ``--opt-shape`` / ``--max-shape`` value: ``[NAME:]N,C,H,W`` (or ``NxCxHxW``)."""

    name: str | None
    shape: Shape


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape


def parse_named_shape(text: str) -> NamedShape:
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(part) for part in re.split(r"[x,]", dims.strip()))
    except ValueError:
        raise RFDeployError(f"'{text}' is not a shape like input:1x3x224x224 or 1,3,224,224") from None
    if any(n < 1 for n in shape):
        raise RFDeployError(f"'{text}': every dimension of a profile shape must be >= 1")
    return NamedShape(name.strip() or None, shape)


def onnx_inputs(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Each graph input's dims: an int where static, the dim's name (or '?') where dynamic."""
    return {value.name: tuple("?" if dim is None else dim for dim in value_dims(value)) for value in graph_inputs(model)}


def _pick(given: list[NamedShape], name: str, only: bool, flag: str) -> Shape | None:
    matches = [g.shape for g in given if g.name == name or (g.name is None and only)]
    if len(matches) > 1:
        raise RFDeployError(f"{flag} given twice for input '{name}'")
    return matches[0] if matches else None


def _check_fits(name: str, dims: tuple[int | str, ...], shape: Shape, flag: str) -> None:
    if len(shape) != len(dims):
        raise RFDeployError(f"{flag} for input '{name}' has {len(shape)} dims, the model's input has {len(dims)}")
    for index, (dim, size) in enumerate(zip(dims, shape)):
        if isinstance(dim, int) and dim != size:
            hint = " (export with --dynamic-batch for a range of batch sizes)" if index == 0 else ""
            raise RFDeployError(f"{flag} for input '{name}': dim {index} is fixed at {dim} in the model, "
                                f"not {size}{hint}")


def resolve_profile(inputs: dict[str, tuple[int | str, ...]], mins: list[NamedShape], opts: list[NamedShape],
                    maxs: list[NamedShape]) -> list[InputProfile]:
    """One profile entry per input; ``--opt-shape`` alone fixes it, min and max default to opt.

    Static inputs need no flags. A shape without ``NAME:`` applies when the model has one input.
    """
    only = len(inputs) == 1
    names = set(inputs)
    for given in (*mins, *opts, *maxs):
        if given.name is not None and given.name not in names:
            raise RFDeployError(f"profile shape names input '{given.name}'; the model's inputs are "
                                f"{', '.join(sorted(names))}")
        if given.name is None and not only:
            raise RFDeployError(f"the model has {len(names)} inputs: write profile shapes as NAME:DIMS")
    profiles = []
    for name, dims in inputs.items():
        opt = _pick(opts, name, only, "--opt-shape")
        low, high = _pick(mins, name, only, "--min-shape"), _pick(maxs, name, only, "--max-shape")
        if opt is None:
            if not all(isinstance(d, int) for d in dims):
                raise RFDeployError(f"input '{name}' has dynamic dims {list(dims)}: give --opt-shape "
                                    f"(and --min-shape/--max-shape for a range)")
            opt = tuple(int(d) for d in dims)
        low, high = low or opt, high or opt
        for flag, shape in (("--min-shape", low), ("--opt-shape", opt), ("--max-shape", high)):
            _check_fits(name, dims, shape, flag)
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise RFDeployError(f"input '{name}': need min <= opt <= max in every dim, got "
                                f"{list(low)} / {list(opt)} / {list(high)}")
        profiles.append(InputProfile(name, low, opt, high))
    return profiles
