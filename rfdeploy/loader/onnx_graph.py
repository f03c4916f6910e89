"""An ONNX file as a model and as a graphsurgeon graph (the pattern matcher is ``compiler.onnx_match``).

A graph is checked when it is read, before anything works on it: ONNX's own checker with shape
inference (topological order, so no cycle; single assignment; known ops; attribute ranges it knows),
an opset that ONNX and onnxruntime know, unique node names (onnxruntime refuses repeats), and the
convolutions' and batch norms' attributes and constant parameters. A graph that fails gets one line
naming the file and the node, instead of a failure deep inside constant folding or onnxruntime.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import numpy_helper

from rfdeploy.errors import RFDeployError, first_line
from rfdeploy.loader.input_file import regular_file

# onnxruntime runs opset 7 and later; the newest is what this onnx release defines
OPSETS = range(7, onnx.defs.onnx_opset_version() + 1)
_PROTOBUF_LIMIT = 2**31 - 1  # the checker takes a larger model by its path only


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """An ONNX model from a file, checked; anything unreadable is a one-line ``RFDeployError`` naming the file."""
    try:
        path = regular_file(os.fspath(path), "file")  # a FIFO or a device (/dev/zero) is never read
        model = onnx.load(os.fspath(path))
    except RFDeployError as error:
        raise RFDeployError(f"cannot read ONNX model '{path}': {str(error).removeprefix(f'{path}: ')}") from None
    except Exception as error:  # noqa: BLE001  # protobuf, OS and onnx errors alike
        raise RFDeployError(f"cannot read ONNX model '{path}': {first_line(error)}") from None
    check_onnx(model, str(path), path)
    return model


def onnx_from_bytes(data: bytes, source: str) -> onnx.ModelProto:
    """An ONNX model from its serialized bytes, checked as ``read_onnx`` checks a file."""
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001  # protobuf's DecodeError and onnx's own
        raise RFDeployError(f"cannot read ONNX model '{source}': {first_line(error)}") from None
    check_onnx(model, source)
    return model


def check_onnx(model: onnx.ModelProto, source: str, path: str | os.PathLike | None = None) -> None:
    """The one-line error where ``model`` is no graph that onnxruntime could load and rfdeploy rewrite."""
    def refuse(reason: str):
        raise RFDeployError(f"cannot read ONNX model '{source}': {reason}")

    if not model.graph.node:
        refuse("it holds no graph nodes")
    undecodable = _undecodable_text(model)
    if undecodable is not None:
        refuse(f"its {undecodable} is not UTF-8 text")
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is None:
        refuse("it imports no ONNX opset")
    if opset not in OPSETS:
        refuse(f"opset {opset}; onnx and onnxruntime know opsets {OPSETS.start} to {OPSETS.stop - 1}")
    try:
        large = model.ByteSize() > _PROTOBUF_LIMIT and path is not None
        onnx.checker.check_model(os.fspath(path) if large and path is not None else _outputs_shaped(model),
                                 full_check=True)
    except Exception as error:  # noqa: BLE001  # ValidationError, InferenceError, and ValueError for sizes
        refuse(f"invalid: {' '.join(str(error).split())[:300] or type(error).__name__}")
    named: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name in named:
            refuse(f"two nodes are named '{node.name}'")
        named.add(node.name)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        problem = _node_problem(node, initializers)
        if problem:
            refuse(f"node '{node.name or node.output[0]}' ({node.op_type}): {problem}")


def _undecodable_text(message: Message) -> str | None:
    """The first string field (a name, an op type) that is not UTF-8: protobuf hands such a field over as
    bytes, which fails later wherever a name is used as text."""
    for field, value in message.ListFields():
        items = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING and any(isinstance(item, bytes) for item in items):
            return field.name
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = next((found for found in map(_undecodable_text, items) if found is not None), None)
            if inner is not None:
                return inner
    return None


def _outputs_shaped(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy whose graph outputs all have a shape, for the checker, which wants one where
    onnxruntime does not: inferred where it can be, else of unknown dims (a custom op's outputs)."""
    if all(value.type.tensor_type.HasField("shape") for value in model.graph.output):
        return model
    shaped = onnx.shape_inference.infer_shapes(model)
    for value in shaped.graph.output:
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.SetInParent()
    return shaped


def _node_problem(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """What is wrong with a default-domain Conv's or BatchNormalization's attributes or constant
    parameters (the checker leaves the group and the values alone); None when nothing is."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "BatchNormalization"):
        return None
    params = [_constant(initializers.get(name)) for name in node.input[1:]]
    for name, value in zip(node.input[1:], params):
        if value is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"'{name}' holds NaN or infinite values"
    if node.op_type == "BatchNormalization":
        sizes = {p.shape for p in params[:4] if p is not None}
        if len(sizes) > 1 or any(len(size) != 1 for size in sizes):
            return f"scale, bias, mean and variance of shapes {[list(p.shape) for p in params[:4] if p is not None]}"
        var = params[3] if len(params) > 3 else None
        return "a negative variance" if var is not None and (var < 0).any() else None
    weight, bias = (params + [None, None])[:2]
    if weight is not None and weight.ndim < 3:
        return f"a weight of shape {list(weight.shape)}"
    if weight is not None and bias is not None and bias.shape != weight.shape[:1]:
        return f"a bias of shape {list(bias.shape)} for {weight.shape[0]} output channels"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for key in ("strides", "dilations"):
        if any(v < 1 for v in attrs.get(key, [])):
            return f"{key} {list(attrs[key])}: each must be 1 or more"
    if any(v < 0 for v in attrs.get("pads", [])):
        return f"pads {list(attrs['pads'])}: each must be 0 or more"
    group = attrs.get("group", 1)
    if group < 1 or (weight is not None and weight.shape[0] % group):
        out = f" {weight.shape[0]}" if weight is not None else ""
        return f"group {group}: must be 1 or more and divide the weight's{out} output channels"
    kernel = attrs.get("kernel_shape")
    if weight is not None and kernel is not None and list(kernel) != list(weight.shape[2:]):
        return f"kernel_shape {list(kernel)} differs from the weight's {list(weight.shape[2:])}"
    return None


def _constant(tensor: onnx.TensorProto | None) -> np.ndarray | None:
    return None if tensor is None else numpy_helper.to_array(tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as a graphsurgeon graph, ``model`` itself untouched (importing edits Constant nodes' tensors)."""
    source = onnx.ModelProto()
    source.CopyFrom(model)
    return gs.import_onnx(source)
