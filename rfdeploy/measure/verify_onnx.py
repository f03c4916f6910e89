"""Proof of equality between two ONNX graphs: a rewritten graph against the graph it came from, in
onnxruntime-CPU on seeded random inputs (``verify``'s measures).

The whole graph where onnxruntime can run it. Where it cannot (a custom-domain node such as mmdeploy's
``TRTBatchedNMS``), each rewritten subgraph alone: cut out of both graphs from the searched conv's input
to its output, at the input's shape as ONNX shape inference gives it for the concrete graph inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import TensorProto

from rfdeploy.backends.base import run_once
from rfdeploy.backends.onnx_export import graph_inputs, value_dims
from rfdeploy.backends.onnxruntime_backend import OrtRunner
from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.onnx_graph import import_graph
from rfdeploy.measure.verify import InputSet, Reference, seeded_inputs, verify, verify_on
from rfdeploy.shapes import shape_text, shapes_text

BACKEND = "onnxruntime-cpu"
Shape = tuple[int, ...]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Each dim's size, or its name (``?`` when unnamed) where it is not fixed."""
    return ["?" if dim is None else dim for dim in value_dims(value)]


def input_shapes(model: onnx.ModelProto, given: list[Shape] | None, source: str) -> list[Shape]:
    """The concrete shapes to verify at: ``given`` (checked against the graph), else the graph's own."""
    inputs = graph_inputs(model)
    for value in inputs:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            raise RFDeployError(f"{source}: input '{value.name}' is {kind}; verification feeds float32 inputs only")
    if given:
        if len(given) != len(inputs):
            raise RFDeployError(f"{source} has {len(inputs)} input(s) ({', '.join(v.name for v in inputs)}), "
                                f"--input-shape was given {len(given)} time(s)")
        for value, shape in zip(inputs, given):
            _check_fits(value, shape, source)
        return [tuple(shape) for shape in given]
    shapes = []
    for value in inputs:
        dims = _dims(value)
        dynamic = [str(d) for d in dims if not isinstance(d, int)]
        if dynamic:
            raise RFDeployError(f"{source}: input '{value.name}' has dynamic dims ({', '.join(dynamic)}); "
                                f"give --input-shape to verify at a concrete shape")
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def _check_fits(value: onnx.ValueInfoProto, shape: Shape, source: str) -> None:
    dims = _dims(value)
    written = shape_text(shape)
    if len(dims) != len(shape):
        raise RFDeployError(f"{source}: input '{value.name}' has {len(dims)} dims, --input-shape {written} "
                            f"has {len(shape)}")
    for index, (dim, size) in enumerate(zip(dims, shape)):
        if isinstance(dim, int) and dim != size:
            raise RFDeployError(f"{source}: input '{value.name}' has dim {index} fixed at {dim}, "
                                f"--input-shape {written} gives {size}")


def _with_shapes(model: onnx.ModelProto, shapes: list[Shape]) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    values = {value.name: value for value in fixed.graph.input}
    for value, shape in zip(graph_inputs(model), shapes):
        dims = values[value.name].type.tensor_type.shape.dim
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
    return fixed


def subgraph(model: onnx.ModelProto, source: str, target: str, shape: Shape) -> onnx.ModelProto:
    """The part of ``model`` that computes tensor ``target`` from tensor ``source`` (of ``shape``)."""
    graph = import_graph(model)
    tensors = graph.tensors()
    start = tensors[source]
    assert isinstance(start, gs.Variable)
    start.dtype, start.shape = start.dtype or np.float32, list(shape)
    graph.inputs, graph.outputs = [start], [tensors[target]]
    graph.cleanup()
    return gs.export_onnx(graph, do_type_check=False)


def tensor_shapes(model: onnx.ModelProto, shapes: list[Shape]) -> dict[str, Shape]:
    """Every tensor's concrete shape that ONNX shape inference finds for these input shapes."""
    inferred = onnx.shape_inference.infer_shapes(_with_shapes(model, shapes))
    known = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = _dims(value)
        if value.type.tensor_type.HasField("shape") and all(isinstance(d, int) for d in dims):
            known[value.name] = tuple(int(d) for d in dims)
    return known


def _runner(model: onnx.ModelProto) -> OrtRunner:
    return OrtRunner(model, threads=0)


def _worst(checks: list[dict], atol: float, rtol: float, seed: int) -> dict:
    return {"backend": BACKEND, "max_abs_err": max((c["max_abs_err"] for c in checks), default=0.0),
            "max_rel_err": max((c["max_rel_err"] for c in checks), default=0.0),
            "passed": all(c["passed"] for c in checks), "atol": atol, "rtol": rtol, "seed": seed}


def verify_graphs(original: onnx.ModelProto, rewritten: onnx.ModelProto, shapes: list[Shape],
                  boundaries: list[tuple[str, str, str]], source: str, atol: float = 1e-4, rtol: float = 1e-4,
                  seed: int = 0) -> dict:
    """``rewritten`` against ``original``; ``boundaries`` are (layer, input, output) of each rewrite."""
    try:
        reference = Reference(_runner(original))
    except Exception as error:  # noqa: BLE001  # onnxruntime raises several types for graphs it cannot load
        return _each_subgraph(original, rewritten, shapes, boundaries, first_line(error, 300), source, atol, rtol,
                              seed)
    try:
        reference.outputs(seeded_inputs(shapes, seed, trials=1)[0])
    except Exception as error:  # noqa: BLE001
        raise RFDeployError(f"{source} does not run in onnxruntime on input shape {shapes_text(shapes)}: "
                            f"{first_line(error)}") from None
    check = verify(_runner(rewritten), reference, shapes, atol, rtol, seed)
    return {"scope": "whole graph", **check.to_json()}


def _each_subgraph(original: onnx.ModelProto, rewritten: onnx.ModelProto, shapes: list[Shape],
                   boundaries: list[tuple[str, str, str]], reason: str, source: str, atol: float, rtol: float,
                   seed: int) -> dict:
    """Each rewritten subgraph against the original's, fed what the original computes there: the part of the graph
    before the subgraphs (what onnxruntime can run of it) is run on the seeded inputs, and each subgraph's input is
    that activation at its real shape. Where even that part does not run, inputs come from shape inference."""
    activations = activations_at(original, shapes, [start for _, start, _ in boundaries], seed)
    known = tensor_shapes(original, shapes) if activations is None else {}
    checks = []
    for layer, start, end in boundaries:
        sets = None
        if activations is not None and start in activations:
            sets = [InputSet(f"{start} on seed {seed}", (torch.from_numpy(activations[start]),))]
        elif start in known:
            sets = seeded_inputs([known[start]], seed)
        if sets is None:
            checks.append({"layer": layer, "input": start, "output": end, "max_abs_err": float("inf"),
                           "max_rel_err": float("inf"), "passed": False,
                           "error": f"neither onnxruntime nor shape inference gives '{start}' a concrete shape"})
            continue
        shape = sets[0].shapes[0]
        try:
            check = verify_on(_runner(subgraph(rewritten, start, end, shape)),
                              _runner(subgraph(original, start, end, shape)), sets, atol, rtol, seed)
        except Exception as error:  # noqa: BLE001  # onnxruntime's errors on a graph it cannot load or run
            raise RFDeployError(f"{source}: onnxruntime cannot run the whole graph ({reason[:160]}) nor searched "
                                f"conv '{layer}' alone ({first_line(error)})") from None
        checks.append({"layer": layer, "input": start, "output": end, **check.to_json()})
    fed = "activations of the graph run up to them" if activations is not None else "shape inference's shapes"
    return {"scope": "each rewritten subgraph", "whole_graph_not_run": reason, "subgraph_inputs": fed,
            **_worst(checks, atol, rtol, seed), "input_shapes": [list(s) for s in shapes], "subgraphs": checks}


def activations_at(model: onnx.ModelProto, shapes: list[Shape], names: list[str], seed: int
                   ) -> dict[str, np.ndarray] | None:
    """The values of tensors ``names`` on the seeded inputs, from running only the part of ``model`` that computes
    them; None where onnxruntime cannot run that part either."""
    graph = import_graph(model)
    tensors = graph.tensors()
    wanted = [tensors[name] for name in dict.fromkeys(names) if isinstance(tensors.get(name), gs.Variable)]
    for tensor in wanted:
        tensor.dtype = tensor.dtype or np.float32
    graph.outputs = wanted
    graph.cleanup()
    inputs = seeded_inputs(shapes, seed, trials=1)[0]
    try:
        with _runner(gs.export_onnx(graph, do_type_check=False)) as runner:
            values = run_once(runner, list(inputs.tensors))
    except Exception:  # noqa: BLE001  # a custom op before the subgraphs, too
        return None
    return {tensor.name: np.asarray(value) for tensor, value in zip(wanted, values)}
