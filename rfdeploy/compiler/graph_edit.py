"""What every pass on an ONNX graph does around its own rewrite: import the model into graphsurgeon, know its
default-domain opset and its real graph inputs, point readers at another tensor, and export the edited graph into a
copy of the model (its opsets, metadata and IR version kept)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rfdeploy.errors import RFDeployError
from rfdeploy.loader.onnx_graph import import_graph

# metadata a graph pass leaves for the quantizer: the nodes it wrote that must compute in fp32 (a JSON list of names)
KEEP_FP32_KEY = "rfdeploy.keep_fp32"


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports (1 where it names none)."""
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 1)


class GraphEdit:
    """A graphsurgeon copy of ``model`` to rewrite (``model`` itself is never touched)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = import_graph(model)
        self.opset = default_opset(model)
        # from the model: graphsurgeon drops an initializer that is also a graph input from its inputs, and a
        # caller may feed such an input, so it is no constant
        self.inputs = {value.name for value in model.graph.input}
        self.outputs = {tensor.name for tensor in self.graph.outputs}

    def exported(self) -> onnx.ModelProto:
        """The edited graph in a copy of the model."""
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(self.model)
        rewritten.graph.CopyFrom(gs.export_onnx(self.graph, do_type_check=False).graph)
        return rewritten


def swap(tensors: list[gs.Tensor], old: gs.Tensor, new: gs.Tensor) -> None:
    """``old`` replaced by ``new`` in a node's inputs or outputs (graphsurgeon's lists take no slices)."""
    for index, tensor in enumerate(tensors):
        if tensor is old:
            tensors[index] = new


def reroute_readers(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads ``old`` reads ``new`` instead."""
    for reader in list(old.outputs):
        swap(reader.inputs, old, new)


def share_equal_constants(nodes: list[gs.Node]) -> int:
    """Constants of equal dtype, shape and values read by ``nodes`` become one (a detector head's searched convs run
    once per pyramid level, so their folded weights are equal); the bytes no longer stored twice."""
    first: dict[tuple, gs.Constant] = {}
    saved = 0
    for node in nodes:
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant):
                continue
            values = np.ascontiguousarray(tensor.values)
            key = (values.dtype.str, values.shape, hashlib.sha256(values.tobytes()).digest())
            kept = first.setdefault(key, tensor)
            if kept is not tensor:
                node.inputs[index] = kept
                saved += values.nbytes
    return saved


def keep_in_fp32(model: onnx.ModelProto, names: list[str]) -> None:
    """Mark ``names`` (nodes of ``model``) as nodes no int8 model of it may quantize, besides those marked before."""
    kept = dict.fromkeys(kept_in_fp32(model) + names)
    for entry in list(model.metadata_props):
        if entry.key == KEEP_FP32_KEY:
            model.metadata_props.remove(entry)
    model.metadata_props.add(key=KEEP_FP32_KEY, value=json.dumps(list(kept)))


def kept_in_fp32(model: onnx.ModelProto) -> list[str]:
    """The nodes a graph pass marked to stay in fp32 (``keep_in_fp32``) that the graph still holds."""
    entry = next((entry for entry in model.metadata_props if entry.key == KEEP_FP32_KEY), None)
    if entry is None:
        return []
    try:
        names = json.loads(entry.value)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RFDeployError(f"the ONNX model's metadata '{KEEP_FP32_KEY}' is not a list of node names")
    present = {node.name for node in model.graph.node}
    return [name for name in names if name in present]
