"""One op classification and one node interpreter for the torch.fx passes of ``erf``.

``erf.rf`` (receptive-field arithmetic) and ``erf.incremental`` (incremental
occlusion) both walk a traced graph and ask, for each node, "what kind of op is
this?". The answer lives here once, so the two cannot drift apart:

* ``pointwise``: one image operand, element by element (activations, BatchNorm in
  eval, dropout in eval, casts): the output unit (y, x) reads input unit (y, x);
* ``binary``: element-wise with two or more operands (add, mul, maximum): the union;
* ``window``: a sliding window (convolution, pooling) with kernel/stride/padding;
* ``layout``: moves elements without computing (permute, view, flatten, roll, ...);
* ``other``: anything else; the pass decides (resampling, reductions, attention).

The tables name modules by class, functions by object and tensor methods by name.
:func:`call_node` runs one node on concrete arguments and :func:`fetch_attr` reads a
``get_attr`` target, the two helpers every interpreter writes otherwise.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["POINTWISE_MODULES", "POINTWISE_FUNCTIONS", "POINTWISE_METHODS", "BINARY_FUNCTIONS", "BINARY_METHODS",
           "WINDOW_MODULES", "LAYOUT_FUNCTIONS", "LAYOUT_METHODS", "op_kind", "call_node", "fetch_attr"]

POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm, nn.Softmax2d,
)
POINTWISE_FUNCTIONS: frozenset = frozenset({
    operator.neg, operator.pos, operator.abs, operator.pow,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.clamp, torch.clip, torch.neg, torch.pow, torch.square,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.prelu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout, F.batch_norm,
    F.local_response_norm,
})
POINTWISE_METHODS: frozenset = frozenset({
    "neg", "pow", "abs", "exp", "log", "sqrt", "rsqrt", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "clamp", "clamp_", "clip", "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type",
    "type_as", "detach", "requires_grad_", "square",
})
BINARY_FUNCTIONS: frozenset = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div,
    torch.divide, torch.maximum, torch.minimum, torch.where,
})
BINARY_METHODS: frozenset = frozenset({
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
    "__add__", "__radd__", "__mul__", "__rmul__", "__sub__", "__rsub__", "__truediv__",
})
WINDOW_MODULES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
LAYOUT_FUNCTIONS: frozenset = frozenset({
    torch.permute, torch.transpose, torch.swapaxes, torch.movedim, torch.roll, torch.unbind, torch.stack,
    torch.squeeze, torch.unsqueeze, torch.narrow, torch.select, torch.flatten, torch.reshape,
    F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle, torch.channel_shuffle,
})
LAYOUT_METHODS: frozenset = frozenset({
    "permute", "transpose", "swapaxes", "movedim", "unflatten", "roll", "unbind", "squeeze", "unsqueeze",
    "narrow", "select", "view", "view_as", "reshape", "reshape_as", "flatten",
})


def op_kind(node: fx.Node, root: nn.Module) -> str:
    """``"pointwise"``, ``"binary"``, ``"window"``, ``"layout"`` or ``"other"`` for one call node (see above).

    Example:
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        >>> [op_kind(n, gm) for n in gm.graph.nodes if n.op == "call_module"]
        ['window', 'pointwise']
    """
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        if isinstance(m, POINTWISE_MODULES):
            return "pointwise"
        if isinstance(m, WINDOW_MODULES):
            return "window"
        if isinstance(m, (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)):
            return "layout"
        return "other"
    if node.op == "call_function":
        if node.target in POINTWISE_FUNCTIONS:
            return "pointwise"
        if node.target in BINARY_FUNCTIONS:
            return "binary"
        if node.target in (F.conv2d, F.max_pool2d, F.avg_pool2d):
            return "window"
        return "layout" if node.target in LAYOUT_FUNCTIONS else "other"
    if node.op == "call_method":
        if node.target in POINTWISE_METHODS:
            return "pointwise"
        if node.target in BINARY_METHODS:
            return "binary"
        return "layout" if node.target in LAYOUT_METHODS else "other"
    return "other"


def fetch_attr(root: nn.Module, target: str) -> Any:
    """The value of a ``get_attr`` node: ``root.a.b.c`` for target ``"a.b.c"``."""
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def call_node(root: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run one ``call_module`` / ``call_function`` / ``call_method`` / ``get_attr`` node on concrete arguments."""
    if node.op == "call_module":
        return root.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        return fetch_attr(root, node.target)
    raise ValueError(f"node {node.name!r} of op {node.op!r} is not a call; expected a call or get_attr node")
