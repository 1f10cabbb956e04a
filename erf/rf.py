"""Theoretical receptive fields (TRF) of every layer of a PyTorch model.

The model is traced with ``torch.fx`` and run once on a zero input of the
given size, so every node knows its real output size; the TRF then follows
from per-axis arithmetic on three numbers per layer (Araujo et al., Distill
2019, "Computing receptive fields of convolutional neural networks"):

* ``rf``: the TRF size in input pixels,
* ``jump``: the distance in input pixels between neighbouring units,
* ``start``: the input coordinate of the centre of unit 0.

A convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d`` maps ``(rf, jump, start)`` to
``(rf + (k-1)*d*jump, jump*s, start + ((k-1)*d/2 - p)*jump)``
(:func:`conv_axis`). Layers that resample a map (transposed convolution,
interpolation, adaptive pooling, replicate padding) list, for each output
unit, the input units it reads; :func:`sampled_axis` fits the affine
``(rf, jump, start)`` that contains every unit's support. It is exact (the
box is the support's bounding box) for integer-stride networks and for
common upsamplings such as bilinear x2; where it is not, ``LayerRF.exact``
is False and the box is the tightest symmetric box around ``start + i*jump``
that contains the support of every unit.

Branches (residual add, concat) give the union of their TRFs; branches whose
centres or jumps disagree are reported, not guessed. Global pooling,
``x.mean((2, 3))`` and flatten followed by Linear make every unit see the
whole input (``is_global``); tiling such a map back to a grid keeps it global.
An op the arithmetic does not know raises ``ValueError`` naming the op and
its module path; nothing is silently treated as identity.

Pixel centres are at integer coordinates ``0 .. H-1``.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from erf._fx import BINARY_FUNCTIONS, BINARY_METHODS, POINTWISE_FUNCTIONS, POINTWISE_METHODS, POINTWISE_MODULES, \
    call_node, fetch_attr, op_kind
from erf.util import unknown_name

__all__ = [
    "LayerRF",
    "receptive_fields",
    "receptive_field",
    "AxisRF",
    "conv_axis",
    "sampled_axis",
    "union_axis",
]

_TOL = 1e-6  # float slack when comparing centres and rounding box edges
_MASKED = -50.0  # an additive attention mask at or below this masks the pair (see _unmasked)


# --------------------------------------------------------------------------- per-axis arithmetic


class AxisRF(NamedTuple):
    """TRF of a map along one axis: size, jump (effective stride) and centre of unit 0, in input pixels."""

    rf: float
    jump: float
    start: float


def conv_axis(a: AxisRF, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> AxisRF:
    """One convolution or pooling window along one axis.

    Args:
        a: the input map's TRF along this axis.
        kernel, stride, padding, dilation: the layer's geometry along this axis
            (``padding`` is the padding before the first element).

    Returns:
        The output map's TRF. ``ceil_mode`` changes only the output size, not this.

    Example:
        >>> conv_axis(AxisRF(1, 1, 0), kernel=3, stride=2, padding=1)
        AxisRF(rf=3, jump=2, start=0.0)
    """
    span = (kernel - 1) * dilation  # distance between the first and last tap, in input units
    return AxisRF(a.rf + span * a.jump, a.jump * stride, a.start + (span / 2 - padding) * a.jump)


def union_axis(a: AxisRF, b: AxisRF) -> AxisRF | None:
    """Union of two branches' TRFs on the same grid, or None where their centres or jumps differ.

    Example:
        >>> union_axis(AxisRF(3, 2, 0), AxisRF(1, 2, 0))
        AxisRF(rf=3, jump=2, start=0)
    """
    if not (math.isclose(a.jump, b.jump, abs_tol=_TOL) and math.isclose(a.start, b.start, abs_tol=_TOL)):
        return None
    return AxisRF(max(a.rf, b.rf), a.jump, a.start)


def sampled_axis(a: AxisRF, sources: Sequence[Sequence[int]], ratio: float, extent: int) -> tuple[AxisRF, bool]:
    """TRF after a layer whose output unit ``o`` reads the input units ``sources[o]``.

    The centre of output unit ``o`` is placed at input-unit coordinate ``u0 + ratio*o``.
    With ``lo = min(min(sources[o]) - ratio*o)`` and ``hi = max(max(sources[o]) - ratio*o)``
    over all units, ``u0 = (lo + hi) / 2`` and the half-width ``(hi - lo) / 2`` is the
    smallest that contains every unit's sources; in pixels the TRF grows by
    ``(hi - lo) * jump`` and the jump becomes ``ratio * jump``. The fit is exact when
    each unit's pixel support (the union of its sources' boxes, clipped to the image)
    has the same bounding box as the fitted box clipped to the image; that is checked
    unit by unit, assuming the input map itself is exact.

    Args:
        a: the input map's TRF along this axis.
        sources: for each output unit, the indices of the input units it reads (may be empty).
        ratio: input units per output unit (``1/2`` for x2 upsampling; 0 when all units read the same).
        extent: the image size along this axis, in pixels (for the exactness check).

    Returns:
        ``(AxisRF, exact)``.

    Example:
        >>> sampled_axis(AxisRF(1, 1, 0), [[0], [0, 1], [0, 1], [1, 2]], 0.5, extent=3)  # bilinear x2
        (AxisRF(rf=2.5, jump=0.5, start=-0.25), True)
    """
    used = [(o, s) for o, s in enumerate(sources) if len(s)]
    if not used:
        raise ValueError("no output unit reads any input unit")
    lo = min(min(s) - ratio * o for o, s in used)
    hi = max(max(s) - ratio * o for o, s in used)
    out = AxisRF(a.rf + (hi - lo) * a.jump, ratio * a.jump, a.start + (lo + hi) / 2 * a.jump)
    exact = len(used) == len(sources)
    half_rf = (a.rf - 1) / 2
    for o, s in used if exact else ():
        true = _clip_span(a.start + min(s) * a.jump - half_rf, a.start + max(s) * a.jump + half_rf, extent)
        c = out.start + o * out.jump
        fit = _clip_span(c - (out.rf - 1) / 2, c + (out.rf - 1) / 2, extent)
        if true != fit:
            exact = False
            break
    return out, exact


def _clip_span(lo: float, hi: float, extent: int) -> tuple[int, int]:
    """Pixels whose centres lie in [lo, hi], clipped to [0, extent): (first, last + 1)."""
    first = max(math.ceil(lo - _TOL), 0)
    last = min(math.floor(hi + _TOL), extent - 1)
    return (first, last + 1) if last >= first else (0, 0)


# --------------------------------------------------------------------------- public result


@dataclass(frozen=True)
class LayerRF:
    """Theoretical receptive field of one layer.

    Attributes:
        name: module path or fx node name (``"features.30"``, ``"layer4"``, ``"layer1.0.add"``).
        size: output (h, w); (1, 1) for (B, C) outputs.
        rf: TRF size per axis in input pixels, unclipped; the input (H, W) when global. After
            attention over windows, the smallest symmetric box around every unit's centre that
            holds its support clipped to the image (windows are cut from the padded map).
        jump: effective stride per axis (fractional after upsampling; 0 when global or tiled).
        start: input coordinate (y, x) of the centre of unit (0, 0).
        is_global: every unit sees the whole input (global pooling, flatten + Linear, tiling).
        input_size: the (H, W) the model was analysed at.
        exact: the box is the exact bounding box of each unit's input support; False only
            after a resampling layer or windowed attention whose per-unit support is not an
            affine grid (see :func:`sampled_axis`), where the box is the smallest symmetric
            one containing it. Attention written out (``q @ k^T``, mask, softmax, ``@ v``, as
            in timm's Swin) is followed pair by pair, so a window and a shift mask hold.
        global_from: for global layers, the first op that made every unit see every pixel
            (``"scaled_dot_product_attention at 'blocks.0.attn'"``, ``"AdaptiveAvgPool2d at 'avgpool'"``).
        layout: how the layer's tensor holds the (h, w) grid of units: ``"NCHW"``, ``"NHWC"``
            (ConvNeXt and Swin blocks) or ``"tokens+K"`` ((B, K + h*w, D) with K leading class,
            distillation or register tokens; ViT). :func:`erf.graph.truncate` gives (B, C, h, w).

    Example:
        >>> r = receptive_field(torchvision.models.vgg16(), "features.30", 224)
        >>> r.size, r.rf, r.jump, r.box(0, 0, clip=True)
        ((7, 7), (212.0, 212.0), (32.0, 32.0), (0, 0, 122, 122))
    """

    name: str
    size: tuple[int, int]
    rf: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]
    is_global: bool
    input_size: tuple[int, int]
    exact: bool = True
    global_from: str = ""
    layout: str = "NCHW"

    def _check_unit(self, y: int, x: int) -> None:
        h, w = self.size
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(f"unit ({y}, {x}) is outside layer {self.name!r}'s {h}x{w} map; "
                             f"expected 0 <= y < {h} and 0 <= x < {w}")

    def center(self, y: int, x: int) -> tuple[float, float]:
        """Input coordinate (y, x) of the centre of unit (y, x): ``start + (y, x) * jump``."""
        self._check_unit(y, x)
        return self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]

    def box(self, y: int, x: int, clip: bool = False) -> tuple[int, int, int, int]:
        """TRF of unit (y, x) as ``(top, left, bottom, right)`` in input pixels, bottom/right exclusive.

        The pixels whose centres lie in ``[center - (rf-1)/2, center + (rf-1)/2]`` (a
        1e-6 slack rounds float noise outward). ``clip=True`` clips to the image; a
        global layer's box is the whole image either way.

        Example:
            >>> r.box(3, 3), r.box(3, 3, clip=True)   # vgg16 pool5 at 224
            ((6, 6, 218, 218), (6, 6, 218, 218))
        """
        self._check_unit(y, x)
        H, W = self.input_size
        if self.is_global:
            return 0, 0, H, W
        cy, cx = self.center(y, x)
        hy, hx = (self.rf[0] - 1) / 2, (self.rf[1] - 1) / 2
        top, left = math.ceil(cy - hy - _TOL), math.ceil(cx - hx - _TOL)
        bottom, right = math.floor(cy + hy + _TOL) + 1, math.floor(cx + hx + _TOL) + 1
        if clip:
            top, left = min(max(top, 0), H), min(max(left, 0), W)
            bottom, right = max(min(bottom, H), top), max(min(right, W), left)
        return top, left, bottom, right


# --------------------------------------------------------------------------- states of traced values


@dataclass(frozen=True)
class _Map:
    """A (B, C, h, w) tensor whose units lie on an affine grid of the input.

    ``unproven`` names the op after which the TRF is only a lower bound (an op that mixes
    tokens in a way the arithmetic cannot follow); such layers are not reported, but a
    later op that makes every unit see every pixel still proves a global TRF.

    ``support``, set by token mixing over windows (:func:`_mixed`), holds per axis and unit
    index the pixels ``(first, last + 1)`` its support spans, clipped to the image, so that
    windows composed over blocks do not compound the symmetric box; the affine fields are
    the smallest symmetric box around each unit's centre that contains them. Rules that
    only know the affine fields drop it (those fields are an upper bound).
    """

    h: AxisRF
    w: AxisRF
    exact: bool = True
    unproven: str = ""
    support: tuple | None = None


@dataclass(frozen=True)
class _Flat:
    """A (B, N) tensor made by flattening a map: units still local, the grid lost."""

    h: AxisRF
    w: AxisRF
    size: tuple[int, int]
    exact: bool = True


class _GlobalState:
    def __repr__(self) -> str:
        return "GLOBAL"


_GLOBAL = _GlobalState()  # every element sees the whole input
# None: the value does not depend on the input (parameters, constants, shapes).


class _Ctx(NamedTuple):
    """What a rule needs about one node: its concrete arguments, their states, and its output."""

    name: str
    desc: str
    args: tuple
    kwargs: dict
    states: tuple  # states of args, same structure
    kwstates: dict
    value: Any
    extent: tuple[int, int]
    call: Callable[[tuple, dict], Any]  # re-runs the node's op on other arguments (to replay layouts)


def _unsupported(ctx: _Ctx, why: str = "") -> ValueError:
    return ValueError(f"cannot work out the receptive field through {ctx.desc} at {ctx.name!r}"
                      + (f": {why}" if why else "; this op is not supported by erf.rf"))


def _arg(ctx: _Ctx, i: int, name: str, default: Any = None) -> Any:
    if len(ctx.args) > i:
        return ctx.args[i]
    return ctx.kwargs.get(name, default)


def _pair(v: Any) -> tuple:
    if isinstance(v, (tuple, list)):
        return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
    return v, v


def _deps(ctx: _Ctx) -> list[tuple[Any, Any]]:
    """(state, value) of every input-dependent tensor among the arguments."""
    out = []

    def walk(state, value):
        if isinstance(state, (tuple, list)) and isinstance(value, (tuple, list)):
            for s, v in zip(state, value):
                walk(s, v)
        elif isinstance(state, dict):
            for k in state:
                walk(state[k], value[k])
        elif state is _GLOBAL or isinstance(state, (_Map, _Flat, _Laid, _Pairs)):  # not a slice's fields
            out.append((state, value))

    walk(ctx.states, ctx.args)
    walk(ctx.kwstates, ctx.kwargs)
    return out


def _main(ctx: _Ctx) -> tuple[Any, torch.Tensor]:
    deps = _deps(ctx)
    if len(deps) != 1:
        raise _unsupported(ctx, f"expected one input that depends on the image, got {len(deps)}")
    return deps[0]


def _spatial(t: torch.Tensor) -> tuple[int, int]:
    return int(t.shape[-2]), int(t.shape[-1])


def _per_axis(state: _Map, fn: Callable[[AxisRF, int], tuple[AxisRF, bool] | AxisRF]) -> _Map:
    """Apply ``fn(axis_rf, axis_index)`` to H and W; ``fn`` may also return ``(AxisRF, exact)``."""
    results = [fn(a, i) for i, a in enumerate((state.h, state.w))]
    results = [(r, True) if isinstance(r, AxisRF) else r for r in results]
    return _Map(results[0][0], results[1][0], state.exact and results[0][1] and results[1][1], state.unproven)


# --------------------------------------------------------------------------- rules


def _union(ctx: _Ctx) -> Any:
    """Element-wise ops and concatenation over channels: union of the inputs' TRFs."""
    deps = _deps(ctx)
    states = [s for s, _ in deps]
    if any(isinstance(s, _Laid) for s in states):
        return _union_laid(ctx, deps)
    if any(s is _GLOBAL for s in states):
        return _GLOBAL
    if all(isinstance(s, _Flat) for s in states):
        first = states[0]
        for s in states[1:]:
            if (s.size, s.h, s.w) != (first.size, first.h, first.w):
                raise _unsupported(ctx, "combines flattened maps of different layers")
        return _Flat(first.h, first.w, first.size, all(s.exact for s in states))
    if not all(isinstance(s, (_Map, _Laid)) for s in states):
        raise _unsupported(ctx, "combines a flattened map with a spatial one")
    if any(isinstance(s, _Laid) for s in states):
        return _union_laid(ctx, deps)
    out_hw = _spatial(ctx.value) if isinstance(ctx.value, torch.Tensor) and ctx.value.dim() == 4 else None
    for _, v in deps:
        if out_hw is not None and _spatial(v) != out_hw:
            raise _unsupported(ctx, f"broadcasts a {_spatial(v)[0]}x{_spatial(v)[1]} map to "
                                    f"{out_hw[0]}x{out_hw[1]}; tile it with expand first")
    return _union_grids(ctx, states)


def _union_grids(ctx: _Ctx, grids: list) -> Any:
    """Union of the TRFs of branches on the same grid of units (``_GLOBAL`` if any branch is global)."""
    if any(g is _GLOBAL for g in grids):
        return _GLOBAL
    h, w, exact = grids[0].h, grids[0].w, grids[0].exact
    unproven = next((g.unproven for g in grids if g.unproven), "")
    for g in grids[1:]:
        uh, uw = union_axis(h, g.h), union_axis(w, g.w)
        if uh is None or uw is None:
            raise ValueError(
                f"branches meeting at {ctx.name!r} ({ctx.desc}) are on different grids: "
                f"centre of unit (0, 0) {(h.start, w.start)} vs {(g.h.start, g.w.start)}, "
                f"jump {(h.jump, w.jump)} vs {(g.h.jump, g.w.jump)}; their union is not one receptive field per unit")
        h, w, exact = uh, uw, exact and g.exact
    sized = next((g.support for g in grids if g.support is not None), None)
    if sized is None or len(grids) == 1:
        return _Map(h, w, exact, unproven, grids[0].support)
    size = (len(sized[0]), len(sized[1]))
    spans = [_spans(g, size, ctx.extent) for g in grids]  # per grid, per axis: (first, last + 1) per unit
    support = tuple([(min(sp[i][u][0] for sp in spans), max(sp[i][u][1] for sp in spans)) for u in range(size[i])]
                    for i in range(2))
    (fh, eh), (fw, ew) = _fit(h, support[0], ctx.extent[0]), _fit(w, support[1], ctx.extent[1])
    return _Map(fh, fw, exact and eh and ew, unproven, support)


def _spans(grid: _Map, size: tuple[int, int], extent: tuple[int, int]) -> tuple:
    """Per axis, the pixels ``(first, last + 1)`` each unit index's TRF spans, clipped to the image."""
    if grid.support is not None:
        return grid.support
    return tuple([_clip_span(a.start + i * a.jump - (a.rf - 1) / 2, a.start + i * a.jump + (a.rf - 1) / 2, n)
                  for i in range(k)] for a, k, n in zip((grid.h, grid.w), size, extent))


def _fit(a: AxisRF, spans: Sequence[tuple[int, int]], extent: int) -> tuple[AxisRF, bool]:
    """The smallest symmetric TRF around each unit's centre ``start + i*jump`` that contains its pixel span
    ``spans[i]``, and whether that box, clipped, is each span exactly."""
    centres = [a.start + i * a.jump for i in range(len(spans))]
    half = max(max(c - first, last - 1 - c) for c, (first, last) in zip(centres, spans) if last > first)
    out = AxisRF(2 * half + 1, a.jump, a.start)
    exact = all(_clip_span(c - half, c + half, extent) == span for c, span in zip(centres, spans))
    return out, exact


def _channel_dim(ctx: _Ctx, dim: int) -> Any:
    """Ops along one dim (softmax, L2 normalise): per-pixel only when that dim is channels."""
    state, v = _main(ctx)
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Laid):
        return _along(ctx, [dim])
    if isinstance(state, _Map) and dim % v.dim() in (0, 1):
        return _union(ctx)
    if isinstance(state, _Flat) and dim % v.dim() == 1:
        return _reduce_all(ctx, state)
    raise _unsupported(ctx, f"it mixes positions along dim {dim} of a {tuple(v.shape)} tensor")


def _conv_like(ctx: _Ctx, kernel, stride, padding, dilation, padding_mode: str = "zeros") -> Any:
    state, v = _main(ctx)
    if state is _GLOBAL:
        return _GLOBAL
    if not isinstance(state, _Map) or v.dim() != 4:
        raise _unsupported(ctx, f"expected a (B, C, h, w) map, got shape {tuple(v.shape)}")
    if padding_mode != "zeros":
        raise _unsupported(ctx, f"padding_mode={padding_mode!r}; only zero padding keeps the TRF a box")
    kernel, stride, dilation = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(dilation)
    if isinstance(padding, str):  # 'valid' / 'same' (stride 1): torch pads d*(k-1) in total, the smaller half first
        padding = (0, 0) if padding == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return _per_axis(state, lambda a, i: conv_axis(a, kernel[i], stride[i], padding[i], dilation[i]))


def _sampled(ctx: _Ctx, sources_fn: Callable[[int, int, int], tuple[list[list[int]], float]]) -> Any:
    """Resampling layers: ``sources_fn(axis, n_in, n_out) -> (sources, ratio)``."""
    state, v = _main(ctx)
    if state is _GLOBAL:
        return _GLOBAL
    out = ctx.value
    if not isinstance(state, _Map) or out.dim() != 4:
        raise _unsupported(ctx, f"expected a (B, C, h, w) map, got shape {tuple(v.shape)}")
    n_in, n_out = _spatial(v), _spatial(out)

    def axis(a: AxisRF, i: int) -> tuple[AxisRF, bool]:
        sources, ratio = sources_fn(i, n_in[i], n_out[i])
        if any(len(s) == 0 for s in sources):
            raise _unsupported(ctx, "some output units read no input unit (stride larger than the kernel)")
        return sampled_axis(a, sources, 0.0 if n_in[i] == 1 else ratio, ctx.extent[i])

    result = _per_axis(state, axis)
    return _maybe_global(result, n_out, ctx.extent)


def _maybe_global(state: _Map, size: tuple[int, int], extent: tuple[int, int]) -> Any:
    """A 1x1 map whose one unit sees every pixel (global pooling) is global."""
    if size != (1, 1):
        return state
    covers = all(
        _clip_span(a.start - (a.rf - 1) / 2, a.start + (a.rf - 1) / 2, n) == (0, n)
        for a, n in ((state.h, extent[0]), (state.w, extent[1]))
    )
    return _GLOBAL if covers else state


def _reduce_all(ctx: _Ctx, state: Any) -> Any:
    """Every output element reads every position of the map (Linear after flatten, mean over H and W)."""
    if state is _GLOBAL:
        return _GLOBAL
    n = state.size if isinstance(state, _Flat) else _spatial(_main(ctx)[1])
    whole = _per_axis(_Map(state.h, state.w, state.exact),
                      lambda a, i: sampled_axis(a, [list(range(n[i]))], 0.0, ctx.extent[i]))
    result = _maybe_global(whole, (1, 1), ctx.extent)
    if result is not _GLOBAL:
        raise _unsupported(ctx, "it pools a map whose units do not see every input pixel, so no unit sees the "
                                "whole input; its TRF is not one box per unit")
    return _GLOBAL


def _conv_transpose_sources(kernel, stride, padding, dilation):
    kernel, stride, padding, dilation = map(_pair, (kernel, stride, padding, dilation))

    def sources(i: int, n_in: int, n_out: int) -> tuple[list[list[int]], float]:
        k, s, p, d = kernel[i], stride[i], padding[i], dilation[i]
        # output o = j*s - p + t*d for input j and tap t in [0, k)
        rows = [[j for j in range(n_in) if (o + p - j * s) % d == 0 and 0 <= (o + p - j * s) // d < k]
                for o in range(n_out)]
        return rows, 1.0 / s

    return sources


def _adaptive_sources(i: int, n_in: int, n_out: int) -> tuple[list[list[int]], float]:
    # PyTorch's bins: [floor(o*n/m), ceil((o+1)*n/m)); they may overlap (3 -> 2: [0, 2), [1, 3)),
    # so the jump is the spacing of the first and last bins' midpoints, not n/m.
    bins = [list(range(o * n_in // n_out, -(-(o + 1) * n_in // n_out))) for o in range(n_out)]
    mid = [(b[0] + b[-1]) / 2 for b in bins]
    return bins, (mid[-1] - mid[0]) / (n_out - 1) if n_out > 1 else 0.0


def _interpolate_sources(size, scale_factor, mode, align_corners, recompute_scale_factor, antialias=False):
    """Which input rows each output row of ``F.interpolate`` reads, found by interpolating one-hot rows."""

    def sources(i: int, n_in: int, n_out: int) -> tuple[list[list[int]], float]:
        basis = torch.eye(n_in, dtype=torch.float64)  # (n_in, n_in): channel c is one-hot at row c
        basis = basis.view(1, n_in, n_in, 1) if i == 0 else basis.view(1, n_in, 1, n_in)
        kw: dict[str, Any] = {"mode": mode, "align_corners": align_corners,
                              "recompute_scale_factor": recompute_scale_factor, "antialias": antialias}
        if size is not None:
            kw["size"] = (n_out, 1) if i == 0 else (1, n_out)
            sf = None
        else:
            sf = _pair(scale_factor)[i]
            kw["scale_factor"] = (sf, 1.0) if i == 0 else (1.0, sf)
        if mode in ("nearest", "nearest-exact", "area"):
            kw.pop("align_corners")
        if mode not in ("bilinear", "bicubic"):
            kw.pop("antialias")
        out = F.interpolate(basis, **kw).flatten(2)  # (1, n_in, n_out): weight of input c in output o
        if out.shape[-1] != n_out:
            raise ValueError(f"interpolation replay gave {out.shape[-1]} rows, expected {n_out}")
        rows = [torch.nonzero(out[0, :, o]).flatten().tolist() for o in range(n_out)]
        if align_corners and mode in ("linear", "bilinear", "bicubic", "trilinear"):
            ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        elif sf is not None and not recompute_scale_factor:
            ratio = 1.0 / sf
        else:
            ratio = n_in / n_out
        return rows, ratio

    return sources


def _pad(ctx: _Ctx, pad: Sequence[int], mode: str) -> Any:
    state, v = _main(ctx)
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Laid) and mode == "constant":  # padding tokens or channels last: the pads are no unit
        return _settle(state.grid, state.size, F.pad(state.pos, tuple(pad), value=-1))
    if not isinstance(state, _Map) or v.dim() != 4:
        raise _unsupported(ctx, f"expected a (B, C, h, w) map, got shape {tuple(v.shape)}")
    pad = list(pad) + [0] * (4 - len(pad))
    before = (pad[2], pad[0])  # F.pad lists the last dim first: (left, right, top, bottom)
    if mode == "constant":  # zero padding: same as a 1x1 window with negative offset
        return _per_axis(state, lambda a, i: conv_axis(a, 1, 1, before[i], 1))
    if mode == "replicate":  # border units repeat: output o reads clamp(o - before)
        def rep(i: int, n_in: int, n_out: int):
            return [[min(max(o - before[i], 0), n_in - 1)] for o in range(n_out)], 1.0
        return _sampled(ctx, rep)
    raise _unsupported(ctx, f"padding mode {mode!r}")


def _getitem(ctx: _Ctx) -> Any:
    state, idx = ctx.states[0], ctx.args[1]
    if isinstance(state, (tuple, list)):
        return state[idx]
    v = ctx.args[0]
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Laid):
        return _layout(ctx)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.Tensor) for i in idx) or idx.count(Ellipsis) > 1:
        raise _unsupported(ctx, f"indexing with {idx!r}")
    if any(i is None for i in idx):
        return _layout(ctx)
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (v.dim() - len(idx) + 1) + idx[e + 1:]
    idx = idx + (slice(None),) * (v.dim() - len(idx))
    full = [isinstance(i, slice) and i == slice(None) for i in idx]
    if isinstance(state, _Flat):
        if all(full[1:]):
            return state
        raise _unsupported(ctx, "indexing a flattened map")
    if v.dim() != 4 or not all(isinstance(i, slice) for i in idx):
        return _layout(ctx)  # an integer index drops an axis: follow the positions
    crops = []
    for i, n in zip(idx[2:], _spatial(v)):
        crops.append(i.indices(n)[::2])  # (first, step)
    # a crop is a 1x1 window with stride `step` and offset `first`
    return _per_axis(state, lambda a, k: conv_axis(a, 1, crops[k][1], -crops[k][0], 1))


def _reshape(ctx: _Ctx) -> Any:
    state, v = _main(ctx)
    out = ctx.value
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Map) and out.dim() == 4 and _spatial(out) == _spatial(v) and out.shape[0] == v.shape[0]:
        return state
    if isinstance(state, _Map) and out.dim() == 2 and out.shape[0] == v.shape[0]:
        return _Flat(state.h, state.w, _spatial(v), state.exact)
    if isinstance(state, _Flat) and out.dim() == 2 and out.shape[0] == v.shape[0]:
        return state
    return _layout(ctx)  # tokens, channels last, channel groups, windows: follow the positions


def _flatten(ctx: _Ctx, start_dim: int = 0, end_dim: int = -1) -> Any:
    state, v = _main(ctx)
    if state is _GLOBAL or isinstance(state, _Flat):
        return state
    if isinstance(state, _Map) and v.dim() == 4 and start_dim % 4 <= 1 and end_dim % 4 == 3:
        return _Flat(state.h, state.w, _spatial(v), state.exact)
    if isinstance(state, _Map) and v.dim() == 4 and end_dim % 4 <= 1:  # flattening batch/channels only
        return state
    return _layout(ctx)


def _linear(ctx: _Ctx) -> Any:
    state, v = _main(ctx)
    if isinstance(state, (_Map, _Laid)):
        return _along(ctx, [-1])  # per unit over channels; over a spatial or token axis it mixes units
    return _reduce_all(ctx, state)


def _reduction(ctx: _Ctx) -> Any:
    """mean / sum / amax ... over dims: over both spatial dims is global; over channels is per pixel."""
    state, v = _main(ctx)
    dim = _arg(ctx, 1, "dim", None)
    if dim is None:
        dims = set(range(v.dim()))
    else:
        dims = {d % v.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Laid):
        return _along(ctx, sorted(dims))
    if isinstance(state, _Flat):
        return _reduce_all(ctx, state) if 1 in dims else state
    if dims & {2, 3} == {2, 3}:
        return _reduce_all(ctx, state)
    if not dims & {2, 3} and ctx.value.dim() == 4:
        return state
    raise _unsupported(ctx, f"reducing dims {sorted(dims)} of a {tuple(v.shape)} map")


def _expand(ctx: _Ctx) -> Any:
    """expand / expand_as / repeat / broadcast_to: tiling a 1-unit axis gives jump 0."""
    state, v = ctx.states[0], ctx.args[0]  # expand_as(other) reads only other's shape
    if state is None:
        return None
    out = ctx.value
    if state is _GLOBAL:
        return _GLOBAL
    if isinstance(state, _Laid):
        return _layout(ctx)
    if not isinstance(state, _Map) or v.dim() != 4 or out.dim() != 4:
        raise _unsupported(ctx, f"tiling a {tuple(v.shape)} tensor to {tuple(out.shape)}")
    n_in, n_out = _spatial(v), _spatial(out)

    def axis(a: AxisRF, i: int) -> AxisRF:
        if n_in[i] == n_out[i]:
            return a
        if n_in[i] == 1:
            return AxisRF(a.rf, 0.0, a.start)
        raise _unsupported(ctx, f"tiling a {n_in[i]}-unit axis to {n_out[i]} units repeats the grid")

    return _per_axis(state, axis)


def _split(ctx: _Ctx) -> Any:
    state, v = _main(ctx)
    dim = _arg(ctx, 2, "dim", 0)  # split(x, size, dim) and chunk(x, chunks, dim) alike
    if isinstance(state, _Laid) or (isinstance(state, _Map) and dim % v.dim() > 1):
        return _layout(ctx)
    return tuple(state for _ in ctx.value)


def _cat(ctx: _Ctx) -> Any:
    dim = _arg(ctx, 1, "dim", 0)
    v = ctx.value
    deps = _deps(ctx)
    if any(isinstance(s, _Laid) for s, _ in deps) or (dim % v.dim() > 1 and any(isinstance(s, _Map) for s, _ in deps)):
        return _layout(ctx)
    if (isinstance(ctx.states[0], (tuple, list)) and any(s is None for s in ctx.states[0])
            and any(isinstance(s, _Map) for s, _ in deps)):
        return _layout(ctx)  # an image-independent tensor joins the map's channels: positions say which
    return _union(ctx)


@dataclass(frozen=True, eq=False)
class _Laid:
    """A map's units in any other layout: tokens (B, N, D), channels last (B, H, W, C), windows, ...

    ``pos`` has the value's shape (on the CPU): ``pos[i] = y * size[1] + x`` for the unit
    (y, x) of the ``size`` = (h, w) grid that element ``i`` belongs to, and -1 for elements
    of no unit (class, distillation and register tokens, padding). ``grid`` is the TRF the
    units share: a ``_Map``, or ``_GLOBAL`` once an op mixed every unit.
    """

    grid: Any
    size: tuple[int, int]
    pos: torch.Tensor


def _grid_pos(size: tuple[int, int], shape: Sequence[int]) -> torch.Tensor:
    """Positions of a (B, C, h, w) map: unit y*w + x everywhere in channel c of sample b."""
    h, w = size
    return torch.arange(h * w).view(1, 1, h, w).expand(*shape).contiguous()  # (B, C, h, w)


def _laid_of(state: Any, value: Any) -> _Laid | None:
    """``state`` of ``value`` as a :class:`_Laid` (None where it has no grid of units: a pooled global)."""
    if isinstance(state, _Laid):
        return state
    if not isinstance(value, torch.Tensor):
        return None
    if (isinstance(state, _Map) or state is _GLOBAL) and value.dim() == 4:
        return _Laid(state, _spatial(value), _grid_pos(_spatial(value), value.shape))
    if isinstance(state, _Flat) and value.dim() == 2:
        h, w = state.size
        pos = torch.arange(h * w).repeat(value.shape[1] // (h * w)).expand(*value.shape).contiguous()  # (B, C*h*w)
        return _Laid(_Map(state.h, state.w, state.exact), state.size, pos)
    return None


def _settle(grid: Any, size: tuple[int, int], pos: torch.Tensor) -> Any:
    """Back to the usual states where possible: a (B, C, h, w) layout is a plain map again."""
    if not bool((pos >= 0).any()):  # only class tokens and the like: no unit of the grid left
        return _GLOBAL if grid is _GLOBAL else None
    if pos.dim() == 4 and tuple(pos.shape[-2:]) == size and torch.equal(pos, _grid_pos(size, pos.shape)):
        return grid
    return _Laid(grid, size, pos)


def _common_grid(ctx: _Ctx, laids: list[_Laid]) -> tuple[tuple[int, int], list]:
    sizes = {l.size for l in laids}
    if len(sizes) > 1:
        raise _unsupported(ctx, f"combines tokens of grids of different sizes {sorted(sizes)}")
    return laids[0].size, [l.grid for l in laids]


def _layout(ctx: _Ctx) -> Any:
    """Ops that only move elements (permute, transpose, view, reshape, flatten, unflatten, cat, split,
    roll, indexing): the op is replayed on the element positions, so the spatial axes are followed
    wherever they go, and a layout that is (B, C, h, w) again is a plain map."""
    deps = _deps(ctx)
    laids = [_laid_of(st, v) for st, v in deps]
    if any(l is None for l in laids):
        if all(st is _GLOBAL for st, _ in deps):
            return _GLOBAL
        raise _unsupported(ctx, "it moves elements of a tensor whose units are not on a grid")
    size, grids = _common_grid(ctx, laids)
    if len({id(g) for g in grids}) > 1 and len(set(map(repr, grids))) > 1:
        raise _unsupported(ctx, "it puts units with different receptive fields into one tensor")
    pos_of = {id(v): l.pos for (_, v), l in zip(deps, laids)}

    def sub(value: Any, state: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if state is None:
                return torch.full(value.shape, -1, dtype=torch.long)  # an image-independent tensor (class token)
            return pos_of[id(value)]
        if isinstance(value, (tuple, list)) and isinstance(state, (tuple, list)):
            return type(value)(sub(v, st) for v, st in zip(value, state))
        return value

    args = tuple(sub(a, st) for a, st in zip(ctx.args, ctx.states))
    kwargs = {k: sub(v, ctx.kwstates.get(k)) for k, v in ctx.kwargs.items()}
    out = ctx.call(args, kwargs)
    if isinstance(out, (tuple, list)):
        return tuple(_settle(grids[0], size, o) for o in out)
    return _settle(grids[0], size, out)


def _union_laid(ctx: _Ctx, deps: list) -> Any:
    """Element-wise ops on tokens: every element keeps its unit, the TRFs of the operands unite."""
    seen_all = any(st is _GLOBAL for st, _ in deps)  # e.g. a squeeze-excitation scale: makes the result global
    laids = [_laid_of(st, v) for st, v in deps if st is not _GLOBAL]
    if any(l is None for l in laids):
        raise _unsupported(ctx, "it combines tokens with a tensor whose units are not on a grid")
    size, grids = _common_grid(ctx, laids)
    grids += [_GLOBAL] if seen_all else []
    shape = ctx.value.shape
    pos = torch.full(shape, -1, dtype=torch.long)
    for l in laids:
        p = l.pos.expand(shape)
        clash = (p >= 0) & (pos >= 0) & (p != pos)
        if bool(clash.any()):
            raise _unsupported(ctx, "it combines elements of different units of the grid")
        pos = torch.maximum(pos, p)
    return _settle(_union_grids(ctx, grids), size, pos)


def _unit_sets(pos: torch.Tensor, dims: Sequence[int], n: int) -> torch.Tensor:
    """(S, n) bool: the units each slice of ``pos`` along ``dims`` holds, one row per index of the other dims."""
    dims = [d % pos.dim() for d in dims]
    rest = [d for d in range(pos.dim()) if d not in dims]
    p = pos.permute(*rest, *dims).reshape(-1, math.prod(pos.shape[d] for d in dims))  # (S, mixed)
    hits = torch.zeros(p.shape[0], n + 1, dtype=torch.bool)
    hits.scatter_(1, p + 1, True)  # column 0 collects the -1s
    return hits[:, 1:]


def _mixed(ctx: _Ctx, grid: Any, size: tuple[int, int], sets: torch.Tensor, own: torch.Tensor,
           reads: torch.Tensor | None = None) -> Any:
    """An op whose every output element reads whole slices of tokens (attention, a Linear over tokens).

    ``sets`` (S, h*w) says which units each slice mixes; ``own`` the positions of the output
    elements. If every slice holds every unit, the TRF is global. Otherwise (windows) each
    unit's TRF is the union of the TRFs of the units it shares a slice with: per axis, the
    rows (columns) those units occupy, fitted with :func:`sampled_axis` (exact only when
    every unit's sources form a full rectangle of rows x columns). ``reads`` (h*w, h*w), when
    given, says exactly which units each unit reads (attention under a mask).
    """
    h, w = size
    if reads is None:
        if grid is _GLOBAL or bool(sets.all(dim=1).all()):
            return _settle(_GLOBAL, size, own)
        reads = (sets.T.float() @ sets.float()) > 0  # (h*w, h*w): units that share a slice
    elif grid is _GLOBAL or bool(reads.all()):
        return _settle(_GLOBAL, size, own)
    spans = _spans(grid, size, ctx.extent)  # the TRF of every unit, per axis
    uy, ux = torch.arange(h * w) // w, torch.arange(h * w) % w  # (n,) row and column of each unit
    support, exact = [], grid.exact
    for (first, last), idx, k in zip((zip(*spans[0]), zip(*spans[1])), (uy, ux), (h, w)):
        first, last = torch.tensor(first)[idx], torch.tensor(last)[idx]  # (n,): span of each read unit
        lo = torch.where(reads, first[None, :], 1 << 30).amin(dim=1)  # (n,): over the units each unit reads
        hi = torch.where(reads, last[None, :], -1).amax(dim=1)
        lo, hi = torch.minimum(lo, first), torch.maximum(hi, last)  # a unit that reads nothing keeps its own
        lo, hi = (lo.view(h, w), hi.view(h, w)) if idx is uy else (lo.view(h, w).T, hi.view(h, w).T)
        exact = exact and bool((lo == lo[:, :1]).all() and (hi == hi[:, :1]).all())  # rows x columns
        support.append([(int(lo[i].min()), int(hi[i].max())) for i in range(k)])
    (gh, eh), (gw, ew) = _fit(grid.h, support[0], ctx.extent[0]), _fit(grid.w, support[1], ctx.extent[1])
    return _settle(_Map(gh, gw, exact and eh and ew, grid.unproven, tuple(support)), size, own)


def _along(ctx: _Ctx, dims: Sequence[int]) -> Any:
    """Ops that mix ``dims`` (Linear and LayerNorm: the last; softmax, mean: any): per unit where those
    dims hold channels only; over a token axis they mix tokens; merged neighbours (patch merging) regrid."""
    state, v = _main(ctx)
    laid = _laid_of(state, v)
    if laid is None:
        return _GLOBAL if state is _GLOBAL else _reduce_all(ctx, state)
    out = ctx.value
    dims = sorted({d % v.dim() for d in dims})
    first = laid.pos
    for d in dims:
        first = first.narrow(d, 0, 1)
    if torch.equal(first.expand(v.shape), laid.pos):  # those dims are channels: per unit
        own = first if out.dim() == v.dim() else first.reshape(out.shape[:0] + tuple(
            n for d, n in enumerate(first.shape) if d not in dims))
        return _settle(laid.grid, laid.size, own.expand(out.shape))
    n = laid.size[0] * laid.size[1]
    sets = _unit_sets(laid.pos, dims, n)  # (S, n)
    merged = _merged_blocks(ctx, laid, sets, first, out) if out.dim() == v.dim() else None
    if merged is not None and _layout_name(merged) is not None:
        return merged
    if out.shape == v.shape:  # mixing along a token axis that stays: e.g. a Linear over tokens
        return _mixed(ctx, laid.grid, laid.size, sets, laid.pos)
    if bool(sets.all(dim=1).all()) or laid.grid is _GLOBAL:  # pooled over every unit
        return _GLOBAL
    raise _unsupported(ctx, f"it mixes positions along dims {dims} of a {tuple(v.shape)} tensor")


def _merged_blocks(ctx: _Ctx, laid: _Laid, sets: torch.Tensor, first: torch.Tensor, out: torch.Tensor) -> Any:
    """Patch merging (Swin): the mixed dims hold a ky x kx block of units, the blocks tile the grid
    with strides (sy, sx); the blocks are the units of a new, coarser grid. None if not that pattern."""
    h, w = laid.size
    counts = sets.sum(dim=1)
    if not bool((counts > 1).all()):
        return None
    units = sets.view(-1, h, w)
    ys, xs = units.any(dim=2), units.any(dim=1)  # (S, h), (S, w)
    y0, x0 = ys.float().argmax(dim=1), xs.float().argmax(dim=1)
    ky, kx = ys.sum(dim=1), xs.sum(dim=1)
    if len(set(ky.tolist())) != 1 or len(set(kx.tolist())) != 1 or not bool((counts == ky * kx).all()):
        return None
    ky, kx = int(ky[0]), int(kx[0])
    ty, tx = sorted(set(y0.tolist())), sorted(set(x0.tolist()))
    sy = ty[1] - ty[0] if len(ty) > 1 else ky
    sx = tx[1] - tx[0] if len(tx) > 1 else kx
    if ty != list(range(ty[0], ty[0] + sy * len(ty), sy)) or tx != list(range(tx[0], tx[0] + sx * len(tx), sx)):
        return None
    grid = _GLOBAL if laid.grid is _GLOBAL else _per_axis(  # a global grid stays global, on the coarser grid
        laid.grid, lambda a, i: conv_axis(a, (ky, kx)[i], (sy, sx)[i], -(ty[0], tx[0])[i], 1))
    new = (len(ty), len(tx))
    if grid is not _GLOBAL and laid.grid.support is not None:  # block j spans its units' spans
        old = laid.grid.support
        support = tuple([(min(old[i][t0 + j * s + q][0] for q in range(k)), max(old[i][t0 + j * s + q][1]
                                                                                 for q in range(k)))
                         for j in range(m)] for i, (t0, s, k, m) in enumerate(((ty[0], sy, ky, new[0]),
                                                                              (tx[0], sx, kx, new[1]))))
        (fh, eh), (fw, ew) = _fit(grid.h, support[0], ctx.extent[0]), _fit(grid.w, support[1], ctx.extent[1])
        grid = _Map(fh, fw, laid.grid.exact and eh and ew, grid.unproven, support)
    slice_unit = (y0 - ty[0]) // sy * new[1] + (x0 - tx[0]) // sx  # (S,): new unit of each slice
    own = slice_unit.view(first.shape)
    return _settle(grid, new, own.expand(out.shape))


def _attention(ctx: _Ctx, query: Any, key: Any, value: Any, qs: Any, ks: Any, vs: Any, token_dim: int) -> Any:
    """Attention: each query token reads every key/value token of its slice (sequence, window)."""
    laids = {n: _laid_of(st, t) for n, st, t in (("q", qs, query), ("k", ks, key), ("v", vs, value)) if st is not None}
    if any(l is None for l in laids.values()):
        return _GLOBAL
    size, grids = _common_grid(ctx, list(laids.values()))
    grid = _union_grids(ctx, grids)
    out = ctx.value[0] if isinstance(ctx.value, (tuple, list)) else ctx.value
    n = size[0] * size[1]
    sets = None
    for name in ("k", "v"):
        if name in laids:
            s_ = _unit_sets(laids[name].pos, [token_dim, -1], n)
            sets = s_ if sets is None else sets | s_
    if "q" in laids:
        q = laids["q"].pos
        if not torch.equal(q.narrow(-1, 0, 1).expand(q.shape), q):
            raise _unsupported(ctx, f"its first operand {tuple(q.shape)} mixes positions along its last dim")
        own = q.narrow(-1, 0, 1).expand(out.shape)
    else:
        own = torch.full(out.shape, -1, dtype=torch.long)  # learned queries: no unit of their own
    if sets is None:
        return _settle(grid, size, own)
    return _mixed(ctx, grid, size, sets, own)


def _matmul(ctx: _Ctx) -> Any:
    """``a @ b``: with one image operand a Linear over its last dim (or rows); with two that both contract
    channels, attention scores (:class:`_Pairs`, followed through mask and softmax to ``@ v``); with two
    otherwise, each row of ``a`` reads every token of ``b``'s slice."""
    deps = _deps(ctx)
    a, b = ctx.args[0], ctx.args[1]
    if len(deps) == 1:
        return _along(ctx, [-1] if deps[0][1] is a else [-2])
    sa, sb = ctx.states[0], ctx.states[1]
    pairs = _score_pairs(ctx, a, b, sa, sb)
    return pairs if pairs is not None else _attention(ctx, a, b, None, sa, sb, None, -2)


def _einsum(ctx: _Ctx) -> Any:
    """``einsum`` of one or two operands: each output element reads its first image operand at its own
    indices (that operand must hold channels along the summed letters) and, with a second image operand
    (attention in MaxViT), every token of that operand's slice."""
    eq, ops = ctx.args[0], ctx.args[1:]
    ops = tuple(ops[0]) if len(ops) == 1 and isinstance(ops[0], (tuple, list)) else ops
    states = ctx.states[1:]
    states = tuple(states[0]) if len(states) == 1 and isinstance(states[0], (tuple, list)) else states
    if "->" not in eq or "." in eq:
        raise _unsupported(ctx, f"einsum {eq!r}: only explicit equations without '...'")
    ins, lo = eq.replace(" ", "").split("->")
    letters = ins.split(",")
    image = [(l, _laid_of(st, t), st) for l, t, st in zip(letters, ops, states) if st is not None]
    if any(laid is None for _, laid, _ in image):
        if all(st is _GLOBAL for _, _, st in image):
            return _GLOBAL
        raise _unsupported(ctx, "einsum of a tensor whose units are not on a grid")
    size, grids = _common_grid(ctx, [laid for _, laid, _ in image])
    grid = _union_grids(ctx, grids)
    la, a = image[0][0], image[0][1].pos
    summed = [i for i, c in enumerate(la) if c not in lo]
    first = a
    for d in summed:
        first = first.narrow(d, 0, 1)
    if not torch.equal(first.expand(a.shape), a):
        sets = _unit_sets(a, summed, size[0] * size[1])
        if grid is _GLOBAL or bool(sets.all(dim=1).all()):
            return _GLOBAL
        raise _unsupported(ctx, f"einsum {eq!r} sums positions of its first operand")
    kept = [c for c in la if c in lo]
    own = first.squeeze(summed) if summed else first  # letters ``kept``, in la's order
    own = own.permute(*sorted(range(len(kept)), key=lambda i: lo.index(kept[i])))
    for i, c in enumerate(lo):
        if c not in kept:
            own = own.unsqueeze(i)
    own = own.expand(ctx.value.shape)
    if len(image) == 1:
        return _settle(grid, size, own)
    lb, b = image[1][0], image[1][1].pos
    mixed = [i for i, c in enumerate(lb) if not (c in la and c in lo)]
    return _mixed(ctx, grid, size, _unit_sets(b, mixed, size[0] * size[1]), own)


def _sdpa(ctx: _Ctx) -> Any:
    q, k, v = (_arg(ctx, i, n) for i, n in enumerate(("query", "key", "value")))
    qs, ks, vs = (ctx.states[i] if len(ctx.states) > i else ctx.kwstates.get(n)
                  for i, n in enumerate(("query", "key", "value")))
    mask, mask_state = _arg(ctx, 3, "attn_mask"), (ctx.states[3] if len(ctx.states) > 3 else
                                                    ctx.kwstates.get("attn_mask"))
    if isinstance(mask, torch.Tensor) and mask_state is None and qs is not None and ks is not None:
        masked = _masked_attention(ctx, q, k, qs, ks, vs, mask)
        if masked is not None:
            return masked
    return _attention(ctx, q, k, v, qs, ks, vs, -2)


def _unmasked(offset: torch.Tensor) -> torch.Tensor:
    """Where an image-independent attention mask lets a pair through: True in a boolean mask, above
    ``_MASKED`` in an additive one (Swin writes -100; a pair offset by -50 or less weighs below e**-50,
    about 2e-22, of an unmasked one: nothing in float32, whose resolution is 1.2e-7). On the CPU. A mask
    on the meta device has no values: every pair counts (an upper bound)."""
    if offset.is_meta:
        return torch.ones(offset.shape, dtype=torch.bool)
    offset = offset.detach().cpu()
    return offset > _MASKED if offset.is_floating_point() else offset.bool()


def _masked_attention(ctx: _Ctx, q, k, qs, ks, vs, mask: torch.Tensor) -> Any:
    """Attention under an image-independent mask (Swin's shifted windows): a query reads only the keys (and
    their values) its mask lets through (:func:`_unmasked`)."""
    lq, lk = _laid_of(qs, q), _laid_of(ks, k)
    lv = _laid_of(vs, _arg(ctx, 2, "value")) if vs is not None else None
    if lq is None or lk is None or (vs is not None and lv is None):
        return None
    size, grids = _common_grid(ctx, [lq, lk] + ([lv] if lv is not None else []))
    qp, kp = lq.pos[..., 0], lk.pos[..., 0]  # (..., L), (..., S): each token's unit (channels constant)
    vp = lv.pos[..., 0] if lv is not None else torch.full_like(kp, -1)  # (..., S)
    L, S = qp.shape[-1], kp.shape[-1]
    allowed = _unmasked(mask)
    shape = torch.broadcast_shapes(qp.shape[:-1], kp.shape[:-1], vp.shape[:-1], allowed.shape[:-2]) + (L, S)
    row, col, vunit = qp[..., :, None].expand(shape), kp[..., None, :].expand(shape), vp[..., None, :].expand(shape)
    own = lq.pos.narrow(-1, 0, 1).expand(ctx.value.shape)
    return _attend(ctx, _union_grids(ctx, grids), size, row, col, allowed.expand(shape), vunit, own)


def _attend(ctx: _Ctx, grid: Any, size: tuple[int, int], row: torch.Tensor, col: torch.Tensor,
            live: torch.Tensor, vunit: torch.Tensor, own: torch.Tensor) -> Any:
    """Attention as pairs (query ``row``, key ``col``, value ``vunit``: units, all of shape (..., L, S)): the
    output token of each query reads its own unit and, for every ``live`` pair, the key's and the value's.
    ``own`` are the positions of the output's elements. The exact unit-to-unit reads go to :func:`_mixed`."""
    h, w = size
    n = h * w
    if grid is _GLOBAL:
        return _settle(_GLOBAL, size, own)
    reads = torch.zeros(n, n, dtype=torch.bool)  # (n, n): unit u reads unit v
    for cand in (col, vunit):
        keep = live & (row >= 0) & (cand >= 0)  # (..., L, S)
        reads[row[keep], cand[keep]] = True
    reads |= torch.eye(n, dtype=torch.bool) & reads.any(dim=1, keepdim=True)  # a unit that attends reads itself
    return _mixed(ctx, grid, size, None, own, reads)


@dataclass(frozen=True, eq=False)
class _Pairs:
    """Attention scores ``q @ k^T`` (B, heads, L, S): element (l, s) reads the query's unit ``row`` and the
    key's unit ``col``, both tensors of the value's shape, on the units' common ``grid``.

    Image-independent additions follow (relative-position bias; a mask: ``live`` is False where the pair's
    offset is masked, :func:`_unmasked`), layout ops are replayed on the four tensors, and a softmax over
    the key axis sets ``slices`` (an id per element: elements of one slice were normalised together, so
    each reads every live key of its slice). ``scores @ v`` then reads, per query, its own unit and the
    key and value of each live pair (:func:`_attend`): the window and the shift mask, exactly. Any other
    consumer sees :func:`_coarse`: one unit per element, its TRF grown by every pair.
    """

    grid: Any
    size: tuple[int, int]
    row: torch.Tensor
    col: torch.Tensor
    live: torch.Tensor
    slices: torch.Tensor | None = None


def _score_pairs(ctx: _Ctx, a: torch.Tensor, b: torch.Tensor, sa: Any, sb: Any) -> Any:
    """``a @ b`` of two image tensors contracting channels of both (``q @ k.transpose(-2, -1)``): scores
    between a's rows and b's columns, as :class:`_Pairs`; None for any other pattern."""
    if sa is _GLOBAL or sb is _GLOBAL:  # scores with a tensor that already saw every pixel
        return _GLOBAL
    la, lb = _laid_of(sa, a), _laid_of(sb, b)
    if la is None or lb is None or a.dim() < 2 or b.dim() < 2:
        return None
    ap, bp = la.pos, lb.pos  # (..., L, K), (..., K, S)
    if not (torch.equal(ap[..., :1].expand(ap.shape), ap) and torch.equal(bp[..., :1, :].expand(bp.shape), bp)):
        return None  # the contracted axis holds positions: a Linear over tokens, not scores
    size, grids = _common_grid(ctx, [la, lb])
    grid = _union_grids(ctx, grids)
    shape = ctx.value.shape  # (..., L, S)
    row = ap[..., :1].expand(shape).contiguous()
    if grid is _GLOBAL:
        return _settle(_GLOBAL, size, row)
    return _Pairs(grid, size, row, bp[..., :1, :].expand(shape).contiguous(), torch.ones(shape, dtype=torch.bool))


def _coarse(ctx: _Ctx, p: _Pairs) -> Any:
    """Scores as one unit per element (the query's; the key's for learned queries), whose TRF holds every
    unit the element reads: an upper bound for consumers other than softmax and ``@ v``."""
    n = p.size[0] * p.size[1]
    own = torch.where(p.row >= 0, p.row, p.col)
    reads = torch.zeros(n, n, dtype=torch.int32)  # (n, n)
    keep = (own >= 0) & (p.col >= 0) & (p.live | (p.slices is None))  # after softmax a masked pair weighs nothing
    reads.index_put_((own[keep], p.col[keep]), torch.ones((), dtype=torch.int32), accumulate=True)
    if p.slices is not None:  # each element also reads the live keys of its slice
        ids = p.slices
        units = torch.zeros(int(ids.max()) + 1, n + 1, dtype=torch.int32)  # (slices, n + 1): column 0 for -1
        live = p.live & (p.col >= 0)
        units[ids[live], p.col[live] + 1] = 1
        owners = torch.unique(torch.stack([own[own >= 0], ids[own >= 0]]), dim=1)  # (2, P): (unit, slice)
        reads.index_add_(0, owners[0], units[owners[1], 1:])
    return _mixed(ctx, p.grid, p.size, None, own, (reads > 0) | torch.eye(n, dtype=torch.bool))


def _replay_pairs(ctx: _Ctx, p: _Pairs, v: torch.Tensor) -> Any:
    """A layout op on scores, replayed on their four tensors; None where it would lose part of a slice."""
    fields = [p.row, p.col, p.live.long()] + ([p.slices] if p.slices is not None else [])
    outs = []
    for f in fields:
        if not any(a is v for a in ctx.args):
            return None
        out = ctx.call(tuple(f if a is v else a for a in ctx.args), ctx.kwargs)
        if not isinstance(out, torch.Tensor):
            return None
        outs.append(out)
    row, col, live = outs[0], outs[1], outs[2].bool()
    slices = outs[3] if p.slices is not None else None
    if slices is not None:
        n1 = p.size[0] * p.size[1] + 1
        before = torch.unique(p.slices[p.live] * n1 + p.col[p.live] + 1)
        if not torch.equal(before, torch.unique(slices[live] * n1 + col[live] + 1)):
            return None
    return _Pairs(p.grid, p.size, row, col, live, slices)


def _softmax_pairs(p: _Pairs, v: torch.Tensor, dim: int) -> Any:
    """Softmax over the key axis: each element now reads every live key of its slice; None otherwise."""
    d = dim % v.dim()
    if p.slices is not None or not torch.equal(p.row.narrow(d, 0, 1).expand(p.row.shape), p.row):
        return None
    rest = [n for i, n in enumerate(v.shape) if i != d]
    ids = torch.arange(math.prod(rest)).view(rest).unsqueeze(d).expand(v.shape).contiguous()  # one id per slice
    return _Pairs(p.grid, p.size, p.row, p.col, p.live, ids)


def _consume_pairs(ctx: _Ctx) -> Any:
    """``scores @ v``: each query's output reads its unit and the key and value units of its live pairs."""
    a, b = ctx.args[0], ctx.args[1]
    sa, sb = ctx.states[0], ctx.states[1]
    lb = _laid_of(sb, b) if not isinstance(sb, _Pairs) else None
    if not isinstance(sa, _Pairs) or lb is None or lb.size != sa.size or a.dim() < 2 or b.dim() < 2:
        return None
    vp = lb.pos  # (..., S, D)
    const = lambda t: torch.equal(t[..., :1].expand(t.shape), t)  # noqa: E731 - along the last dim
    if not (const(vp) and const(sa.row) and (sa.slices is None or const(sa.slices))):
        return None  # only a softmax over the contracted key axis keeps each query's reads in its row
    shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + tuple(a.shape[-2:])  # (..., L, S)
    live = sa.live if sa.slices is not None else torch.ones_like(sa.live)  # before softmax a mask masks nothing
    vunit = vp[..., 0].unsqueeze(-2).expand(shape)  # (..., L, S): value unit of key s
    own = sa.row[..., :1].expand(ctx.value.shape)  # (..., L, D)
    grid = _union_grids(ctx, [sa.grid, lb.grid])
    return _attend(ctx, grid, sa.size, sa.row.expand(shape), sa.col.expand(shape), live.expand(shape), vunit, own)


_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__"}
_MATMULS = {operator.matmul, torch.matmul, torch.bmm, "matmul", "__matmul__", "bmm"}
_SOFTMAXES = {F.softmax, F.log_softmax, "softmax", "log_softmax"}


def _pairs_rule(gm: fx.GraphModule, node: fx.Node, ctx: _Ctx) -> Any:
    """Ops on attention scores (:class:`_Pairs`) that keep them pairs, or end them as ``@ v``; None otherwise."""
    target = node.target
    if node.op != "call_module" and target in _MATMULS:
        return _consume_pairs(ctx)
    deps = _deps(ctx)
    if len(deps) != 1 or not isinstance(deps[0][0], _Pairs) or not isinstance(ctx.value, torch.Tensor):
        return None
    p, v = deps[0]
    m = gm.get_submodule(target) if node.op == "call_module" else None
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)) or (m is None and target in _SOFTMAXES):
        dim = m.dim if m is not None else _arg(ctx, 1, "dim")
        return None if dim is None else _softmax_pairs(p, v, dim)
    kind = op_kind(node, gm)
    if kind == "layout":
        return _replay_pairs(ctx, p, v)
    if kind not in ("pointwise", "binary"):
        return None
    shape = ctx.value.shape
    row, col, live = (t.expand(shape).contiguous() for t in (p.row, p.col, p.live))
    slices = p.slices.expand(shape).contiguous() if p.slices is not None else None
    if m is None and target in _ADDS and slices is None:  # + an image-independent bias or mask
        for other in (*ctx.args, *ctx.kwargs.values()):
            if isinstance(other, torch.Tensor) and other is not v:
                live = live & torch.broadcast_to(_unmasked(other), shape)
    return _Pairs(p.grid, p.size, row, col, live, slices)


def _coarsened(ctx: _Ctx) -> _Ctx:
    """``ctx`` with every :class:`_Pairs` argument state replaced by its :func:`_coarse` upper bound."""
    sub = lambda st: _coarse(ctx, st) if isinstance(st, _Pairs) else st  # noqa: E731
    walk = lambda st: type(st)(walk(x) for x in st) if isinstance(st, (tuple, list)) else sub(st)  # noqa: E731
    return ctx._replace(states=walk(ctx.states), kwstates={k: walk(x) for k, x in ctx.kwstates.items()})


def _mha(ctx: _Ctx, m: nn.MultiheadAttention) -> Any:
    q, k, v = (_arg(ctx, i, n) for i, n in enumerate(("query", "key", "value")))
    qs, ks, vs = (ctx.states[i] if len(ctx.states) > i else ctx.kwstates.get(n)
                  for i, n in enumerate(("query", "key", "value")))
    state = _attention(ctx, q, k, v, qs, ks, vs, 1 if m.batch_first else 0)
    return (state, None if ctx.value[1] is None else _GLOBAL)


def _window_sources(n: int, window: int, shift: int) -> list[list[int]]:
    """Which units of an axis of ``n`` units each unit attends to in torchvision's shifted window attention:
    the same window after padding to a multiple of ``window`` and rolling by ``-shift``, and, when shifted,
    the same region of the attention mask (units that the roll brought together are masked apart)."""
    padded = -(-n // window) * window
    shift = 0 if window >= padded else shift

    def key(u: int) -> tuple[int, int]:
        r = (u - shift) % padded  # rolled coordinate
        region = 0 if r < padded - window else (1 if r < padded - shift else 2)
        return r // window, region if shift else 0

    return [[u for u in range(n) if key(u) == key(o)] for o in range(n)]


def _shifted_window_attention(ctx: _Ctx) -> Any:
    """torchvision's Swin attention (one fx leaf): (B, H, W, C) tokens, each reading its shifted window."""
    state, v = ctx.states[0], ctx.args[0]
    laid = _laid_of(state, v)
    if laid is None or laid.grid is _GLOBAL:
        return state
    window, shift = _arg(ctx, 4, "window_size"), _arg(ctx, 6, "shift_size")
    B, H, W, C = v.shape
    expected = _grid_pos(laid.size, (B, C, *laid.size)).permute(0, 2, 3, 1)
    if (H, W) != laid.size or not torch.equal(laid.pos, expected):
        raise _unsupported(ctx, f"expected (B, H, W, C) tokens of a {laid.size[0]}x{laid.size[1]} grid")
    reads = []  # per axis (n, n): unit i reads unit j
    for i, n in enumerate((H, W)):
        r = torch.zeros(n, n, dtype=torch.bool)
        for u, src in enumerate(_window_sources(n, window[i], shift[i])):
            r[u, src] = True
        reads.append(r)
    both = (reads[0][:, None, :, None] & reads[1][None, :, None, :]).reshape(H * W, H * W)  # rows x columns
    return _mixed(ctx, laid.grid, laid.size, None, laid.pos, both)


# Modules -------------------------------------------------------------------

def _module_rule(ctx: _Ctx, m: nn.Module) -> Any:
    if isinstance(m, nn.Conv2d):
        return _conv_like(ctx, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode)
    if isinstance(m, nn.ConvTranspose2d):
        if m.padding_mode != "zeros":
            raise _unsupported(ctx, f"padding_mode={m.padding_mode!r}")
        return _sampled(ctx, _conv_transpose_sources(m.kernel_size, m.stride, m.padding, m.dilation))
    if isinstance(m, nn.MaxPool2d):
        return _conv_like(ctx, m.kernel_size, m.stride, m.padding, m.dilation)
    if isinstance(m, nn.AvgPool2d):
        return _conv_like(ctx, m.kernel_size, m.stride, m.padding, 1)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _sampled(ctx, _adaptive_sources)
    if isinstance(m, nn.Upsample):
        return _sampled(ctx, _interpolate_sources(m.size, m.scale_factor, m.mode, m.align_corners,
                                                  getattr(m, "recompute_scale_factor", None)))
    if isinstance(m, nn.ZeroPad2d | nn.ConstantPad2d):
        return _pad(ctx, m.padding, "constant")
    if isinstance(m, nn.ReplicationPad2d):
        return _pad(ctx, m.padding, "replicate")
    if isinstance(m, nn.Flatten):
        return _flatten(ctx, m.start_dim, m.end_dim)
    if isinstance(m, nn.Unflatten):
        return _layout(ctx)
    if isinstance(m, nn.Linear):
        return _linear(ctx)
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return _along(ctx, range(-len(m.normalized_shape), 0))
    if isinstance(m, nn.MultiheadAttention):
        return _mha(ctx, m)
    if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return _channel_dim(ctx, 1 if m.dim is None else m.dim)
    if isinstance(m, POINTWISE_MODULES):
        return _union(ctx)
    raise _unsupported(ctx)


# Functions and tensor methods ------------------------------------------------

def _function_rules() -> dict[Callable, Callable[[_Ctx], Any]]:
    rules: dict[Callable, Callable[[_Ctx], Any]] = {f: _union for f in POINTWISE_FUNCTIONS | BINARY_FUNCTIONS}
    try:
        import torchvision.ops

        rules[torchvision.ops.stochastic_depth] = _union  # identity in eval, drops whole samples in training
        from torchvision.models import swin_transformer

        rules[swin_transformer.shifted_window_attention] = _shifted_window_attention  # fx leaves in torchvision
        rules[swin_transformer._patch_merging_pad] = _layout
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    rules.update({
        torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
        operator.getitem: _getitem,
        torch.flatten: lambda c: _flatten(c, _arg(c, 1, "start_dim", 0), _arg(c, 2, "end_dim", -1)),
        torch.reshape: _reshape,
        torch.mean: _reduction, torch.sum: _reduction, torch.amax: _reduction, torch.amin: _reduction,
        torch.split: _split, torch.chunk: _split,
        torch.permute: _layout, torch.transpose: _layout, torch.swapaxes: _layout, torch.movedim: _layout,
        torch.roll: _layout, torch.unbind: _layout, torch.stack: _layout, torch.squeeze: _layout,
        torch.unsqueeze: _layout, torch.narrow: _layout, torch.select: _layout,
        F.pixel_shuffle: _layout, F.pixel_unshuffle: _layout, F.channel_shuffle: _layout,
        torch.channel_shuffle: _layout,
        F.linear: _linear,
        F.layer_norm: lambda c: _along(c, range(-len(_arg(c, 1, "normalized_shape")), 0)),
        F.scaled_dot_product_attention: _sdpa,
        operator.matmul: _matmul, torch.matmul: _matmul, torch.bmm: _matmul, torch.einsum: _einsum,
        F.softmax: lambda c: _channel_dim(c, _arg(c, 1, "dim", 1)),
        F.log_softmax: lambda c: _channel_dim(c, _arg(c, 1, "dim", 1)),
        F.normalize: lambda c: _channel_dim(c, _arg(c, 2, "dim", 1)),
        F.pad: lambda c: _pad(c, _arg(c, 1, "pad"), _arg(c, 2, "mode", "constant")),
        F.conv2d: lambda c: _conv_like(c, tuple(_arg(c, 1, "weight").shape[-2:]), _arg(c, 3, "stride", 1),
                                       _arg(c, 4, "padding", 0), _arg(c, 5, "dilation", 1)),
        F.conv_transpose2d: lambda c: _sampled(c, _conv_transpose_sources(
            tuple(_arg(c, 1, "weight").shape[-2:]), _arg(c, 3, "stride", 1), _arg(c, 4, "padding", 0),
            _arg(c, 7, "dilation", 1))),
        F.max_pool2d: lambda c: _conv_like(c, _arg(c, 1, "kernel_size"), _arg(c, 2, "stride", None),
                                           _arg(c, 3, "padding", 0), _arg(c, 4, "dilation", 1)),
        F.avg_pool2d: lambda c: _conv_like(c, _arg(c, 1, "kernel_size"), _arg(c, 2, "stride", None),
                                           _arg(c, 3, "padding", 0), 1),
        F.adaptive_avg_pool2d: lambda c: _sampled(c, _adaptive_sources),
        F.adaptive_max_pool2d: lambda c: _sampled(c, _adaptive_sources),
        F.interpolate: lambda c: _sampled(c, _interpolate_sources(
            _arg(c, 1, "size"), _arg(c, 2, "scale_factor"), _arg(c, 3, "mode", "nearest"),
            _arg(c, 4, "align_corners"), _arg(c, 5, "recompute_scale_factor"), _arg(c, 6, "antialias", False))),
    })
    return rules


_FUNCTION_RULES = _function_rules()
_METHOD_RULES: dict[str, Callable[[_Ctx], Any]] = {m: _union for m in POINTWISE_METHODS | BINARY_METHODS}
_METHOD_RULES.update({
    "flatten": lambda c: _flatten(c, _arg(c, 1, "start_dim", 0), _arg(c, 2, "end_dim", -1)),
    "view": _reshape, "reshape": _reshape,
    "mean": _reduction, "sum": _reduction, "amax": _reduction, "amin": _reduction,
    "expand": _expand, "expand_as": _expand, "repeat": _expand, "broadcast_to": _expand,
    "split": _split, "chunk": _split,
    "permute": _layout, "transpose": _layout, "swapaxes": _layout, "movedim": _layout, "unflatten": _layout,
    "roll": _layout, "unbind": _layout, "squeeze": _layout, "unsqueeze": _layout, "narrow": _layout,
    "select": _layout, "view_as": _layout, "reshape_as": _layout, "matmul": _matmul, "__matmul__": _matmul,
    "bmm": _matmul,
    "softmax": lambda c: _channel_dim(c, _arg(c, 1, "dim", 1)),
    "log_softmax": lambda c: _channel_dim(c, _arg(c, 1, "dim", 1)),
    "__getitem__": _getitem,
})


# --------------------------------------------------------------------------- tracing


def _trace(model: nn.Module) -> tuple[fx.GraphModule, dict[fx.Node, str]]:
    """Trace into plain torch.nn leaves, naming nodes like torchvision's feature extractor."""
    import torchvision
    from torchvision.models.feature_extraction import NodePathTracer

    # Unlike create_feature_extractor, torchvision.ops modules (Conv2dNormActivation,
    # SqueezeExcitation, ...) are traced through, so every conv is seen.
    tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=[])
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}); receptive fields need a traceable forward") from None
    return fx.GraphModule(tracer.root, graph), dict(tracer.node_to_qualname)


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _as_size(input_size: Any) -> tuple[int, int]:
    size = (input_size, input_size) if isinstance(input_size, int) and not isinstance(input_size, bool) else input_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"input_size must be a positive int or (H, W) of positive ints, got {input_size!r}")
    return int(size[0]), int(size[1])


def _ancestors(targets: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _input_for(model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    p = next(iter(model.buffers()), None) if p is None else p
    kw = {"device": p.device, "dtype": p.dtype if p.is_floating_point() else torch.float32} if p is not None else {}
    return torch.zeros(1, 3, *size, **kw)  # (1, 3, H, W): three channels, as every image model takes


def _run(model: nn.Module, gm: fx.GraphModule, names: dict[fx.Node, str], size: tuple[int, int],
         wanted: set[fx.Node] | None) -> tuple[dict[fx.Node, Any], dict[fx.Node, str]]:
    """Run the graph on a zero image and compute each node's state, stopping after ``wanted``.

    Returns the states and, for global nodes, the op that first made them global."""
    H, W = size
    values: dict[fx.Node, Any] = {}
    states: dict[fx.Node, Any] = {}
    origins: dict[fx.Node, str] = {}
    placeholders = 0
    for node in gm.graph.nodes:
        if wanted is not None and node not in wanted:
            continue
        name = names.get(node, node.name)
        if node.op == "output":
            break
        if node.op == "placeholder":
            if placeholders == 0:
                values[node] = _input_for(model, size)
                states[node] = _Map(AxisRF(1.0, 1.0, 0.0), AxisRF(1.0, 1.0, 0.0))
            elif node.args:  # an optional forward argument: its default
                values[node], states[node] = node.args[0], None
            else:
                raise ValueError(f"{type(model).__name__}.forward takes a second input {node.target!r}; "
                                 f"receptive fields need a model that takes one image batch")
            placeholders += 1
            continue
        if node.op == "get_attr":
            values[node], states[node] = fetch_attr(gm, node.target), None
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        desc = _describe(gm, node)
        try:
            value = call_node(gm, node, args, kwargs)
        except (RuntimeError, ValueError, IndexError) as exc:
            msg = " ".join(str(exc).split())[:300]
            if any(k in msg.lower() for k in ("too small", "output size", "non-positive", "greater than actual")):
                raise ValueError(f"input size {H}x{W} is too small: layer {name!r} ({desc}) would have an empty "
                                 f"output ({msg})") from None
            raise ValueError(f"layer {name!r} ({desc}) failed on a {H}x{W} input: {msg}") from None
        if isinstance(value, torch.Tensor) and value.numel() == 0:
            raise ValueError(f"input size {H}x{W} is too small: layer {name!r} ({desc}) has an empty output "
                             f"of shape {tuple(value.shape)}")
        values[node] = value
        node.meta["erf_shape"] = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        state_of = lambda a: states[a] if isinstance(a, fx.Node) else None  # noqa: E731 - literals: None
        ctx = _Ctx(name, desc, args, kwargs, fx.node.map_aggregate(node.args, state_of),
                   fx.node.map_aggregate(node.kwargs, state_of), value, size,
                   lambda a, k, node=node: call_node(gm, node, a, k))
        states[node] = _node_state(gm, node, ctx)
        if _is_global(states[node]):
            inherited = [origins[a] for a in node.all_input_nodes if a in origins]
            origins[node] = inherited[0] if inherited else f"{desc} at {name!r}"
    return states, origins


def _is_global(state: Any) -> bool:
    if isinstance(state, (tuple, list)):
        return any(_is_global(s) for s in state)
    return state is _GLOBAL or isinstance(state, (_Laid, _Pairs)) and state.grid is _GLOBAL


def _node_state(gm: fx.GraphModule, node: fx.Node, ctx: _Ctx) -> Any:
    if not _deps(ctx):
        return None  # parameters, constants and shape arithmetic do not depend on the image
    if node.op == "call_function" and node.target is operator.getitem and isinstance(ctx.states[0], (tuple, list)):
        return _getitem(ctx)
    value = ctx.value
    if not isinstance(value, torch.Tensor) and not (
            isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)
            and all(isinstance(v, torch.Tensor) or v is None for v in value)):  # (output, None) of attention
        return None  # x.shape, x.size(2), x.dim(): metadata, not activations
    if any(isinstance(st, _Pairs) for st, _ in _deps(ctx)):
        state = _pairs_rule(gm, node, ctx)
        if state is not None:
            return state
        ctx = _coarsened(ctx)
    if node.op == "call_module":
        state = _module_rule(ctx, gm.get_submodule(node.target))
    elif node.op == "call_function":
        rule = _FUNCTION_RULES.get(node.target)
        if rule is None:
            raise _unsupported(ctx)
        state = rule(ctx)
    else:
        rule = _METHOD_RULES.get(node.target)
        if rule is None:
            raise _unsupported(ctx)
        state = rule(ctx)
    if isinstance(state, _Map) and (not isinstance(value, torch.Tensor) or value.dim() != 4):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise _unsupported(ctx, f"its output {shape} is not a (B, C, h, w) map")
    return state


def _layer_rf(name: str, state: Any, value_shape: tuple[int, ...], size: tuple[int, int], origin: str = "",
              layout: str = "NCHW") -> LayerRF:
    H, W = size
    hw = (int(value_shape[-2]), int(value_shape[-1])) if len(value_shape) == 4 else (1, 1)
    if isinstance(state, _Laid):
        hw, state = state.size, state.grid
    if state is _GLOBAL:
        return LayerRF(name, hw, (float(H), float(W)), (0.0, 0.0), ((H - 1) / 2, (W - 1) / 2), True, size,
                       global_from=origin, layout=layout)
    return LayerRF(name, hw, (float(state.h.rf), float(state.w.rf)), (float(state.h.jump), float(state.w.jump)),
                   (float(state.h.start), float(state.w.start)), False, size, state.exact, layout=layout)


# --------------------------------------------------------------------------- public entry points


def receptive_fields(model: nn.Module, input_size: int | tuple[int, int],
                     layers: Sequence[str] | None = None) -> dict[str, LayerRF]:
    """Theoretical receptive field of every layer of ``model`` (or of ``layers``) for one input size.

    The model is traced with ``torch.fx`` (in eval mode, restored afterwards) and run
    once on a (1, 3, H, W) zero image on its own device; a model on the ``meta``
    device works too and costs nothing.

    Args:
        model: any fx-traceable ``nn.Module`` taking one (B, 3, H, W) image batch.
        input_size: ``H`` (square) or ``(H, W)`` in pixels.
        layers: names to report: module paths of leaf modules (``"features.30"``) or of
            containers (``"layer4"``: its last op), or fx node names of functional ops
            (``"layer1.0.add"``). None reports every layer whose output depends on the
            image and is a map or global, in forward order, each container right after
            its last op (a flattened map, whose units are not on a grid, is left out).

    Returns:
        ``{name: LayerRF}`` in forward order (or in the order of ``layers``).

    Raises:
        ValueError: unknown layer (with close matches); an input size that empties a
            layer (naming it); an op whose TRF it cannot work out (naming op and path);
            branches on different grids; a model fx cannot trace.

    Example:
        >>> rfs = receptive_fields(torchvision.models.resnet50(), 224)
        >>> rfs["layer3"].rf, rfs["layer3"].jump, rfs["layer4"].rf, rfs["fc"].is_global
        ((267.0, 267.0), (16.0, 16.0), (427.0, 427.0), True)
    """
    size = _as_size(input_size)
    if layers is not None and isinstance(layers, str):
        layers = [layers]
    gm, qualnames = _trace(model)
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    by_name = {qualnames.get(n, n.name): n for n in nodes}
    modules = [p for p, _ in model.named_modules() if p]
    members: dict[str, list[fx.Node]] = {}  # container path -> its nodes in forward order
    for n in nodes:
        q = qualnames.get(n, n.name)
        parts = q.split(".")
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if prefix not in by_name:
                members.setdefault(prefix, []).append(n)

    wanted: set[fx.Node] | None = None
    if layers is not None:
        known = list(by_name) + [m for m in members if m not in by_name]
        targets = []
        for layer in layers:
            if layer in by_name:
                targets.append(by_name[layer])
            elif layer in members:
                targets.append(members[layer][-1])
            elif layer in modules:
                raise ValueError(f"layer {layer!r} of {type(model).__name__} is never called by its forward")
            else:
                raise unknown_name(f"layer in {type(model).__name__}", layer, known)
        wanted = _ancestors(targets)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            states, origins = _run(model, gm, qualnames, size, wanted)
    finally:
        model.train(was_training)
    return _collect(gm, qualnames, states, members, by_name, layers, size, origins)


def _collect(gm: fx.GraphModule, qualnames: dict[fx.Node, str], states: dict[fx.Node, Any],
             members: dict[str, list[fx.Node]], by_name: dict[str, fx.Node], layers: Sequence[str] | None,
             size: tuple[int, int], origins: dict[fx.Node, str]) -> dict[str, LayerRF]:
    descs = {n: _describe(gm, n) for n in states if n.op not in ("placeholder", "get_attr")}
    """Turn node states into LayerRFs: the requested layers, or every map / global node plus containers."""
    layouts = {n: _layout_name(s) for n, s in states.items()}
    reportable = {n for n, s in states.items() if n.op != "placeholder" and layouts[n] is not None and not (
        isinstance(s, _Map) and s.unproven) and not (isinstance(s, _Laid) and s.grid is not _GLOBAL and s.grid.unproven)}

    def rf_of(name: str, node: fx.Node) -> LayerRF:
        return _layer_rf(name, states[node], node.meta["erf_shape"], size, origins.get(node, ""), layouts[node])

    if layers is not None:
        out = {}
        for layer in layers:
            node = by_name.get(layer)
            if node is None:  # container: its last op that yields a map
                inside = [n for n in members[layer] if n in reportable]
                if not inside:
                    raise ValueError(f"layer {layer!r} has no op whose output is an image map")
                node = inside[-1]
            elif node not in reportable:
                raise ValueError(_why_not(layer, states.get(node), descs.get(node, "")))
            out[layer] = rf_of(layer, node)
        return out

    last_of: dict[fx.Node, list[str]] = {}
    for path, ns in members.items():
        inside = [n for n in ns if n in reportable]
        if inside:
            last_of.setdefault(inside[-1], []).append(path)
    out = {}
    for n in gm.graph.nodes:
        if n in reportable:
            name = qualnames.get(n, n.name)
            out[name] = rf_of(name, n)
            for path in sorted(last_of.get(n, ()), key=lambda p: -p.count(".")):  # innermost first
                out[path] = rf_of(path, n)
    return out


def _layout_name(state: Any) -> str | None:
    """How a reportable state holds its grid: NCHW, NHWC or tokens+K; None if it is no map of units."""
    if state is _GLOBAL or isinstance(state, _Map):
        return "NCHW"
    if not isinstance(state, _Laid):
        return None
    pos, (h, w) = state.pos, state.size
    if pos.dim() == 4 and tuple(pos.shape[1:3]) == (h, w) and torch.equal(
            pos, _grid_pos((h, w), (pos.shape[0], pos.shape[3], h, w)).permute(0, 2, 3, 1)):
        return "NHWC"
    if pos.dim() == 3 and pos.shape[1] >= h * w:
        k = pos.shape[1] - h * w
        row = torch.cat([torch.full((k,), -1, dtype=torch.long), torch.arange(h * w)])
        if torch.equal(pos, row.view(1, -1, 1).expand(*pos.shape)):
            return f"tokens+{k}"
    return None


def _why_not(layer: str, state: Any, desc: str = "") -> str:
    if isinstance(state, _Map) and state.unproven or isinstance(state, _Laid) and state.grid is not _GLOBAL \
            and state.grid.unproven:
        grid = state if isinstance(state, _Map) else state.grid
        return (f"layer {layer!r} comes after {grid.unproven}, whose per-unit support erf.rf cannot work out; "
                f"its TRF is not proven (layers before it are exact, and a later op that mixes all positions is global)")
    if isinstance(state, _Pairs):
        return (f"layer {layer!r} holds attention scores between pairs of units (query, key), not one unit "
                f"per element; name the attention's output")
    if isinstance(state, _Laid):
        return (f"{desc} at {layer!r} leaves the units in a layout that is neither (B, C, h, w), (B, h, w, C) "
                f"nor tokens (B, N, D); name a layer that is")
    if isinstance(state, _Flat):
        return f"layer {layer!r} flattens a map: its units are not on a grid, so it has no per-unit TRF box"
    if state is None:
        return f"layer {layer!r} does not depend on the input image (a parameter, constant or shape)"
    return f"layer {layer!r} has no receptive field"


def receptive_field(model: nn.Module, layer: str, input_size: int | tuple[int, int]) -> LayerRF:
    """TRF of one layer: ``receptive_fields(model, input_size, [layer])[layer]``.

    Example:
        >>> receptive_field(torchvision.models.alexnet(), "features.12", 224).rf   # pool5
        (195.0, 195.0)
    """
    return receptive_fields(model, input_size, [layer])[layer]
