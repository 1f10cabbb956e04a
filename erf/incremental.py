"""Exact incremental occlusion inference (Krypton: Nakandala, Kumar, Papakonstantinou, SIGMOD 2019).

An occluder pasted at one position changes only a small window of every
layer's activation: the patch's *projective field*. :class:`IncrementalOcclusion`
keeps the clean image's activation at every node of the traced graph and, for a
batch of occluder positions, recomputes at each layer only that window (plus the
halo its kernel reads, taken from the cached clean activations), running the
layer on the batched crops. The result equals full re-inference within float
round-off; it is not an approximation.

How each kind of node is handled:

* ``Conv2d``, ``MaxPool2d``, ``AvgPool2d`` (stride, zero/-inf padding at the
  borders, dilation, ``ceil_mode``, groups): the changed box is mapped per axis
  through the kernel geometry, and the layer runs on same-size windows with its
  padding moved into the cached clean activation.
* element-wise layers (ReLU and friends, eval-mode BatchNorm, Dropout in eval,
  LRN, channel-wise L2 normalisation and softmax): applied to the crop alone.
* binary element-wise ops (residual ``add``, ``mul`` by a constant) and
  ``torch.cat`` over channels: the union of the operands' boxes.
* global average pooling (``AdaptiveAvgPool2d(1)``, ``mean`` over H and W): the
  clean mean plus the change in the sum over the crop, divided by ``H * W``;
  ParseNet's pool6 goes through here.
* everything else (``flatten``, ``Linear``, interpolation, ...) and any layer
  whose changed box covers more than ``full_above`` of its map: full
  computation on the batch, and full computation for everything after it.

Batching: positions in one batch have boxes of different sizes, so each node
gets one common crop size per batch, the largest box of the batch; every
position's crop is that size, starts at its own box's top-left corner and is
shifted back inside the map at the far borders. A crop then holds the changed
box plus some clean surroundings, which the layer recomputes exactly like any
other pixel.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from erf._fx import call_node, op_kind
from erf._probe import to_device
from erf.graph import TruncatedModel

__all__ = ["IncrementalOcclusion", "MacCount", "GATHERS"]

GATHERS = ("auto", "slices", "batched")


# --------------------------------------------------------------------------- node states

class _Clean:
    """The node's value equals its clean activation (no occluder reached it)."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "CLEAN"


CLEAN = _Clean()


@dataclass
class _Region:
    """A (P, C, H, W) activation equal to the clean one outside per-position boxes.

    ``crop`` (P, C, rh, rw) holds the values at rows ``top[p]:top[p]+rh`` and columns
    ``left[p]:left[p]+rw``; the changed box ``[y0, y1) x [x0, x1)`` (each (P,)) lies inside it.
    """

    crop: Tensor
    top: Tensor
    left: Tensor
    y0: Tensor
    y1: Tensor
    x0: Tensor
    x1: Tensor


@dataclass
class _Full:
    """A value computed in full for the whole batch (a tensor with leading dim P, or anything else)."""

    value: Any


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of Conv2d and Linear layers for one batch of occluder positions.

    Attributes:
        full: MACs of full re-inference of every occluded image up to the layer.
        incremental: MACs restricted to each position's exact changed box (its
            projective field), with no batching slack and no fallback; the ideal.
    """

    full: int
    incremental: int

    @property
    def ratio(self) -> float:
        """Theoretical speed-up of incremental over full inference, ``full / incremental``."""
        return self.full / max(self.incremental, 1)


# --------------------------------------------------------------------------- per-axis geometry

@dataclass(frozen=True)
class _Axis:
    """One axis of a sliding-window layer: kernel, stride, left padding, dilation, input and output sizes."""

    kernel: int
    stride: int
    pad: int
    dilation: int
    n_in: int
    n_out: int

    @property
    def span(self) -> int:
        """Input extent one output reads: ``dilation * (kernel - 1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def pad_after(self) -> int:
        """Padding after the input so that the last output's window fits (covers ``ceil_mode``)."""
        return max(0, (self.n_out - 1) * self.stride - self.pad + self.span - self.n_in)


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _project(lo: Tensor, hi: Tensor, ax: _Axis) -> tuple[Tensor, Tensor]:
    """Map changed input rows ``[lo, hi)`` (P,) to the output rows that read any of them.

    Output ``o`` reads inputs ``o*s - pad .. o*s - pad + span - 1``, so it sees the change
    iff ``o*s - pad <= hi - 1`` and ``o*s - pad + span - 1 >= lo``. Empty inputs stay empty.
    """
    o_lo = _ceil_div(lo + ax.pad - ax.span + 1, ax.stride).clamp(0, ax.n_out)
    o_hi = (torch.div(hi - 1 + ax.pad, ax.stride, rounding_mode="floor") + 1).clamp(0, ax.n_out)
    o_hi = torch.where(hi > lo, torch.maximum(o_hi, o_lo), o_lo)
    return o_lo, o_hi


def _empty_to_zero(y0: Tensor, y1: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A box empty along one axis is empty along both."""
    empty = (y1 <= y0) | (x1 <= x0)
    return y0, torch.where(empty, y0, y1), x0, torch.where(empty, x0, x1)


def _union(boxes: list[tuple[Tensor, Tensor, Tensor, Tensor]], h: int, w: int):
    """Per-position bounding box of several boxes (P,) each; empty boxes are ignored."""
    ly, hy, lx, hx = [], [], [], []
    for y0, y1, x0, x1 in boxes:
        empty = (y1 <= y0) | (x1 <= x0)
        ly.append(torch.where(empty, h, y0))
        hy.append(torch.where(empty, 0, y1))
        lx.append(torch.where(empty, w, x0))
        hx.append(torch.where(empty, 0, x1))
    y0, y1 = torch.stack(ly).amin(0), torch.stack(hy).amax(0)
    x0, x1 = torch.stack(lx).amin(0), torch.stack(hx).amax(0)
    empty = (y1 <= y0) | (x1 <= x0)
    zero = torch.zeros_like(y0)
    return (torch.where(empty, zero, y0), torch.where(empty, zero, y1),
            torch.where(empty, zero, x0), torch.where(empty, zero, x1))


def _crop_origin(lo: Tensor, hi: Tensor, n: int) -> tuple[int, Tensor]:
    """Common crop size for a batch (the largest box) and each position's start, shifted inside ``[0, n)``."""
    size = int((hi - lo).max())
    return size, lo.clamp(max=n - size).clamp(min=0)


# --------------------------------------------------------------------------- gathering windows

def _window(clean: Tensor, region: _Region | None, top: Tensor, left: Tensor, wh: int, ww: int,
            pad: tuple[int, int] = (0, 0), *, vectorized: bool = False) -> Tensor:
    """Gather (P, C, wh, ww) windows at rows ``top[p]:`` / columns ``left[p]:`` of the occluded activation.

    ``clean`` (1, C, H + pads, W + pads) is the cached clean activation already padded with
    ``pad = (pad_top, pad_left)`` before the map; ``top``/``left`` (host tensors) are in
    unpadded coordinates and may be negative. Each window is copied from ``clean``, then the
    part of it that overlaps the position's crop is overwritten with the crop's values.
    Two ways, same values: per-position slice copies (a few microseconds each, several times
    faster on the CPU than an advanced-indexing gather), or with ``vectorized`` one gather
    from the clean map and one from the crops for the whole batch (on a GPU, where one kernel
    launch per position would dominate).
    """
    if vectorized:
        return _window_gathered(clean, region, top, left, wh, ww, pad)
    P = top.shape[0]
    C = clean.shape[1]
    out = clean.new_empty((P, C, wh, ww))  # (P, C, wh, ww)
    tops, lefts = (top + pad[0]).tolist(), (left + pad[1]).tolist()
    for p in range(P):
        out[p] = clean[0, :, tops[p]:tops[p] + wh, lefts[p]:lefts[p] + ww]
    if region is None:
        return out
    rh, rw = region.crop.shape[-2:]
    # Overlap of window p with crop p, in window coordinates [a, b) x [c, d).
    dy = (region.top - top).tolist()  # crop origin relative to the window origin
    dx = (region.left - left).tolist()
    for p in range(P):
        a, b = max(dy[p], 0), min(dy[p] + rh, wh)
        c, d = max(dx[p], 0), min(dx[p] + rw, ww)
        if a < b and c < d:
            out[p, :, a:b, c:d] = region.crop[p, :, a - dy[p]:b - dy[p], c - dx[p]:d - dx[p]]
    return out


def _window_gathered(clean: Tensor, region: _Region | None, top: Tensor, left: Tensor, wh: int, ww: int,
                     pad: tuple[int, int]) -> Tensor:
    """:func:`_window` as two batched gathers and a select; the result is channels_last in memory."""
    device = clean.device
    rows = (top + pad[0])[:, None] + torch.arange(wh)  # (P, wh): rows of the padded clean map, on the host
    cols = (left + pad[1])[:, None] + torch.arange(ww)  # (P, ww)
    index = [rows, cols]
    if region is not None:
        rh, rw = region.crop.shape[-2:]
        ry = rows - pad[0] - region.top[:, None]  # (P, wh): the same rows inside each crop
        rx = cols - pad[1] - region.left[:, None]  # (P, ww)
        index += [ry.clamp(0, rh - 1), rx.clamp(0, rw - 1), (ry >= 0) & (ry < rh), (rx >= 0) & (rx < rw)]
    index = [to_device(i, device) for i in index]
    out = clean[0].permute(1, 2, 0)[index[0][:, :, None], index[1][:, None, :]]  # (P, wh, ww, C)
    if region is not None:
        p = torch.arange(len(top), device=device)[:, None, None]  # (P, 1, 1)
        crop = region.crop.permute(0, 2, 3, 1)[p, index[2][:, :, None], index[3][:, None, :]]  # (P, wh, ww, C)
        inside = index[4][:, :, None, None] & index[5][:, None, :, None]  # (P, wh, ww, 1)
        out = torch.where(inside, crop.to(out.dtype), out)
    return out.permute(0, 3, 1, 2)  # (P, C, wh, ww)


def _paste(clean: Tensor, region: _Region, *, vectorized: bool = False) -> Tensor:
    """The full (P, C, H, W) activation: the clean map with each position's crop pasted in."""
    P = region.crop.shape[0]
    H, W = clean.shape[-2:]
    zero = torch.zeros(P, dtype=torch.long)
    return _window(clean, region, zero, zero, H, W, vectorized=vectorized)


# --------------------------------------------------------------------------- ops beyond erf._fx's tables

# Pointwise in space when they act over channels only (dim 1 of a (B, C, H, W) map), e.g. an L2 norm.
_CHANNEL_FUNCTIONS = {F.normalize: 2, F.softmax: 1, F.log_softmax: 1, torch.softmax: 1, torch.sum: 1,
                      torch.mean: 1, torch.amax: 1, torch.amin: 1, torch.norm: 2}  # -> position of ``dim``
_CHANNEL_METHODS = {"sum": 0, "mean": 0, "amax": 0, "amin": 0, "norm": 1, "softmax": 0, "log_softmax": 0}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _dim_arg(node: fx.Node, position: int, default: Any) -> Any:
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    return node.args[position] if len(node.args) > position else default


def _is_spatial_dims(dim: Any) -> bool:
    if isinstance(dim, int) or dim is None:
        return False
    return {d % 4 for d in dim} == {2, 3}


# --------------------------------------------------------------------------- the engine

class IncrementalOcclusion:
    """Occluded activations of one image, computed incrementally and exactly.

    A drop-in replacement for full re-inference: ``engine(positions, patches)``
    returns what ``body(image with patch p pasted at positions[p])`` would, for
    every ``p``, within float round-off (about 1e-6 relative in float32).

    Args:
        body: the model cut at the target layer, from :func:`erf.graph.truncate`;
            it must be fx-traced (check :meth:`supports`) and in eval mode.
        image: the clean image, shape (1, 3, H, W).
        full_above: a layer whose changed box covers more than this fraction of
            its map is computed in full, and so is everything after it (default 0.6).
        gather: how windows are cut from the cached maps: ``"slices"`` (one copy per position,
            fastest on the CPU), ``"batched"`` (one gather per layer, for GPUs) or ``"auto"``
            (batched on CUDA); the values are the same.

    Example:
        >>> body = truncate(torchvision.models.vgg16(), "features.29")
        >>> engine = IncrementalOcclusion(body, torch.rand(1, 3, 224, 224))
        >>> positions = torch.tensor([[0, 0], [213, 213]])  # top-left (y, x) of each patch
        >>> engine(positions, torch.rand(2, 3, 11, 11)).shape
        torch.Size([2, 512, 14, 14])
    """

    def __init__(self, body: TruncatedModel, image: Tensor, *, full_above: float = 0.6, gather: str = "auto"):
        ok, why = self.supports(body)
        if not ok:
            raise ValueError(f"incremental occlusion cannot run this model: {why}")
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"image must have shape (1, C, H, W), got {tuple(image.shape)}")
        if not 0 < full_above <= 1:
            raise ValueError(f"full_above must be in (0, 1], got {full_above}")
        if gather not in GATHERS:
            raise ValueError(f"gather={gather!r}; expected one of: {', '.join(GATHERS)}")
        self.vectorized = gather == "batched" or (gather == "auto" and image.device.type == "cuda")
        self.body = body
        self.graph: fx.Graph = body.body.graph
        self.image = image
        self.full_above = full_above
        self._modules = dict(body.body.named_modules())
        self._input = next(n for n in self.graph.nodes if n.op == "placeholder")
        self._dependent = self._input_dependent()
        with torch.inference_mode():
            self._clean = self._clean_pass(image)
        self._padded: dict[tuple, Tensor] = {}
        self._kinds: dict[fx.Node, str] = {}
        self._trim_cache()

    # ----------------------------------------------------------------- capability

    @staticmethod
    def supports(body: nn.Module) -> tuple[bool, str]:
        """Whether the engine can run ``body``; when not, the reason (for the caller's one-line notice).

        Example:
            >>> IncrementalOcclusion.supports(truncate(torchvision.models.resnet18(), "layer3"))
            (True, '')
        """
        if not isinstance(body, TruncatedModel):
            return False, f"expected a model cut by erf.graph.truncate, got {type(body).__name__}"
        if not body.traced or not isinstance(body.body, fx.GraphModule):
            return False, f"{type(body.body).__name__} is not fx-traceable, so its layer graph is unknown"
        training = [name or type(m).__name__ for name, m in body.named_modules() if m.training]
        if training:
            return False, f"modules in training mode ({training[0]}, ...); call .eval() first"
        placeholders = [n for n in body.body.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            return False, f"the traced graph takes {len(placeholders)} inputs; expected one image"
        return True, ""

    # ----------------------------------------------------------------- clean pass

    def _input_dependent(self) -> set[fx.Node]:
        dependent = {self._input}
        for node in self.graph.nodes:
            if any(i in dependent for i in node.all_input_nodes):
                dependent.add(node)
        return dependent

    def _execute(self, node: fx.Node, args: tuple, kwargs: dict, *, owned: bool = False) -> Any:
        """Run one node on concrete arguments; an in-place op gets a copy unless we own its input."""
        if _inplace(node, self._modules, kwargs) and not owned and args and isinstance(args[0], Tensor):
            args = (args[0].clone(),) + tuple(args[1:])
        return call_node(self.body.body, node, args, kwargs)

    def _clean_pass(self, image: Tensor) -> dict[fx.Node, Any]:
        values: dict[fx.Node, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                values[node] = image
            elif node.op == "output":
                values[node] = self.body.as_map(values[_output_target(node)], tuple(image.shape[-2:]))
            else:
                args = fx.node.map_arg(node.args, values.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
                values[node] = self._execute(node, args, kwargs)
        return values

    def _padded_clean(self, node: fx.Node, ay: _Axis, ax: _Axis, value: float) -> Tensor:
        key = (node, ay.pad, ax.pad, ay.pad_after, ax.pad_after, value)
        if key not in self._padded:
            clean = self._clean[node]
            self._padded[key] = F.pad(clean, (ax.pad, ax.pad_after, ay.pad, ay.pad_after), value=value)
        return self._padded[key]

    def _trim_cache(self) -> None:
        """Keep only the clean values the incremental pass reads; the other nodes keep their shape.

        Windows (conv, pooling) read their input padded, so the padded copy is made now and the
        unpadded input becomes a view into it; binary ops, concatenation, global pooling and
        generic nodes read their inputs (and global pooling its own clean output); the output
        node is read at the end. Every other activation (most ReLU, BatchNorm and conv outputs)
        is replaced by a ``meta`` tensor of the same shape, which costs no memory.
        """
        keep = set(self._output_node().all_input_nodes) | {self._output_node()}
        views: dict[fx.Node, Tensor] = {}
        for node in self.graph.nodes:
            if node.op in ("placeholder", "output") or node not in self._dependent:
                continue
            if not isinstance(self._clean[node], Tensor):
                keep.update(node.all_input_nodes)
                continue
            kind = self._kind(node)
            if kind == "window":
                ay, ax = self._axes(node)
                src = node.args[0]
                fill = -math.inf if isinstance(self._modules[node.target], nn.MaxPool2d) else 0.0
                padded = self._padded_clean(src, ay, ax, fill)
                views.setdefault(src, padded[..., ay.pad:ay.pad + ay.n_in, ax.pad:ax.pad + ax.n_in])
            elif kind == "pointwise":
                keep.update(a for a in node.all_input_nodes if a is not node.args[0])
            else:
                keep.update(node.all_input_nodes)
                if kind == "gap":
                    keep.add(node)
        for node, value in list(self._clean.items()):
            if node not in self._dependent or not isinstance(value, Tensor):
                continue
            if node in views:  # the same values, without a second copy
                self._clean[node] = views[node]
            elif node not in keep:
                self._clean[node] = torch.empty(value.shape, dtype=value.dtype, device="meta")

    # ----------------------------------------------------------------- public call

    @property
    def clean(self) -> Tensor:
        """The clean image's activation at the target layer, shape (1, C, h, w)."""
        return self._clean[self._output_node()]

    def __call__(self, positions: Tensor, patches: Tensor) -> Tensor:
        """Activations of the image with ``patches[p]`` pasted at ``positions[p]``.

        Args:
            positions: (P, 2) integer top-left corners (y, x), each patch inside the image.
            patches: (P, 3, ph, pw) occluder contents, same dtype and device as the image.

        Returns:
            (P, C, h, w) activations at the target layer.
        """
        H, W = self.image.shape[-2:]
        if positions.dim() != 2 or positions.shape[1] != 2:
            raise ValueError(f"positions must have shape (P, 2), got {tuple(positions.shape)}")
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"positions must be integers, got {positions.dtype}")
        if patches.dim() != 4 or patches.shape[0] != positions.shape[0] or patches.shape[1] != self.image.shape[1]:
            raise ValueError(f"patches must have shape ({positions.shape[0]}, {self.image.shape[1]}, ph, pw), "
                             f"got {tuple(patches.shape)}")
        ph, pw = patches.shape[-2:]
        if ph > H or pw > W:
            raise ValueError(f"patch {ph}x{pw} is larger than the {H}x{W} image")
        positions = positions.to(device="cpu", dtype=torch.long)  # box arithmetic stays on the host: no device syncs
        y, x = positions[:, 0], positions[:, 1]
        bad = (y < 0) | (x < 0) | (y > H - ph) | (x > W - pw)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"position {tuple(positions[i].tolist())} puts the {ph}x{pw} patch outside the "
                             f"{H}x{W} image; expected 0 <= y <= {H - ph} and 0 <= x <= {W - pw}")
        if positions.shape[0] == 0:
            return self.clean.new_empty((0,) + tuple(self.clean.shape[1:]))
        patches = patches.to(device=self.image.device, dtype=self.image.dtype)
        with torch.inference_mode():
            first = _Region(patches, y, x, y, y + ph, x, x + pw)
            return self._run(first, positions.shape[0])

    def macs(self, positions: Tensor, patch_size: tuple[int, int]) -> MacCount:
        """Theoretical Conv2d/Linear multiply-accumulates for ``positions`` with a ``patch_size`` occluder.

        Counted from the layer shapes and each position's exact projective field, with
        no batching slack and no fallback; used to state how close the engine gets to ideal.
        """
        positions = positions.to(device="cpu", dtype=torch.long)
        ph, pw = patch_size
        y, x = positions[:, 0], positions[:, 1]
        boxes: dict[fx.Node, Any] = {self._input: (y, y + ph, x, x + pw)}
        full = incremental = 0
        P = positions.shape[0]
        for node in self.graph.nodes:
            if node.op in ("placeholder", "output") or node not in self._dependent:
                continue
            ins = [boxes[i] for i in node.all_input_nodes if i in self._dependent]
            if any(b == "full" for b in ins):
                box = "full"
            elif not isinstance(self._clean[node], Tensor) or self._clean[node].dim() != 4:
                box = "full"
            else:
                box = self._plan(node, ins)
            boxes[node] = box
            per_pixel, pixels = self._macs_per_pixel(node)
            if per_pixel:
                full += P * per_pixel * pixels
                if box == "full":
                    incremental += P * per_pixel * pixels
                else:
                    y0, y1, x0, x1 = box
                    incremental += per_pixel * int(((y1 - y0) * (x1 - x0)).sum())
        return MacCount(full=full, incremental=incremental)

    # ----------------------------------------------------------------- planning (boxes only)

    def _macs_per_pixel(self, node: fx.Node) -> tuple[int, int]:
        if node.op != "call_module":
            return 0, 0
        m = self._modules[node.target]
        out = self._clean[node]
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            return m.out_channels * (m.in_channels // m.groups) * kh * kw, out.shape[-2] * out.shape[-1]
        if isinstance(m, nn.Linear):
            return m.in_features * m.out_features, out.numel() // out.shape[-1]
        return 0, 0

    def _plan(self, node: fx.Node, ins: list) -> Any:
        """The changed box of ``node`` from its inputs' boxes, or ``"full"``; mirrors :meth:`_step`."""
        kind = self._kind(node)
        if kind == "window":
            ay, ax = self._axes(node)
            (y0, y1, x0, x1), = ins
            y0, y1 = _project(y0, y1, ay)
            x0, x1 = _project(x0, x1, ax)
            return _empty_to_zero(y0, y1, x0, x1)
        if kind == "pointwise":
            return ins[0]
        if kind in ("binary", "cat"):
            h, w = self._clean[node].shape[-2:]
            return _union(ins, h, w)
        return "full"

    # ----------------------------------------------------------------- classification

    def _kind(self, node: fx.Node) -> str:
        """How a node is computed on a changed region: window, pointwise, binary, cat, gap or generic."""
        if node not in self._kinds:
            self._kinds[node] = self._classify(node)
        return self._kinds[node]

    def _classify(self, node: fx.Node) -> str:
        """:func:`erf._fx.op_kind`, narrowed to what the incremental steps can run on a crop."""
        out = self._clean[node]
        if not isinstance(out, Tensor) or out.dim() != 4:
            return self._kind_gap(node) if isinstance(out, Tensor) else "generic"
        kind = op_kind(node, self.body.body)
        if node.op == "call_module":
            m = self._modules[node.target]
            if kind == "window" and _window_module(m):
                return "window"
            if kind == "pointwise" and not _batch_statistics(node, m):
                return "pointwise"
            return self._kind_gap(node)
        dependent_tensors = [a for a in node.all_input_nodes if a in self._dependent]
        if len(dependent_tensors) == 1 and node.args and node.args[0] is dependent_tensors[0]:
            if kind == "pointwise" and not _batch_statistics(node, None):
                return "pointwise"
            dim = None
            if node.op == "call_function" and node.target in _CHANNEL_FUNCTIONS:
                dim = _dim_arg(node, _CHANNEL_FUNCTIONS[node.target], None)
            if node.op == "call_method" and node.target in _CHANNEL_METHODS:
                dim = _dim_arg(node, _CHANNEL_METHODS[node.target] + 1, None)
            if isinstance(dim, (list, tuple)) and len(dim) == 1:
                dim = dim[0]
            if isinstance(dim, int) and dim % 4 == 1:
                return "pointwise"
        if kind == "binary":
            return "binary" if self._binary_ok(node) else "generic"
        if node.op == "call_function" and node.target is torch.cat:
            tensors = node.args[0]
            if _dim_arg(node, 1, 0) % 4 == 1 and all(
                    isinstance(self._clean[t], Tensor) and self._clean[t].dim() == 4
                    and self._clean[t].shape[-2:] == out.shape[-2:] for t in tensors):
                return "cat"
        return self._kind_gap(node)

    def _kind_gap(self, node: fx.Node) -> str:
        """Global average pooling over H and W of a 4-D input, keeping dims or not."""
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or not isinstance(self._clean.get(src), Tensor):
            return "generic"
        if self._clean[src].dim() != 4:
            return "generic"
        if node.op == "call_module":
            m = self._modules[node.target]
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                return "gap"
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            if _dim_arg(node, 1, None) in (1, (1, 1)) or node.kwargs.get("output_size") in (1, (1, 1)):
                return "gap"
        if (node.op == "call_method" and node.target == "mean") or (
                node.op == "call_function" and node.target is torch.mean):
            if _is_spatial_dims(_dim_arg(node, 1, None)) and "dtype" not in node.kwargs:
                return "gap"
        return "generic"

    def _binary_ok(self, node: fx.Node) -> bool:
        """Every tensor operand either has the output's H x W or broadcasts over H and W without changing."""
        h, w = self._clean[node].shape[-2:]
        for a in list(node.args) + list(node.kwargs.values()):
            if isinstance(a, fx.Node):
                v = self._clean[a]
                if not isinstance(v, Tensor):
                    continue
                if v.dim() == 4 and tuple(v.shape[-2:]) == (h, w):
                    continue
                if a in self._dependent or v.dim() > 4 or (v.dim() >= 2 and tuple(v.shape[-2:]) != (1, 1)) \
                        or (v.dim() == 1 and v.shape[0] != 1):
                    return False
        return True

    def _axes(self, node: fx.Node) -> tuple[_Axis, _Axis]:
        m = self._modules[node.target]
        n_in = self._clean[node.args[0]].shape[-2:]
        n_out = self._clean[node].shape[-2:]
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        k, s, p = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size), pair(m.padding)
        d = pair(getattr(m, "dilation", 1))
        return tuple(_Axis(k[i], s[i], p[i], d[i], n_in[i], n_out[i]) for i in range(2))  # type: ignore

    # ----------------------------------------------------------------- incremental pass

    def _output_node(self) -> fx.Node:
        return next(n for n in self.graph.nodes if n.op == "output")

    def _run(self, first: _Region, P: int) -> Tensor:
        env: dict[fx.Node, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = first
            elif node.op == "output":
                target = _output_target(node)
                return self.body.as_map(self._materialize(target, env[target], P), tuple(self.image.shape[-2:]))
            elif node not in self._dependent:
                env[node] = CLEAN
            else:
                env[node] = self._step(node, env, P)
        raise AssertionError("graph without output")  # pragma: no cover

    def _materialize(self, node: fx.Node, state: Any, P: int, *, shape_only: bool = False) -> Any:
        """The full per-batch value of a node (or a meta tensor of its shape when ``shape_only``)."""
        if isinstance(state, _Full):
            return state.value
        clean = self._clean[node]
        if node not in self._dependent or not isinstance(clean, Tensor):
            return clean
        if shape_only:
            return torch.empty((P,) + tuple(clean.shape[1:]), dtype=clean.dtype, device="meta")
        if state is CLEAN:
            return clean.expand((P,) + tuple(clean.shape[1:]))
        return _paste(clean, state, vectorized=self.vectorized)

    def _owned(self, node: fx.Node, env: dict) -> bool:
        """Whether ``node`` may overwrite its first input: it is the only user of a value this pass computed."""
        src = node.args[0] if node.args else None
        return (isinstance(src, fx.Node) and len(src.users) == 1 and src in self._dependent
                and isinstance(env[src], (_Full, _Region)))

    def _generic(self, node: fx.Node, env: dict, P: int) -> _Full:
        shape_only = not isinstance(self._clean[node], Tensor)  # size(), shape, dim(): no values needed
        try:
            args = fx.node.map_arg(node.args, lambda a: self._materialize(a, env[a], P, shape_only=shape_only))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: self._materialize(a, env[a], P, shape_only=shape_only))
            return _Full(self._execute(node, args, kwargs, owned=self._owned(node, env)))
        except (RuntimeError, NotImplementedError):
            if not shape_only:
                raise
            args = fx.node.map_arg(node.args, lambda a: self._materialize(a, env[a], P))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: self._materialize(a, env[a], P))
            return _Full(self._execute(node, args, kwargs))

    def _step(self, node: fx.Node, env: dict, P: int) -> Any:
        states = [env[i] for i in node.all_input_nodes if i in self._dependent]
        if not isinstance(self._clean[node], Tensor):
            return self._generic(node, env, P)
        if all(s is CLEAN for s in states):
            return CLEAN
        kind = self._kind(node)
        if kind == "generic" or any(isinstance(s, _Full) for s in states):
            return self._generic(node, env, P)
        if kind == "window":
            return self._step_window(node, env[node.args[0]], env, P)
        if kind == "pointwise":
            region = env[node.args[0]]
            args = (region.crop,) + tuple(fx.node.map_arg(node.args[1:], lambda a: self._materialize(a, env[a], P)))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: self._materialize(a, env[a], P))
            crop = self._execute(node, args, kwargs, owned=self._owned(node, env) and node.args[0] is not self._input)
            return _Region(crop, region.top, region.left, region.y0, region.y1, region.x0, region.x1)
        if kind in ("binary", "cat"):
            return self._step_union(node, env, P)
        if kind == "gap":
            return self._step_gap(node, env[node.args[0]], P)
        raise AssertionError(kind)  # pragma: no cover

    def _step_window(self, node: fx.Node, region: _Region, env: dict, P: int) -> Any:
        """Conv / pooling on the changed box: same-size windows read from the padded clean input."""
        ay, ax = self._axes(node)
        y0, y1 = _project(region.y0, region.y1, ay)
        x0, x1 = _project(region.x0, region.x1, ax)
        y0, y1, x0, x1 = _empty_to_zero(y0, y1, x0, x1)
        if int((y1 - y0).max()) == 0:
            return CLEAN  # the change fell between strided taps: nothing downstream moves
        rh, top = _crop_origin(y0, y1, ay.n_out)
        rw, left = _crop_origin(x0, x1, ax.n_out)
        if rh * rw > self.full_above * ay.n_out * ax.n_out:
            return self._generic(node, env, P)
        m = self._modules[node.target]
        src = node.args[0]
        fill = -math.inf if isinstance(m, nn.MaxPool2d) else 0.0
        padded = self._padded_clean(src, ay, ax, fill)
        wh, ww = (rh - 1) * ay.stride + ay.span, (rw - 1) * ax.stride + ax.span
        win = _window(padded, region, top * ay.stride - ay.pad, left * ax.stride - ax.pad, wh, ww,
                      pad=(ay.pad, ax.pad), vectorized=self.vectorized)  # (P, C, wh, ww)
        if isinstance(m, nn.Conv2d):
            crop = F.conv2d(win, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        elif isinstance(m, nn.MaxPool2d):
            crop = F.max_pool2d(win, m.kernel_size, m.stride, 0, m.dilation)
        else:
            crop = self._avg_pool(node, m, win, top, left, rh, rw, ay, ax)
        return _Region(crop, top, left, y0, y1, x0, x1)

    def _avg_pool(self, node, m: nn.AvgPool2d, win, top, left, rh, rw, ay, ax) -> Tensor:
        """Window sums over the zero-padded input divided by each output's own divisor.

        The divisor map (how many elements PyTorch divides by at each output, which
        differs at the borders with ``count_include_pad=False`` or ``ceil_mode``) is
        read off the module itself: in-window counts of a ones map over its averages.
        """
        sums = F.avg_pool2d(win, m.kernel_size, m.stride, 0, divisor_override=1)  # (P, C, rh, rw)
        key = (node, "divisor")
        if key not in self._padded:
            ones = torch.ones((1, 1) + tuple(self._clean[node.args[0]].shape[-2:]), dtype=win.dtype, device=win.device)
            counts = F.avg_pool2d(ones, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, divisor_override=1)
            self._padded[key] = (counts / m(ones)).round()  # (1, 1, h, w)
        divisor = _window(self._padded[key], None, top, left, rh, rw, vectorized=self.vectorized)  # (P, 1, rh, rw)
        return sums / divisor

    def _step_union(self, node: fx.Node, env: dict, P: int) -> _Region:
        """Binary element-wise ops and channel concatenation over the union of the operands' boxes."""
        h, w = self._clean[node].shape[-2:]
        spatial = [a for a in node.all_input_nodes
                   if isinstance(self._clean[a], Tensor) and self._clean[a].dim() == 4
                   and tuple(self._clean[a].shape[-2:]) == (h, w)]
        regions = [env[a] for a in spatial if isinstance(env[a], _Region)]
        y0, y1, x0, x1 = _union([(r.y0, r.y1, r.x0, r.x1) for r in regions], h, w)
        rh, top = _crop_origin(y0, y1, h)
        rw, left = _crop_origin(x0, x1, w)

        def crop_of(a: fx.Node) -> Any:
            if a in spatial:
                state = env[a]
                return _window(self._clean[a], state if isinstance(state, _Region) else None, top, left, rh, rw,
                               vectorized=self.vectorized)
            return self._materialize(a, env[a], P)

        args = fx.node.map_arg(node.args, crop_of)
        kwargs = fx.node.map_arg(node.kwargs, crop_of)
        return _Region(self._execute(node, args, kwargs), top, left, y0, y1, x0, x1)

    def _step_gap(self, node: fx.Node, region: Any, P: int) -> _Full:
        """Global average pool: clean mean + (sum of the crop - sum of the clean pixels it replaces) / (H * W)."""
        src = node.args[0]
        clean_in, clean_out = self._clean[src], self._clean[node]
        H, W = clean_in.shape[-2:]
        rh, rw = region.crop.shape[-2:]
        before = _window(clean_in, None, region.top, region.left, rh, rw, vectorized=self.vectorized)  # (P, C, rh, rw)
        delta = (region.crop - before).sum(dim=(2, 3)) / (H * W)  # (P, C)
        out = clean_out + delta.reshape((P,) + tuple(clean_out.shape[1:]))
        return _Full(out)


def _output_target(node: fx.Node) -> Any:
    """What the output node returns: the ``"out"`` entry of a feature extractor's dict, or the value itself."""
    return node.args[0]["out"] if isinstance(node.args[0], dict) else node.args[0]


def _window_module(m: nn.Module) -> bool:
    """A Conv2d / MaxPool2d / AvgPool2d whose geometry :class:`_Axis` reads (zero padding given in pixels)."""
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if isinstance(m, nn.MaxPool2d):
        return not m.return_indices
    return isinstance(m, nn.AvgPool2d)


def _batch_statistics(node: fx.Node, module: nn.Module | None) -> bool:
    """BatchNorm that normalises with the batch's own statistics (no running ones, or ``training=True``):
    every position's output then depends on the whole batch, so it is not pointwise."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.running_mean is None
    if node.op == "call_function" and node.target is F.batch_norm:
        running_mean = node.kwargs.get("running_mean", node.args[1] if len(node.args) > 1 else None)
        training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
        return running_mean is None or bool(training)
    return False


def _inplace(node: fx.Node, modules: dict[str, nn.Module], kwargs: dict) -> bool:
    """Whether running ``node`` overwrites its first argument (``ReLU(inplace=True)``, ``relu_``, ``+=``)."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (bool(kwargs.get("inplace", False)) or node.target in _INPLACE_FUNCTIONS
                or (name.endswith("_") and not name.startswith("__")))
    return node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("__")
