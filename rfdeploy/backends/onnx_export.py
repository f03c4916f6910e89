"""ONNX export of a (compiled or searched) torch model, cleaned with onnx-graphsurgeon."""

from __future__ import annotations

import io
import warnings
from typing import Any

import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from rfdeploy.compiler.graph_edit import reroute_readers
from rfdeploy.errors import RFDeployError, first_line

OPSETS = range(9, 24)  # what the TorchScript exporter writes with constant folding and onnx checks (torch 2.13)


def io_names(count: int, stem: str) -> list[str]:
    return [stem] if count == 1 else [f"{stem}{i}" for i in range(count)]


def output_names(outputs, input_names: list[str]) -> list[str]:
    """The ONNX output names of a model's outputs, in ``flat_outputs`` order: a dict's keys and a namedtuple's
    fields (``cls``, ``reg``; nested ones joined by dots, with a plain tuple's positions by their index), else
    ``output``, ``output0``, ``output1``, ... where nothing names them or the names would clash."""
    def labelled(value, path: tuple[tuple[str, bool], ...]) -> list[tuple[tuple[str, bool], ...]]:
        if isinstance(value, torch.Tensor):
            return [path]
        if isinstance(value, dict):
            return [found for key, item in value.items() for found in labelled(item, (*path, (str(key), True)))]
        fields = getattr(value, "_fields", None)  # a namedtuple's
        labels = [(field, True) for field in fields] if fields else [(str(i), False) for i in range(len(value))]
        return [found for label, item in zip(labels, value) for found in labelled(item, (*path, label))]

    paths = labelled(outputs, ())
    names = [".".join(label for label, _ in path) for path in paths]
    given = any(is_name for path in paths for _, is_name in path)
    if not given or "" in names or len(set(names)) != len(names) or set(names) & set(input_names):
        return io_names(len(paths), "output")
    return names


def dynamic_axes_of(inputs: list[torch.Tensor], input_names: list[str], output_names: list[str],
                    dynamic_batch: bool, dynamic_shape: bool) -> dict[str, dict[int, str]] | None:
    """Batch symbolic (``batch``), and with ``dynamic_shape`` every dim after the channels too (``height``,
    ``width``; ``length`` for 1-D): for each input, and the batch of each output (the exporter names the
    outputs' other dims from the graph)."""
    if not (dynamic_batch or dynamic_shape):
        return None
    spatial = {1: ["length"], 2: ["height", "width"]}
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(input_names, inputs):
        axes[name] = {0: "batch"}
        if dynamic_shape:
            names = spatial.get(tensor.dim() - 2) or [f"dim{i}" for i in range(2, tensor.dim())]
            suffix = "" if len(input_names) == 1 else f"_{name}"
            axes[name].update({2 + i: f"{dim}{suffix}" for i, dim in enumerate(names)})
    return axes | {name: {0: "batch"} for name in output_names}


def export_onnx(model: nn.Module, inputs: list[torch.Tensor], opset: int = 17,
                dynamic_batch: bool = False, dynamic_shape: bool = False, returned: Any = None) -> onnx.ModelProto:
    """The model as ONNX (TorchScript exporter: plain Conv nodes, constant-folded), graph cleaned up. ``returned``:
    the model's return value, or only its nesting (``measure.verify.structure_of``), where the caller has it: it
    names the outputs, and the model then runs only in the trace."""
    if returned is None:
        with torch.no_grad():
            returned = model(*inputs)
    input_names = io_names(len(inputs), "input")
    names = output_names(returned, input_names)
    dynamic_axes = dynamic_axes_of(inputs, input_names, names, dynamic_batch, dynamic_shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():  # the tracer's forward keeps no activation for a backward
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), buffer, dynamo=False,  # type: ignore[arg-type]
                              opset_version=opset,
                              input_names=input_names, output_names=names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    except Exception as error:  # noqa: BLE001  # torch raises many types for unexportable models
        raise RFDeployError(f"ONNX export failed: {first_line(error)}") from None
    graph = gs.import_onnx(onnx.load_from_string(buffer.getvalue()))
    bypass_identities(graph)
    graph.cleanup().toposort()
    exported = gs.export_onnx(graph)
    exported.opset_import[0].version = opset
    try:
        onnx.checker.check_model(exported)
    except onnx.checker.ValidationError as error:
        raise RFDeployError(f"ONNX export at opset {opset} is invalid: {first_line(error)}") from None
    return exported


def bypass_identities(graph: gs.Graph) -> None:
    """Consumers of an ``Identity`` read its input instead (the exporter writes one per extra use of a
    shared weight: a detector head's convs applied to every pyramid level); ``cleanup`` then drops it."""
    for node in graph.nodes:
        if node.op != "Identity" or node.outputs[0] in graph.outputs:
            continue
        reroute_readers(node.outputs[0], node.inputs[0])
        node.outputs.clear()


def search_ops_left(model: onnx.ModelProto) -> dict[str, int]:
    """The alpha normalisation ``|a| / sum |a|`` left in a graph: ``Abs`` nodes, and ``ReduceSum`` nodes that read
    one (a ReduceSum of its own, as an involution's aggregation has, is not a search op)."""
    absolutes = {name for node in model.graph.node if node.op_type == "Abs" for name in node.output}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Abs" or (node.op_type == "ReduceSum" and node.input and node.input[0] in absolutes):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def value_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Each dim of a graph input or output: its size where fixed, else its symbol's name, else None."""
    return [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (dim.dim_param or None)
            for dim in value.type.tensor_type.shape.dim]


def _tensor_signature(value: onnx.ValueInfoProto) -> dict:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
    return {"name": value.name, "dtype": dtype, "shape": value_dims(value)}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: ``graph.input`` less the initializers older exporters list there too."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def signature(model: onnx.ModelProto) -> dict:
    """The graph's inputs and outputs: name, dtype and dims (an int, or the name of a symbolic axis), and
    the dynamic axes as ``torch.onnx.export`` takes them (``{name: {axis: symbol}}``)."""
    inputs = [_tensor_signature(v) for v in graph_inputs(model)]
    outputs = [_tensor_signature(v) for v in model.graph.output]
    dynamic = {io["name"]: {str(axis): dim for axis, dim in enumerate(io["shape"]) if not isinstance(dim, int)}
               for io in inputs + outputs}
    return {"inputs": inputs, "outputs": outputs,
            "dynamic_axes": {name: axes for name, axes in dynamic.items() if axes}}
