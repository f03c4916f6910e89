"""What each graph node does to a receptive field, and which nodes are the layers a report lists.

A node is one of: the ``Input``; a sliding ``Window`` (conv, pool, searched conv, involution); a ``Resample``
(interpolation); ``Global`` (sees every position: global pooling, attention); a ``Reshape`` or
``Reduce`` (keeps positions apart, or mixes them when the spatial size disappears from the shape);
``Pointwise`` (everything else, including the joins of paths: add, cat, mul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import fx, nn

from rfdeploy.analysis.receptive_field import Size, Stride
from rfdeploy.compiler.involution_ir import LoweredInvolution
from rfdeploy.compiler.ir import BranchSum
from rfdeploy.loader.involution import involution_parts


@dataclass(frozen=True)
class Input:
    pass


@dataclass(frozen=True)
class Window:
    kernel: Size
    stride: Stride
    rates: tuple[Size, ...]  # one dilation per branch; a plain layer has one
    extent: Size
    transposed: bool = False


@dataclass(frozen=True)
class Resample:
    scale: tuple[Fraction, ...]
    taps: int
    extent: Size


@dataclass(frozen=True)
class Global:
    pooled: bool  # the result is the same at every position (global pooling), or varies (attention)


@dataclass(frozen=True)
class Reshape:
    shape: Size


@dataclass(frozen=True)
class Reduce:
    dims: tuple[int, ...] | None  # the reduced dims of the input (None: all)
    input_shape: Size


@dataclass(frozen=True)
class Pointwise:
    shape: Size = ()  # the output's shape
    input_shape: Size = ()  # the (first) input's shape
    resizes: bool = False  # pads or crops an (N, C, *space) map: its size changes, the field does not
    dense_input: Size | None = None  # a dense layer's input shape: it mixes the last dim


Effect = Input | Window | Resample | Global | Reshape | Reduce | Pointwise


@dataclass(frozen=True)
class Layer:
    """A node the report lists: a conv, pool, searched conv or dense layer."""

    name: str  # the module name where there is one (``layer1.0.conv2``), else the graph node's
    op: str  # module class (``Conv2d``) or function (``max_pool2d``)
    flops: int
    kernel: Size | None = None
    stride: Stride | None = None
    rates: tuple[Size, ...] | None = None


@dataclass(frozen=True)
class Step:
    id: str
    op: str
    inputs: tuple[str, ...]
    effect: Effect | None  # None: not a tensor (a size, a constant)
    layer: Layer | None = None
    notes: tuple[str, ...] = field(default=())


# -- searched convs, recognised by their attributes so that no search library must be importable --------

def is_searched(module: nn.Module) -> bool:
    """The attribute test of ``searched_branches``, touching no parameter (fx proxies them while tracing)."""
    rates = getattr(module, "rates", None)
    return ((isinstance(rates, torch.Tensor) and hasattr(module, "num_rates"))
            or (isinstance(rates, (list, tuple)) and len(rates) > 0 and _has(module, "kernel_size")
                and _has(module, "stride"))
            or (isinstance(getattr(module, "op_layer", None), nn.modules.conv._ConvNd)
                and hasattr(module, "dilation_rates"))
            or isinstance(module, BranchSum))


def _has(module: nn.Module, name: str) -> bool:
    return name in vars(module) or hasattr(type(module), name)


def searched_branches(module: Any) -> tuple[Size, Size, tuple[Size, ...], nn.Module] | None:
    """``(kernel, stride, rates, conv holding the weight)`` of a conv with several dilation branches."""
    rates = getattr(module, "rates", None)
    if isinstance(rates, torch.Tensor) and hasattr(module, "num_rates"):  # RFConv2d: rates in buffers
        live = rates[: int(module.num_rates.reshape(-1)[0])].tolist()
        return _as_size(module.kernel_size), _as_size(module.stride), tuple(map(tuple, live)), module
    if isinstance(rates, (list, tuple)) and rates and _has(module, "kernel_size"):  # rfdeploy SearchedConv
        kernel = _as_size(module.kernel_size)
        return kernel, _as_size(module.stride), tuple(_per_dim(r, len(kernel)) for r in rates), module
    op_layer = getattr(module, "op_layer", None)
    if isinstance(op_layer, nn.modules.conv._ConvNd) and hasattr(module, "dilation_rates"):  # mmcv
        kernel = _as_size(op_layer.kernel_size)
        rates = tuple(_per_dim(r, len(kernel)) for r in module.dilation_rates)
        return kernel, _as_size(op_layer.stride), rates, op_layer
    convs = getattr(module, "convs", None)
    if isinstance(module, BranchSum) and isinstance(convs, nn.ModuleList) and len(convs):
        kernel = tuple(max(sizes) for sizes in zip(*(_as_size(c.kernel_size) for c in convs)))
        return kernel, _as_size(convs[0].stride), tuple(_as_size(c.dilation) for c in convs), convs[0]
    return None


def _as_size(value) -> Size:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)


def _per_dim(rate, dims: int) -> Size:
    rate = _as_size(rate)
    return rate * dims if len(rate) == 1 else rate


# -- involutions: a k x k window of the input; the kernel-generating branch reads only the (pooled) position --

def involution_window(module: nn.Module) -> tuple[int, int, int, int] | None:
    """``(kernel, stride, dilation, channels)`` of an involution, as written or lowered by rfdeploy."""
    if isinstance(module, LoweredInvolution):
        return module.kernel_size, module.stride, module.dilation, module.channels
    parts = involution_parts(module)
    return None if parts is None else (parts.kernel_size, parts.stride, parts.dilation, parts.channels)


def _involution(name: str, module: nn.Module, out: Size) -> tuple[Effect, Layer, None]:
    kernel, stride, dilation, channels = involution_window(module)  # type: ignore[misc]
    dims = len(out) - 2
    positions = math.prod(_space(out))
    generating = sum(conv.weight.numel() for conv in module.modules() if isinstance(conv, nn.Conv2d)
                     and conv.kernel_size == (1, 1))
    flops = 2 * positions * out[0] * (generating + channels * kernel**2)
    size, step, rates = (kernel,) * dims, (stride,) * dims, ((dilation,) * dims,)
    return Window(size, step, rates, _space(out)), Layer(name, "involution", flops, size, step, rates), None


# -- modules ----------------------------------------------------------------------------------------------

_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd)
_ADAPTIVE = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
# Layer modules kept whole by the tracer even when subclassed outside torch.nn.
WHOLE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, *_POOLS, *_ADAPTIVE)
_POINTWISE_MODULES = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.ChannelShuffle,
)
_PADDING = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
            nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)
_GLOBAL_MODULES = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
                   nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, _GLOBAL_MODULES)


def classify_module(node: fx.Node, module: Any, shapes: Shapes) -> tuple[Effect, Layer | None, str | None]:
    name, op = str(node.target), type(module).__name__
    out, inp = shapes.out(node), shapes.first_input(node)
    if involution_window(module) is not None:
        return _involution(name, module, out)
    searched = searched_branches(module)
    if searched is not None:
        kernel, stride, rates, conv = searched
        flops = _conv_flops(conv, out, kernel) * len(rates)
        return Window(kernel, stride, rates, _space(out)), Layer(name, op, flops, kernel, stride, rates), None
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel, stride = _as_size(module.kernel_size), _as_size(module.stride)
        rates = (_as_size(module.dilation),)
        effect = Window(kernel, stride, rates, _space(out), transposed=module.transposed)
        return effect, Layer(name, op, _conv_flops(module, out, kernel), kernel, stride, rates), None
    if isinstance(module, _POOLS):
        return _pool(name, op, module.kernel_size, module.stride, getattr(module, "dilation", 1), out)
    if isinstance(module, _ADAPTIVE):
        return _adaptive(name, op, inp, out)
    if isinstance(module, nn.Linear):
        flops = 2 * math.prod(out) * int(module.in_features)
        return Pointwise(out, inp, dense_input=inp), Layer(name, op, flops), None
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        return Reshape(out), None, None
    if isinstance(module, nn.Upsample):
        return _resample(inp, out, module.mode), None, None
    if isinstance(module, nn.PixelShuffle):
        return _resample(inp, out, "nearest"), None, None
    if isinstance(module, nn.PixelUnshuffle):
        factor = (module.downscale_factor,) * (len(out) - 2)
        return _pool(name, op, factor, factor, 1, out)
    if isinstance(module, _GLOBAL_MODULES):
        return Global(pooled=False), None, None
    if isinstance(module, _PADDING):
        return Pointwise(out, inp, resizes=True), None, None
    if isinstance(module, _POINTWISE_MODULES) or _is_activation(module):
        return Pointwise(out, inp), None, None
    return Pointwise(out, inp), None, f"module type {op} is not known: treated as pointwise (first at '{name}')"


# -- functions and methods --------------------------------------------------------------------------------

_CONV_FUNCTIONS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
_CONV_TRANSPOSE_FUNCTIONS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_POOL_FUNCTIONS = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
                   "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d"}
_RESHAPES = {"flatten", "view", "reshape", "_unsafe_view", "unflatten", "permute", "transpose", "t",
             "contiguous", "squeeze", "unsqueeze", "movedim", "swapaxes", "view_as", "reshape_as", "clone"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
               "argmax", "argmin", "median"}
_MIXING = {"matmul", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention",
           "multi_head_attention_forward", "_scaled_dot_product_flash_attention",
           "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math"}
_RESIZING = {"pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
             "replication_pad2d", "getitem", "slice", "narrow", "select", "split", "split_with_sizes",
             "chunk", "unbind", "cat", "stack"}


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    overload = getattr(node.target, "_schema", None)
    if overload is not None:  # an aten op from torch.export
        return overload.name.split("::")[-1]
    return getattr(node.target, "__name__", str(node.target))


def arg(node: fx.Node, index: int, name: str, default=None):
    """A call's argument by position or keyword (torch.nn.functional and aten agree on these)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def classify_function(node: fx.Node, name: str, shapes: Shapes) -> tuple[Effect, Layer | None, str | None]:
    op = op_name(node)
    out, inp = shapes.out(node), shapes.first_input(node)
    if op in _CONV_FUNCTIONS or op in _CONV_TRANSPOSE_FUNCTIONS:
        transposed = op in _CONV_TRANSPOSE_FUNCTIONS or bool(op == "convolution" and arg(node, 6, "transposed"))
        weight = shapes.of(node.args[1]) if len(node.args) > 1 else None
        if weight is None:
            return Pointwise(out, inp), None, f"{name}: {op} without a known weight shape, treated as pointwise"
        kernel = weight[2:]
        dims = len(kernel)
        stride = _per_dim(arg(node, 3, "stride", 1), dims)
        dilation = _per_dim(arg(node, 7 if op in _CONV_TRANSPOSE_FUNCTIONS else 5, "dilation", 1), dims)
        # every input (transposed) or output position meets one kernel of in- or out-channels per group
        flops = 2 * math.prod(inp if transposed else out) * weight[1] * math.prod(kernel)
        effect = Window(kernel, stride, (dilation,), _space(out), transposed=transposed)
        return effect, Layer(name, op, flops, kernel, stride, (dilation,)), None
    if op in _POOL_FUNCTIONS:
        pool_kernel = arg(node, 1, "kernel_size")
        pool_dilation = arg(node, 4, "dilation", 1) if op.startswith("max") else 1
        return _pool(name, op, pool_kernel, arg(node, 2, "stride") or pool_kernel, pool_dilation, out)
    if op.lstrip("_").startswith("adaptive_"):
        return _adaptive(name, op, inp, out)
    if op == "interpolate" or op.lstrip("_").startswith("upsample"):
        mode = arg(node, 3, "mode", "nearest") if op == "interpolate" else op
        return _resample(inp, out, str(mode)), None, None
    if op == "linear":
        weight = shapes.of(node.args[1]) if len(node.args) > 1 else None
        flops = 2 * math.prod(out) * (weight[1] if weight else 1)
        return Pointwise(out, inp, dense_input=inp), Layer(name, op, flops), None
    if op in _RESHAPES:
        return Reshape(out), None, None
    if op in _REDUCTIONS:
        return Reduce(_reduced_dims(node, op, len(inp)), inp), None, None
    if op in _MIXING:
        return Global(pooled=False), None, None
    return Pointwise(out, inp, resizes=op in _RESIZING), None, None


def _reduced_dims(node: fx.Node, op: str, ndim: int) -> tuple[int, ...] | None:
    dims = arg(node, 2 if op == "norm" else 1, "dim")
    if dims is None or not isinstance(dims, (int, list, tuple)):
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return tuple(d % ndim for d in dims) if ndim else None


def _space(shape: Size) -> Size:
    return tuple(shape[2:])


def _conv_flops(conv: Any, out: Size, kernel: Size) -> int:
    in_per_group = conv.weight.shape[1] if hasattr(conv, "weight") else 1
    return 2 * math.prod(out) * int(in_per_group) * math.prod(kernel)


def _pool(name: str, op: str, kernel, stride, dilation, out: Size) -> tuple[Effect, Layer, None]:
    dims = len(out) - 2
    kernel, stride = _per_dim(kernel, dims), _per_dim(stride or kernel, dims)
    rates = (_per_dim(dilation, dims),)
    layer = Layer(name, op, math.prod(out) * math.prod(kernel), kernel, stride, rates)
    return Window(kernel, stride, rates, _space(out)), layer, None


def _adaptive(name: str, op: str, inp: Size, out: Size) -> tuple[Effect, Layer, str | None]:
    """An adaptive pool from ``n`` to ``m`` positions: global at ``m == 1``; else windows
    ``[floor(i n / m), ceil((i + 1) n / m))``, whose spacing ``n / m`` is a fraction where ``m`` does
    not divide ``n`` (the windows then differ in size: the widest is taken)."""
    flops = math.prod(inp)
    n, m = _space(inp), _space(out)
    if all(size == 1 for size in m):
        return Global(pooled=True), Layer(name, op, flops), None
    kernel = tuple(max(-(-(i + 1) * a // b) - i * a // b for i in range(b)) for a, b in zip(n, m))
    stride = tuple(Fraction(a, b) if a % b else a // b for a, b in zip(n, m))
    rates = (tuple(1 for _ in n),)
    return Window(kernel, stride, rates, m), Layer(name, op, flops, kernel, stride, rates), None


def _resample(inp: Size, out: Size, mode: str) -> Resample:
    taps = 1 if "nearest" in mode else 4 if "cubic" in mode else 2
    scale = tuple(Fraction(b, a) for a, b in zip(_space(inp), _space(out)))
    return Resample(scale, taps, _space(out))


class Shapes:
    """Shapes of nodes' outputs, by node (read from the traced graph's metadata)."""

    def __init__(self, shape_of):
        self._shape_of = shape_of

    def of(self, value) -> Size | None:
        return self._shape_of(value) if isinstance(value, fx.Node) else None

    def out(self, node: fx.Node) -> Size:
        return self._shape_of(node) or ()

    def first_input(self, node: fx.Node) -> Size:
        for value in node.all_input_nodes:
            shape = self._shape_of(value)
            if shape is not None:
                return shape
        return ()
