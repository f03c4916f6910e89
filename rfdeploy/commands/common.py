"""Arguments and printing shared by the commands that load a searched model."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console

from rfdeploy.errors import RFDeployError

UNBOUNDED_WIDTH = 10_000


def human_console() -> Console:
    """Human output, on stderr (``--json`` goes to stdout). Outside a terminal (a log, a pipe) there is no
    width to fit: lines and tables come out whole, never wrapped or cut at 80 columns."""
    if Console(stderr=True).is_terminal:
        return Console(stderr=True)
    return Console(stderr=True, soft_wrap=True, width=UNBOUNDED_WIDTH)


console = human_console()


def number(kind: type = float, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argument type: a finite ``kind`` (int or float) within ``[low, high]``."""
    limits = ([f">= {low}"] if low is not None else []) + ([f"<= {high}"] if high is not None else [])
    what = " ".join(["an integer" if kind is int else "a finite number", " and ".join(limits)]).strip()

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value

    return parse


TOLERANCE = number(float, low=0)
SEED = number(int, low=0, high=2**32 - 1)  # numpy's seed range
COUNT = number(int, low=1)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,3,224,224") from None
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,3,224,224 (N,C,H[,W], all >= 1)")
    return shape


MODEL_HELP = ("zoo name (see 'rfdeploy models') or package.module:callable returning the plain nn.Module "
              "(default: recognised from the checkpoint when it holds a zoo architecture)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--ckpt", help="searched checkpoint: mmengine .pth, bare state dict, or .safetensors "
                                       "(default: none, and a zoo model's weights are random)")
    parser.add_argument("--structure", help="structure JSON from the search: mmcv RFSearchHook, research, or G2L "
                                            "(default: none; RFConv2d checkpoints need none)")
    parser.add_argument("--input-shape", action="append", type=parse_shape, dest="input_shapes", metavar="N,C,H[,W]",
                        help="input shape; repeat for several inputs (default: the zoo model's)")


@contextmanager
def status(message: str):
    """A spinner for a long step; yields a callback that updates its text."""
    with console.status(message) as spinner:
        yield lambda text: spinner.update(f"{text}...")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RFDeployError(message)


def warn(messages: list[str]) -> None:
    """Each warning on one line of stderr, plain text (no markup, no wrapping), whatever else is printed."""
    for message in messages:
        print(f"rfdeploy: warning: {message}", file=sys.stderr)
