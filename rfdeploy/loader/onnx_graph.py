"""An ONNX file as a model and as a graphsurgeon graph (the pattern matcher is ``compiler.onnx_match``)."""

from __future__ import annotations

import os

import onnx
import onnx_graphsurgeon as gs

from rfdeploy.errors import RFDeployError, first_line


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """An ONNX model from a file; anything unreadable is a one-line ``RFDeployError`` naming the file."""
    try:
        model = onnx.load(os.fspath(path))
    except Exception as error:  # noqa: BLE001  # protobuf, OS and onnx errors alike
        raise RFDeployError(f"cannot read ONNX model '{path}': {first_line(error)}") from None
    if not model.graph.node:
        raise RFDeployError(f"cannot read ONNX model '{path}': it holds no graph nodes")
    return model


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` as a graphsurgeon graph, ``model`` itself untouched (importing edits Constant nodes' tensors)."""
    source = onnx.ModelProto()
    source.CopyFrom(model)
    return gs.import_onnx(source)
