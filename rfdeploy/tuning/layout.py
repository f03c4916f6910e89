"""The layout chosen by measurement: ``sink_transposes`` kept where it makes the graph faster on the target.

Running a channels-last stretch channels-first removes its transposes, and what that is worth depends
on the backend: on ConvNeXt-T (224x224, 2 threads, one ``bench`` run, docs/benchmarks.md) OpenVINO ran
the channels-first graph in 0.78x (bf16) and 0.89x (fp32) of the time, onnxruntime in 1.06x, its
matmuls on channels-last tensors being faster than 1x1 convs. So both graphs are timed on the backend
the export targets, and kept by ``measure.timing.decide``: channels-first only where it ran faster by more than
the spread of the rounds, else the graph as exported (the simpler: it is what the model's code says). The
report's ``layout`` says which, by which rule, with the timings.
"""

from __future__ import annotations

import onnx
import torch

from rfdeploy.compiler.pipeline import SINK_TRANSPOSES, graph_pass_report
from rfdeploy.measure.timing import Candidate, Tick, decide, opened_runners, timed_rounds
from rfdeploy.precision import precision_of

AS_EXPORTED = "as exported"
CHANNELS_FIRST = "channels-first"
SIMPLEST_FIRST = (AS_EXPORTED, CHANNELS_FIRST)


def choose_layout(model: onnx.ModelProto, backend: str, example: list[torch.Tensor], precision: str = "fp32",
                  device: str = "cpu", threads: int = 0, warmup: int = 3, iters: int = 10,
                  tick: Tick | None = None) -> tuple[onnx.ModelProto, dict]:
    """``model``, or its channels-first form where that ran clearly faster on ``backend`` at ``precision``; and
    the record of the choice."""
    channels_first, changed, note = SINK_TRANSPOSES.apply(model, "the ONNX graph")
    if not changed:
        return model, {"kept": AS_EXPORTED, "why": note, "backend": backend}
    if tick:
        tick(f"timing the graph as exported and channels-first on {backend}")
    candidates = {AS_EXPORTED: model, CHANNELS_FIRST: channels_first}
    timed = {name: Candidate(None, graph) for name, graph in candidates.items()}
    with opened_runners(timed, backend, example, device, threads, precision) as runners:
        decision = decide(timed_rounds(runners, example, warmup, iters, device), SIMPLEST_FIRST)
    stretches = graph_pass_report({SINK_TRANSPOSES.name: (changed, note)})[SINK_TRANSPOSES.name]
    record = {key: value for key, value in decision.to_json().items() if key != "snr_db"}
    return candidates[decision.kept], {**record, "backend": backend, "device": device, "precision": precision,
                                       "stretches": stretches}


def layout_target(tune: str | None, target: str | None, verify_backends: tuple[str, ...],
                  precision: str) -> tuple[str, str, str]:
    """Where an export's layout is timed: ``(backend, device, precision)``: the ``--tune`` backend where it
    runs ONNX, else the ``--target``, else the backend the ``--precision`` model is checked on, else onnxruntime
    on the CPU. int8 is timed in fp32: the layout is chosen before quantizing."""
    from rfdeploy.backends import backend as backend_entry
    from rfdeploy.tuning.tune import parse_target

    timed = precision_of(precision).timed_as

    def at(name: str, device: str) -> tuple[str, str, str]:
        return name, device, timed if timed in backend_entry(name).precisions else "fp32"

    if tune:
        name, device = parse_target(tune)
        if backend_entry(name).runs_onnx:
            return at(name, device)
    if target:
        return at(target, backend_entry(target).devices[0])
    if verify_backends:
        return verify_backends[0], "cpu", timed
    return "onnxruntime", "cpu", "fp32"
