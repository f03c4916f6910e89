"""What every backend gives: a ``Runner``, and outputs as a flat list of tensors.

A runner separates what is timed from what is not: ``load`` puts the inputs where the backend reads
them (device memory, bound buffers), ``run`` computes (the timed part), ``fetch`` brings the outputs
of the last ``run`` back to the host as numpy arrays. It carries the name reports show for it, and
``close`` (or leaving its ``with`` block) releases what it holds on the device at once, rather than
whenever the garbage collector gets to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from typing_extensions import Self  # a dependency of torch's

DEVICES = ("cpu", "cuda")


class Runner(ABC):
    name: str

    @abstractmethod
    def load(self, inputs: list[torch.Tensor]) -> None: ...

    @abstractmethod
    def run(self) -> None: ...

    @abstractmethod
    def fetch(self) -> list[np.ndarray]: ...

    def close(self) -> None:
        """Release sessions, engines and device buffers; the runner is not used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_once(runner: Runner, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    runner.load(inputs)
    runner.run()
    return runner.fetch()


def flat_outputs(outputs) -> list[torch.Tensor]:
    """A model's outputs (a tensor, or nested tuples / lists / dicts of them) as one flat list."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return [t for item in outputs for t in flat_outputs(item)]
