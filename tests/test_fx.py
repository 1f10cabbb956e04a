"""erf._fx: the one op classification the fx passes share."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from erf import _fx, incremental


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


def test_the_incremental_engines_pointwise_ops_are_all_classified():
    """The tables that drifted (relu_, clone, torch.add in only one pass) are one now: erf.incremental's own
    tables are a subset of these, so it can switch to them without losing an op."""
    assert all(issubclass(m, _fx.POINTWISE_MODULES) for m in incremental._POINTWISE_MODULES)
    assert incremental._POINTWISE_FUNCTIONS <= _fx.POINTWISE_FUNCTIONS | _fx.BINARY_FUNCTIONS
    assert incremental._POINTWISE_METHODS <= _fx.POINTWISE_METHODS
    assert incremental._BINARY_FUNCTIONS <= _fx.BINARY_FUNCTIONS and incremental._BINARY_METHODS <= _fx.BINARY_METHODS
    assert {torch.relu_, operator.add, torch.add} <= _fx.POINTWISE_FUNCTIONS | _fx.BINARY_FUNCTIONS
    assert {"relu_", "clone"} <= _fx.POINTWISE_METHODS and F.relu in _fx.POINTWISE_FUNCTIONS
