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
        rf: TRF size per axis in input pixels, unclipped; the input (H, W) when global.
        jump: effective stride per axis (fractional after upsampling; 0 when global or tiled).
        start: input coordinate (y, x) of the centre of unit (0, 0).
        is_global: every unit sees the whole input (global pooling, flatten + Linear, tiling).
        input_size: the (H, W) the model was analysed at.
        exact: the box is the exact bounding box of each unit's input support; False only
            after a resampling layer whose per-unit support is not an affine grid (see
            :func:`sampled_axis`), where the box is the tightest one containing it.

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
    """A (B, C, h, w) tensor whose units lie on an affine grid of the input."""

    h: AxisRF
    w: AxisRF
    exact: bool = True


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
        elif state is not None:
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
    return _Map(results[0][0], results[1][0], state.exact and results[0][1] and results[1][1])


# --------------------------------------------------------------------------- rules


def _union(ctx: _Ctx) -> Any:
    """Element-wise ops and concatenation over channels: union of the inputs' TRFs."""
    deps = _deps(ctx)
    states = [s for s, _ in deps]
    if any(s is _GLOBAL for s in states):
        return _GLOBAL
    if all(isinstance(s, _Flat) for s in states):
        first = states[0]
        for s in states[1:]:
            if (s.size, s.h, s.w) != (first.size, first.h, first.w):
                raise _unsupported(ctx, "combines flattened maps of different layers")
        return _Flat(first.h, first.w, first.size, all(s.exact for s in states))
    if not all(isinstance(s, _Map) for s in states):
        raise _unsupported(ctx, "combines a flattened map with a spatial one")
    out_hw = _spatial(ctx.value) if isinstance(ctx.value, torch.Tensor) and ctx.value.dim() == 4 else None
    for _, v in deps:
        if out_hw is not None and _spatial(v) != out_hw:
            raise _unsupported(ctx, f"broadcasts a {_spatial(v)[0]}x{_spatial(v)[1]} map to "
                                    f"{out_hw[0]}x{out_hw[1]}; tile it with expand first")
    h, w, exact = states[0].h, states[0].w, states[0].exact
    for s in states[1:]:
        uh, uw = union_axis(h, s.h), union_axis(w, s.w)
        if uh is None or uw is None:
            raise ValueError(
                f"branches meeting at {ctx.name!r} ({ctx.desc}) are on different grids: "
                f"centre of unit (0, 0) {(h.start, w.start)} vs {(s.h.start, s.w.start)}, "
                f"jump {(h.jump, w.jump)} vs {(s.h.jump, s.w.jump)}; their union is not one receptive field per unit")
        h, w, exact = uh, uw, exact and s.exact
    return _Map(h, w, exact)


def _channel_dim(ctx: _Ctx, dim: int) -> Any:
    """Ops along one dim (softmax, L2 normalise): per-pixel only when that dim is channels."""
    state, v = _main(ctx)
    if state is _GLOBAL:
        return _GLOBAL
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
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is None or isinstance(i, torch.Tensor) for i in idx) or idx.count(Ellipsis) > 1:
        raise _unsupported(ctx, f"indexing with {idx!r}")
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (v.dim() - len(idx) + 1) + idx[e + 1:]
    idx = idx + (slice(None),) * (v.dim() - len(idx))
    full = [isinstance(i, slice) and i == slice(None) for i in idx]
    if isinstance(state, _Flat):
        if all(full[1:]):
            return state
        raise _unsupported(ctx, "indexing a flattened map")
    if v.dim() != 4 or not all(isinstance(i, slice) for i in idx[:2]):
        raise _unsupported(ctx, f"indexing a {tuple(v.shape)} tensor with {idx!r}; only slices keep (B, C, h, w)")
    crops = []
    for i, n in zip(idx[2:], _spatial(v)):
        if not isinstance(i, slice):
            raise _unsupported(ctx, f"indexing a spatial axis with {i!r}")
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
    raise _unsupported(ctx, f"reshaping {tuple(v.shape)} to {tuple(out.shape)} moves spatial positions")


def _flatten(ctx: _Ctx, start_dim: int = 0, end_dim: int = -1) -> Any:
    state, v = _main(ctx)
    if state is _GLOBAL or isinstance(state, _Flat):
        return state
    if v.dim() == 4 and start_dim % 4 <= 1 and end_dim % 4 == 3:
        return _Flat(state.h, state.w, _spatial(v), state.exact)
    if v.dim() == 4 and end_dim % 4 <= 1:  # flattening batch/channels only
        return state
    raise _unsupported(ctx, f"flatten({start_dim}, {end_dim}) of a {tuple(v.shape)} map")


def _linear(ctx: _Ctx) -> Any:
    state, v = _main(ctx)
    if isinstance(state, _Map):
        raise _unsupported(ctx, f"a Linear layer on a {tuple(v.shape)} map mixes positions along the width")
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
    if state is not _GLOBAL and dim % v.dim() > 1:
        raise _unsupported(ctx, f"splitting a {tuple(v.shape)} map along dim {dim}")
    return tuple(state for _ in ctx.value)


def _cat(ctx: _Ctx) -> Any:
    dim = _arg(ctx, 1, "dim", 0)
    v = ctx.value
    if dim % v.dim() > 1 and any(isinstance(s, _Map) for s, _ in _deps(ctx)):
        raise _unsupported(ctx, f"concatenating along spatial dim {dim}")
    return _union(ctx)


# Modules -------------------------------------------------------------------

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm, nn.Softmax2d,
)


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
    if isinstance(m, nn.Linear):
        return _linear(ctx)
    if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return _channel_dim(ctx, 1 if m.dim is None else m.dim)
    if isinstance(m, _POINTWISE_MODULES):
        return _union(ctx)
    raise _unsupported(ctx)


# Functions and tensor methods ------------------------------------------------

_POINTWISE_FUNCTIONS: tuple[Callable, ...] = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg, operator.pos,
    operator.pow, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.abs,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide, torch.maximum,
    torch.minimum, torch.where, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.abs, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.clamp, torch.clip, torch.neg, torch.pow, torch.square,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.prelu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout, F.batch_norm,
    F.local_response_norm,
)
_POINTWISE_METHODS = frozenset({
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "pow", "abs", "exp", "log", "sqrt", "rsqrt",
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "contiguous", "clone",
    "float", "double", "half", "bfloat16", "to", "type", "type_as", "detach", "requires_grad_", "square",
    "__add__", "__radd__", "__mul__", "__rmul__", "__sub__", "__rsub__", "__truediv__",
})


def _function_rules() -> dict[Callable, Callable[[_Ctx], Any]]:
    rules: dict[Callable, Callable[[_Ctx], Any]] = {f: _union for f in _POINTWISE_FUNCTIONS}
    try:
        import torchvision.ops

        rules[torchvision.ops.stochastic_depth] = _union  # identity in eval, drops whole samples in training
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    rules.update({
        torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
        operator.getitem: _getitem,
        torch.flatten: lambda c: _flatten(c, _arg(c, 1, "start_dim", 0), _arg(c, 2, "end_dim", -1)),
        torch.reshape: _reshape,
        torch.mean: _reduction, torch.sum: _reduction, torch.amax: _reduction, torch.amin: _reduction,
        torch.split: _split, torch.chunk: _split,
        F.linear: _linear,
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
_METHOD_RULES: dict[str, Callable[[_Ctx], Any]] = {m: _union for m in _POINTWISE_METHODS}
_METHOD_RULES.update({
    "flatten": lambda c: _flatten(c, _arg(c, 1, "start_dim", 0), _arg(c, 2, "end_dim", -1)),
    "view": _reshape, "reshape": _reshape,
    "mean": _reduction, "sum": _reduction, "amax": _reduction, "amin": _reduction,
    "expand": _expand, "expand_as": _expand, "repeat": _expand, "broadcast_to": _expand,
    "split": _split, "chunk": _split,
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
         wanted: set[fx.Node] | None) -> dict[fx.Node, Any]:
    """Run the graph on a zero image and compute each node's state, stopping after ``wanted``."""
    H, W = size
    values: dict[fx.Node, Any] = {}
    states: dict[fx.Node, Any] = {}
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
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            values[node], states[node] = obj, None
            continue
        args = fx.node.map_arg(node.args, lambda n: values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
        desc = _describe(gm, node)
        try:
            if node.op == "call_module":
                value = gm.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            else:
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
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
                   fx.node.map_aggregate(node.kwargs, state_of), value, size)
        states[node] = _node_state(gm, node, ctx)
    return states


def _node_state(gm: fx.GraphModule, node: fx.Node, ctx: _Ctx) -> Any:
    if not _deps(ctx):
        return None  # parameters, constants and shape arithmetic do not depend on the image
    if node.op == "call_function" and node.target is operator.getitem and isinstance(ctx.states[0], (tuple, list)):
        return _getitem(ctx)
    value = ctx.value
    if not isinstance(value, torch.Tensor) and not (
            isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value)):
        return None  # x.shape, x.size(2), x.dim(): metadata, not activations
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


def _layer_rf(name: str, state: Any, value_shape: tuple[int, ...], size: tuple[int, int]) -> LayerRF:
    H, W = size
    hw = (int(value_shape[-2]), int(value_shape[-1])) if len(value_shape) == 4 else (1, 1)
    if state is _GLOBAL:
        return LayerRF(name, hw, (float(H), float(W)), (0.0, 0.0), ((H - 1) / 2, (W - 1) / 2), True, size)
    return LayerRF(name, hw, (float(state.h.rf), float(state.w.rf)), (float(state.h.jump), float(state.w.jump)),
                   (float(state.h.start), float(state.w.start)), False, size, state.exact)


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
            states = _run(model, gm, qualnames, size, wanted)
    finally:
        model.train(was_training)
    return _collect(gm, qualnames, states, members, by_name, layers, size)


def _collect(gm: fx.GraphModule, qualnames: dict[fx.Node, str], states: dict[fx.Node, Any],
             members: dict[str, list[fx.Node]], by_name: dict[str, fx.Node], layers: Sequence[str] | None,
             size: tuple[int, int]) -> dict[str, LayerRF]:
    """Turn node states into LayerRFs: the requested layers, or every map / global node plus containers."""
    reportable = {n for n, s in states.items() if (s is _GLOBAL or isinstance(s, _Map)) and n.op != "placeholder"}

    def rf_of(name: str, node: fx.Node) -> LayerRF:
        return _layer_rf(name, states[node], node.meta["erf_shape"], size)

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
                raise ValueError(_why_not(layer, states.get(node)))
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


def _why_not(layer: str, state: Any) -> str:
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
