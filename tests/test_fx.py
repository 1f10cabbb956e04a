"""erf._fx: the one op classification the fx passes share."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from erf import _fx, incremental
from erf.graph import truncate


def test_op_kinds_of_a_small_graph():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            y = self.act(self.bn(self.conv(x)))
            return torch.relu_(y + y.clone()).permute(0, 2, 3, 1).mean(-1)

    gm = fx.symbolic_trace(Net())
    kinds = {n.name: _fx.op_kind(n, gm) for n in gm.graph.nodes if n.op not in ("placeholder", "output")}
    assert kinds == {"conv": "window", "bn": "pointwise", "act": "pointwise", "clone": "pointwise", "add": "binary",
                     "relu_": "pointwise", "permute": "layout", "mean": "other"}
    x = torch.rand(1, 3, 8, 8)
    values = {}
    for n in gm.graph.nodes:  # call_node replays the graph exactly
        if n.op == "placeholder":
            values[n] = x
        elif n.op == "output":
            out = values[n.args[0]]
        else:
            values[n] = _fx.call_node(gm, n, fx.node.map_arg(n.args, values.__getitem__),
                                      fx.node.map_arg(n.kwargs, values.__getitem__))
    torch.testing.assert_close(out, gm(x))
    assert _fx.fetch_attr(gm, "conv.weight") is gm.conv.weight


# erf.incremental's own tables before it switched to erf._fx (kept here so no op it handled is lost).
_OLD_INCREMENTAL_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.LocalResponseNorm,
)
_OLD_INCREMENTAL_POINTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, torch.clamp, torch.exp,
    torch.abs, torch.sqrt, torch.rsqrt, torch.square, torch.pow, operator.pow, F.dropout, F.dropout2d,
    torch.neg, operator.neg,
}
_OLD_INCREMENTAL_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "clamp", "abs", "exp", "sqrt", "rsqrt", "pow",
                                      "contiguous", "neg", "square", "float", "to"}
_OLD_INCREMENTAL_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                                     torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum}
_OLD_INCREMENTAL_BINARY_METHODS = {"add", "sub", "mul", "div"}


def test_the_incremental_engines_pointwise_ops_are_all_classified():
    """The tables that drifted (relu_, clone, torch.add in only one pass) are one now: erf.incremental's former
    tables are a subset of these, so switching it to them lost no op, and it keeps none of its own."""
    assert all(issubclass(m, _fx.POINTWISE_MODULES) for m in _OLD_INCREMENTAL_POINTWISE_MODULES)
    assert _OLD_INCREMENTAL_POINTWISE_FUNCTIONS <= _fx.POINTWISE_FUNCTIONS | _fx.BINARY_FUNCTIONS
    assert _OLD_INCREMENTAL_POINTWISE_METHODS <= _fx.POINTWISE_METHODS
    assert _OLD_INCREMENTAL_BINARY_FUNCTIONS <= _fx.BINARY_FUNCTIONS
    assert _OLD_INCREMENTAL_BINARY_METHODS <= _fx.BINARY_METHODS
    assert {torch.relu_, operator.add, torch.add} <= _fx.POINTWISE_FUNCTIONS | _fx.BINARY_FUNCTIONS
    assert {"relu_", "clone"} <= _fx.POINTWISE_METHODS and F.relu in _fx.POINTWISE_FUNCTIONS
    assert not any(hasattr(incremental, name) for name in (
        "_POINTWISE_MODULES", "_POINTWISE_FUNCTIONS", "_POINTWISE_METHODS", "_BINARY_FUNCTIONS", "_BINARY_METHODS"))


class _Drifted(nn.Module):
    """The ops only one of the two passes knew before: torch.relu_, .clone(), torch.add, an eval BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = torch.relu_(y.clone())
        y = torch.add(y, y.sigmoid())
        y += 1.0
        return F.relu_(y)


def test_the_incremental_engine_runs_the_drifted_ops_on_crops_and_stays_exact():
    torch.manual_seed(0)
    model = _Drifted().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    body = truncate(model, "relu__1")
    image = torch.rand(1, 3, 16, 16)
    engine = incremental.IncrementalOcclusion(body, image, full_above=1.0)
    kinds = {n.name: engine._kind(n) for n in engine.graph.nodes if n.op not in ("placeholder", "output")}
    assert kinds == {"conv": "window", "bn": "pointwise", "clone": "pointwise", "relu_": "pointwise",
                     "sigmoid": "pointwise", "add": "binary", "add_1": "binary", "relu__1": "pointwise"}
    positions = torch.tensor([[0, 0], [5, 7], [13, 13]])
    patches = torch.rand(3, 3, 3, 3)
    occluded = image.repeat(3, 1, 1, 1)
    for p, (y, x) in enumerate(positions.tolist()):
        occluded[p, :, y:y + 3, x:x + 3] = patches[p]
    with torch.no_grad():
        expected = body(occluded)
    torch.testing.assert_close(engine(positions, patches), expected)
    torch.testing.assert_close(engine.clean, body(image))  # the in-place ops did not touch the cached clean maps


def test_batch_norm_with_batch_statistics_is_not_run_on_crops():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    engine = incremental.IncrementalOcclusion(truncate(model, "1"), torch.rand(1, 3, 12, 12))
    assert [engine._kind(n) for n in engine.graph.nodes if n.op == "call_module"] == ["window", "generic"]
