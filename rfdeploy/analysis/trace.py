"""The model's real graph as ``Step``s: torch.fx first, torch.export when fx cannot trace the model.

Layers (convs, pools, dense layers, searched convs) stay whole and are named by their module name, which
is how structure files name convs. Shapes come from running the graph on a zero input.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from dataclasses import dataclass, replace

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from rfdeploy.analysis.ops import (
    WHOLE_LAYERS,
    Input,
    Shapes,
    Step,
    classify_function,
    classify_module,
    involution_window,
    is_searched,
    op_name,
)
from rfdeploy.errors import RFDeployError, first_line


@dataclass
class Traced:
    steps: list[Step]
    tracer: str  # "torch.fx" or "torch.export"
    shape_size: tuple[int, ...]  # the spatial input size the shapes (and FLOPs) were taken at
    notes: list[str]


class _LayerTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if is_searched(module) or isinstance(module, WHOLE_LAYERS) or involution_window(module) is not None:
            return True
        return super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, channels: int, input_size: tuple[int, ...]) -> Traced:
    """The graph, with shapes from a zero input of ``input_size``; where the model cannot run that small
    (a pool would output nothing), from the smallest doubling of it that runs: receptive fields do not
    depend on the input size, only shapes and FLOPs do."""
    _require_one_input(model)
    try:
        graph = _LayerTracer().trace(model, concrete_args=_defaults_after_first(model))
    except Exception as fx_error:  # noqa: BLE001 - fx raises many kinds on data-dependent control flow
        return _export(model, channels, input_size, fx_error)
    module = fx.GraphModule(model, graph)
    size, notes, _ = _run_at_workable_size(lambda x: _propagate_shapes(module, x), model, channels, input_size)
    modules = dict(module.named_modules())
    nodes = list(module.graph.nodes)
    first_input = next(n for n in nodes if n.op == "placeholder")
    steps = _steps(nodes, first_input, lambda node: modules[str(node.target)], None)
    return Traced(steps, "torch.fx", size, notes)


def _propagate_shapes(module: fx.GraphModule, example: torch.Tensor) -> None:
    """Shapes on fake tensors (no arithmetic: fast), or on real ones where an op has no fake kernel."""
    with _quiet():
        try:
            ShapeProp(module, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(example)
        except Exception:  # noqa: BLE001 - an op without a fake kernel: run it for real
            ShapeProp(module).propagate(example)


@contextlib.contextmanager
def _quiet():
    """Silence the tracebacks ShapeProp and fake tensors print before raising: the error is reported once."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


_DOUBLINGS = 4


def _run_at_workable_size(run, model: nn.Module, channels: int, input_size: tuple[int, ...]):
    first_error: Exception = RuntimeError("no size tried")
    for doubling in range(_DOUBLINGS + 1):
        size = tuple(n * 2 ** doubling for n in input_size)
        try:
            with torch.no_grad():
                result = run(torch.zeros(1, channels, *size))
        except Exception as error:  # noqa: BLE001 - the model's own forward: any error means "too small"
            first_error = error if doubling == 0 else first_error
            continue
        notes = []
        if doubling:
            notes.append(f"{type(model).__name__} cannot run at {_x(input_size)} ({_root_cause(first_error)}); "
                         f"shapes and FLOPs are taken at {_x(size)}")
        return size, notes, result
    raise RFDeployError(f"{type(model).__name__} fails on a {channels}-channel input of size "
                        f"{_x(input_size)}: {_root_cause(first_error)}") from first_error


def _x(size: tuple[int, ...]) -> str:
    return "x".join(map(str, size))


def _require_one_input(model: nn.Module) -> None:
    """Receptive fields are traced from one input: a forward that needs more is refused by name."""
    required = [p.name for p in inspect.signature(model.forward).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise RFDeployError(f"{type(model).__name__} takes {len(required)} inputs ({', '.join(required)}); the "
                            f"receptive-field analysis takes single-input models")


def _defaults_after_first(model: nn.Module) -> dict:
    """Optional forward arguments (a mask, a flag) fixed at their defaults, so that only the input is traced."""
    parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in parameters
            if p.default is not inspect.Parameter.empty and p.kind != p.VAR_KEYWORD}


def _export(model: nn.Module, channels: int, input_size: tuple[int, ...], fx_error: Exception) -> Traced:
    def export(x):
        return torch.export.export(model, (x,), strict=False)

    try:
        size, notes, program = _run_at_workable_size(export, model, channels, input_size)
    except RFDeployError as export_error:
        raise RFDeployError(f"cannot trace {type(model).__name__}: torch.fx: {_described(fx_error)}; "
                            f"torch.export: {export_error}") from export_error
    modules = dict(model.named_modules())
    first_input = program.graph.find_nodes(op="placeholder")[0]
    for node in program.graph.find_nodes(op="placeholder"):
        if node.name == program.graph_signature.user_inputs[0]:
            first_input = node

    def layer_module(node: fx.Node) -> nn.Module | None:
        path = _module_path(node)
        module = modules.get(path) if path else None
        return module if module is not None and isinstance(module, WHOLE_LAYERS) else None

    steps = _steps(list(program.graph.nodes), first_input, None, layer_module)
    return Traced(steps, "torch.export", size, notes)


def _steps(nodes, first_input, module_of, layer_module_of) -> list[Step]:
    shapes = Shapes(shape_of)
    steps = []
    for node in nodes:
        inputs = tuple(n.name for n in node.all_input_nodes)
        if node is first_input:
            steps.append(Step(node.name, "input", (), Input()))
        elif node.op in ("placeholder", "get_attr", "output") or shape_of(node) is None:
            steps.append(Step(node.name, node.op, inputs, None))
        elif node.op == "call_module":
            module = module_of(node)
            effect, layer, note = classify_module(node, module, shapes)
            steps.append(Step(node.name, type(module).__name__, inputs, effect, layer, (note,) if note else ()))
        else:
            name, module = node.name, layer_module_of(node) if layer_module_of else None
            if module is not None:  # torch.export: an aten op inside a layer module takes the module's name
                name = _module_path(node)
            effect, layer, note = classify_function(node, name, shapes)
            if layer is not None and module is not None:
                layer = replace(layer, op=type(module).__name__)
            steps.append(Step(node.name, op_name(node), inputs, effect, layer, (note,) if note else ()))
    return steps


def _root_cause(error: BaseException) -> str:
    """The innermost error's first line (ShapeProp wraps the real one in its own)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return _described(error)


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error, limit=1000)}"


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    """The shape of the node's (first) tensor output, from fx shape propagation or export's fake values."""
    value = node.meta.get("tensor_meta", node.meta.get("val"))
    while not hasattr(value, "shape") and isinstance(value, (tuple, list)) and value:
        value = value[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _module_path(node: fx.Node) -> str | None:
    """torch.export: the innermost module a node was called from."""
    stack = node.meta.get("nn_module_stack")
    return (list(stack.values())[-1][0] or None) if stack else None
