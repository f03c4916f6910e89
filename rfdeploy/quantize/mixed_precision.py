"""Accuracy-aware mixed precision: the fewest tensors kept in fp32 for an int8 model to reach an SNR.

Two rankings of the quantized activations, costliest first (``RANKINGS``):

- ``output`` (the default): per activation, the int8 model with that one QDQ pair removed is run on the
  held-out inputs; its cost is the SNR the outputs gain. One session per activation: on Res2Net-50
  (307 of them) 132 s on 2 cores.
- ``qdq``: each activation compared with the float model's (onnxruntime's ``qdq_loss_debug``); its cost
  is the noise its node adds, relative to the signal, beyond the noise its inputs carried. Two runs in
  all, but blind to how far a tensor's noise reaches the outputs: on random-weight Res2Net-50, its
  first 8 tensors gained 0 dB where ``output``'s gained 3.1 dB. (The QDQ pair's own before/after SQNR
  misleads worse: after a quantized ReLU it compares the pre-ReLU values with the clamped ones.)

Keeping a tensor in fp32 means excluding from quantization the node that writes it and the nodes that
read it. The costliest tensors are kept in fp32 in growing numbers (1, 2, 4, ...) until the whole model
meets the target, then the count is narrowed by bisection between the last miss and the first hit.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from rfdeploy.backends.onnx_export import graph_inputs
from rfdeploy.measure.verify import InputSet
from rfdeploy.quantize.int8 import InputReader, Int8Quantizer, int8_compute, quiet_onnxruntime_logging

RANKINGS = ("output", "qdq")


@dataclass(frozen=True)
class TensorCost:
    tensor: str
    cost_db: float  # output: the SNR gained without its quantization; qdq: its node's added noise over signal
    nodes: tuple[str, ...]  # the nodes that write or read it: kept in fp32 to keep it so


@dataclass
class MixedPrecision:
    model: onnx.ModelProto
    snr_db: float
    met: bool
    kept_fp32: list[str] = field(default_factory=list)  # node names
    tensors: list[TensorCost] = field(default_factory=list)  # the tensors they keep in fp32, worst first
    tried: list[dict] = field(default_factory=list)  # {"kept_tensors": k, "snr_db": x} per attempt
    ranking: str = "output"

    def to_json(self) -> dict:
        return {"met": self.met, "snr_db": round(self.snr_db, 2), "ranking": self.ranking,
                "kept_fp32_nodes": self.kept_fp32,
                "kept_fp32_tensors": [{"tensor": t.tensor, "cost_db": round(t.cost_db, 3)} for t in self.tensors],
                "tried": self.tried}


def tensor_costs(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, inputs: list[InputSet]) -> list[TensorCost]:
    """Every quantized activation's cost, highest first: how much quantization noise (relative to the
    signal) the node writing it adds to what its inputs carried already, the int8 model's tensors
    compared with the float model's (onnxruntime's ``qdq_loss_debug`` cross-model SQNR)."""
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    matching = create_activation_matching(_activations(qdq_model, inputs), _activations(float_model, inputs))
    noise = {tensor: _noise_to_signal(pair["float"], pair["post_qdq"]) for tensor, pair in matching.items()
             if "float" in pair and "post_qdq" in pair}
    producers = {tensor: node for node in float_model.graph.node for tensor in node.output}
    touching = _nodes_touching(float_model, producers)
    costs = []
    for tensor, ratio in noise.items():
        producer = producers.get(tensor)
        carried = max((noise.get(source, 0.0) for source in producer.input), default=0.0) if producer else 0.0
        if tensor in touching:
            costs.append(TensorCost(tensor, 10 * math.log10(max(ratio - carried, 1e-12)), touching[tensor]))
    return sorted(costs, key=lambda cost: -cost.cost_db)


def output_costs(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto,
                 snr_of: Callable[[onnx.ModelProto], float], base_db: float) -> list[TensorCost]:
    """Every quantized activation's cost, highest first: the SNR the outputs gain when it alone is not
    quantized (its ``DequantizeLinear`` readers read the float tensor instead)."""
    producers = {tensor: node for node in float_model.graph.node for tensor in node.output}
    touching = _nodes_touching(float_model, producers)
    costs = []
    for tensor, dequantizers in _activation_qdq(qdq_model).items():
        # a quantized graph output: its producer writes OUTPUT_QuantizeLinear_Input, the dequantizer OUTPUT
        name = tensor if tensor in touching else tensor.removesuffix("_QuantizeLinear_Input")
        if name in touching:
            costs.append(TensorCost(name, snr_of(_unquantized(qdq_model, tensor, dequantizers)) - base_db,
                                    touching[name]))
    return sorted(costs, key=lambda cost: -cost.cost_db)


def _activation_qdq(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Per quantized activation (not a weight), the indices of the ``DequantizeLinear`` nodes of its pair."""
    constants = {init.name for init in model.graph.initializer}
    quantized = {node.output[0]: node.input[0] for node in model.graph.node
                 if node.op_type == "QuantizeLinear" and node.input[0] not in constants}
    pairs: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized:
            pairs.setdefault(quantized[node.input[0]], []).append(index)
    return pairs


def _unquantized(model: onnx.ModelProto, tensor: str, dequantizers: list[int]) -> onnx.ModelProto:
    """``model`` with ``tensor``'s QDQ pair bypassed: each of its dequantizers becomes ``Identity(tensor)``."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    for index in dequantizers:
        node = edited.graph.node[index]
        node.op_type = "Identity"
        del node.input[:]
        node.input.append(tensor)
        del node.attribute[:]
    return edited


def _activations(model: onnx.ModelProto, inputs: list[InputSet]) -> dict:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    names = [value.name for value in graph_inputs(model)]
    with tempfile.TemporaryDirectory(prefix="rfdeploy-sqnr-") as folder, quiet_onnxruntime_logging():
        path, augmented = Path(folder) / "model.onnx", Path(folder) / "all-outputs.onnx"
        onnx.save(model, path)
        modify_model_output_intermediate_tensors(path, augmented)
        return collect_activations(str(augmented), InputReader(names, inputs))


def _noise_to_signal(expected: list, actual: list) -> float:
    signal = sum(float((e.astype("float64") ** 2).sum()) for e in expected)
    noise = sum(float(((a.astype("float64") - e) ** 2).sum()) for a, e in zip(actual, expected))
    return noise / signal if signal > 0 else 0.0


def _nodes_touching(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto]) -> dict[str, tuple[str, ...]]:
    """Per tensor, the nodes to keep in fp32 to keep it so: those that read it, the one that writes it, and
    where that one has a single input (a ReLU, a pool, which the quantizer fuses with what feeds them), the
    node before it too, whose weights would otherwise stay quantized."""
    touching: dict[str, list[str]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            touching.setdefault(tensor, []).append(node.name)
        for tensor in node.output:
            touching.setdefault(tensor, []).append(node.name)
            data_inputs = [name for name in node.input if name in producers]
            if len(data_inputs) == 1 and len(node.input) == 1:
                touching[tensor].append(producers[data_inputs[0]].name)
    return {tensor: tuple(dict.fromkeys(nodes)) for tensor, nodes in touching.items() if tensor}


def reach_snr(quantizer: Int8Quantizer, float_model: onnx.ModelProto, snr_of: Callable[[onnx.ModelProto], float],
              target_db: float, held_out: list[InputSet], tick: Callable[[str], None] | None = None,
              ops: str = "all", ranking: str = "output", int8: onnx.ModelProto | None = None) -> MixedPrecision:
    """The int8 model with the fewest worst tensors kept in fp32 whose SNR (``snr_of``) reaches
    ``target_db`` with a conv or matmul still in int8; where none does, the best model found that still has
    one, ``met`` false (an fp32 model under an int8 name meets no int8 target). ``int8``: the whole model
    quantized with ``ops`` already, where the caller has it."""
    step = tick or (lambda text: None)
    int8 = int8 if int8 is not None else quantizer.quantize(ops=ops)
    tried: list[dict] = []
    results: dict[int, tuple[onnx.ModelProto, float]] = {0: (int8, snr_of(int8))}
    tried.append({"kept_tensors": 0, "snr_db": round(results[0][1], 2)})
    if results[0][1] >= target_db:
        return MixedPrecision(int8, results[0][1], True, tried=tried, ranking=ranking)
    step(f"ranking quantized tensors ({ranking})")
    costs = (output_costs(float_model, int8, snr_of, results[0][1]) if ranking == "output"
             else tensor_costs(float_model, int8, held_out))

    def meets(count: int) -> bool:
        if count not in results:
            step(f"keeping the {count} worst tensor(s) in fp32")
            model = quantizer.quantize(_nodes_of(costs[:count]), ops)
            results[count] = (model, snr_of(model))
            tried.append({"kept_tensors": count, "snr_db": round(results[count][1], 2),
                          "int8_compute_nodes": int8_compute(model)[0]})
        return results[count][1] >= target_db and int8_compute(results[count][0])[0] > 0

    miss, hit = 0, None
    count = 1
    while count <= len(costs):
        if meets(count):
            hit = count
            break
        miss, count = count, count * 2
    if hit is None and miss < len(costs) and meets(len(costs)):
        hit = len(costs)
    if hit is None:
        still_int8 = [k for k in results if int8_compute(results[k][0])[0] > 0] or list(results)
        best = max(still_int8, key=lambda k: results[k][1])
        return MixedPrecision(results[best][0], results[best][1], False, _nodes_of(costs[:best]), costs[:best], tried,
                              ranking)
    while hit - miss > 1:
        middle = (hit + miss) // 2
        miss, hit = (miss, middle) if meets(middle) else (middle, hit)
    model, snr = results[hit]
    return MixedPrecision(model, snr, True, _nodes_of(costs[:hit]), costs[:hit], tried, ranking)


def _nodes_of(costs: list[TensorCost]) -> list[str]:
    return list(dict.fromkeys(node for cost in costs for node in cost.nodes))
