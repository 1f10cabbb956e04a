"""With against without global context: the same unit's ERF in the FCN baseline and in ParseNet.

ParseNet (Liu et al. 2015, Sec. 3.1 and Fig. 2) argues that the ERF of an
FCN's top layer covers a fraction of its TRF, and that adding global context
widens it. The maps here share one colour scale, so a wider, stronger ERF
reads as such, not as an artefact of per-panel normalisation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from erf.util import unknown_name
from figures._style import (
    COLUMN_WIDTH,
    ERF_CMAP,
    PAGE_WIDTH,
    as_box,
    as_map,
    check_fraction,
    check_nonempty,
    check_width,
    fmt_num,
    new_figure,
    styled,
)

__all__ = ["fig_context_comparison"]


@styled
def fig_context_comparison(
    maps: Mapping[str, np.ndarray],
    sizes: Mapping[str, float],
    *,
    trf_box: tuple[float, float, float, float] | None = None,
    threshold: float | None = None,
    colorbar_label: str = "discrepancy (shared scale)",
    size_label: str = "ERF",
    extent_boxes: Mapping[str, tuple[float, float, float, float] | None] | None = None,
    log_decades: int | None = None,
    title: str | None = None,
    width: float | None = None,
) -> Figure:
    """ERF maps of one layer and unit in several models, side by side on one colour scale.

    Args:
        maps: model name -> (H, W) ERF map (e.g. the 2H x 2W re-centred
            canvas of ``erf`` results); all maps must have the same shape.
            Insertion order is the panel order, e.g. ``{"FCN": ..., "ParseNet": ...}``.
        sizes: model name -> ERF side in pixels, shown in each title; the
            same keys as ``maps``. NaN shows as "n/a".
        trf_box: the unit's TRF ``(top, left, bottom, right)`` in map pixel
            coordinates (half-open), outlined dashed in every panel; the
            titles then also give ERF side / TRF side.
        threshold: if given, a contour at this fraction of each map's own
            maximum (use the threshold that produced ``sizes``).
        colorbar_label: label of the one shared colour bar.
        size_label: what ``sizes`` measure, shown before each size (e.g. ``"90% mass"``).
        extent_boxes: model name -> a ``(top, left, bottom, right)`` box drawn solid green on that
            model's panel, e.g. the centred square holding 90% of the contribution; None skips a model.
        log_decades: if given, a second row draws the same maps on a log scale, as RepLKNet
            (Ding et al. 2022, Fig. 1) draws gradient ERFs: ``log10(1 + x / (10^-d * max))``
            over the shared maximum, so ``d`` decades below the peak stay visible.
        title: figure title; by default none.
        width: figure width in inches; by default one column (3.5) for up to
            two models, a page width (7) for more.

    Returns:
        A Figure with one axes per model plus one colour bar.

    Example:
        >>> m = {"FCN": np.ones((8, 8)), "ParseNet": 2 * np.ones((8, 8))}
        >>> fig = fig_context_comparison(m, {"FCN": 3.0, "ParseNet": 6.0})
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['FCN\\nERF 3 px', 'ParseNet\\nERF 6 px']
    """
    check_nonempty(maps, "maps", "model's ERF map")
    names = [str(k) for k in maps]
    for key in sizes:
        if key not in maps:
            raise unknown_name("model in sizes", key, names, show_all=True)
    for key in maps:
        if key not in sizes:
            raise ValueError(f"sizes has no entry for model {key!r}; expected one ERF side per map ({', '.join(names)})")
    arrays = [as_map(m, f"maps[{k!r}]") for k, m in maps.items()]
    shape = arrays[0].shape
    for key, arr in zip(maps, arrays):
        if arr.shape != shape:
            raise ValueError(f"maps[{key!r}] has shape {arr.shape}; expected {shape} like maps[{names[0]!r}] (same layer, same canvas)")
    box = None if trf_box is None else as_box(trf_box, "trf_box")
    extents = {}
    for key, value in (extent_boxes or {}).items():
        if key not in maps:
            raise unknown_name("model in extent_boxes", key, names, show_all=True)
        if value is not None:
            extents[key] = as_box(value, f"extent_boxes[{key!r}]")
    if threshold is not None:
        threshold = check_fraction(threshold, "threshold")
    if log_decades is not None and not (isinstance(log_decades, (int, np.integer)) and 1 <= log_decades <= 12):
        raise ValueError(f"log_decades is {log_decades!r}; expected a whole number of decades from 1 to 12, or None")
    n = len(arrays)
    width = check_width(width if width is not None else (COLUMN_WIDTH if n <= 2 else PAGE_WIDTH))

    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0  # all-zero maps: an honest empty scale
    H, W = shape
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)
    panel = (width - 0.9) / n  # in: room on the right for the colour bar
    rows = 1 if log_decades is None else 2
    fig = new_figure(width, rows * (panel * H / W + 0.45) + 0.3 + (0.15 if box is not None else 0)
                     + (0.2 if title else 0))
    grid = fig.subplots(rows, n, squeeze=False)
    axes = grid[0]
    im = None
    for i, (ax, name, arr) in enumerate(zip(axes, names, arrays)):
        im = ax.imshow(arr, cmap=ERF_CMAP, vmin=0, vmax=vmax, extent=extent)
        size = _to_float(sizes[name], name)
        head = f"{name}\n{size_label} {fmt_num(size, 'px')}"
        if box is not None:
            trf_side = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            head += f"\nERF/TRF {size / trf_side:.2f}" if math.isfinite(size) else "\nERF/TRF n/a"
            ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1], box[2] - box[0],
                                   fill=False, edgecolor="white", linestyle="--", linewidth=1.0))
        if name in extents:
            t, l, b, r = extents[name]
            ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="lime", linewidth=1.0))
        if threshold is not None:
            peak = np.nanmax(arr) if np.isfinite(arr).any() else 0.0
            if peak > 0 and np.nanmin(arr) < threshold * peak:  # a contour needs values on both sides
                ax.contour(np.arange(W), np.arange(H), np.nan_to_num(arr), levels=[threshold * peak],
                           colors="cyan", linewidths=0.9)
        ax.set_title(head)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xlabel("x (px)")
        if i == 0:
            ax.set_ylabel("y (px)")
        else:
            ax.tick_params(labelleft=False)
    cb = fig.colorbar(im, ax=list(axes), shrink=0.85, aspect=15)
    cb.set_label(colorbar_label)
    if log_decades is not None:
        scale = vmax * 10.0 ** -log_decades  # x / scale: the map in units of 10^-d of the shared maximum
        for i, (ax, name, arr) in enumerate(zip(grid[1], names, arrays)):
            log_im = ax.imshow(np.log10(1 + np.clip(arr, 0, None) / scale), cmap=ERF_CMAP, vmin=0,
                               vmax=math.log10(1 + 10.0 ** log_decades), extent=extent)
            ax.set_title(f"{name}, log scale")
            ax.set_xlabel("x (px)")
            if i == 0:
                ax.set_ylabel("y (px)")
            else:
                ax.tick_params(labelleft=False)
        log_cb = fig.colorbar(log_im, ax=list(grid[1]), shrink=0.85, aspect=15)
        log_cb.set_label(f"log10(1 + x / 1e-{log_decades} max)")
    if box is not None or threshold is not None or extents:
        notes = []
        if box is not None:
            notes.append(f"dashed: TRF {fmt_num(box[2] - box[0])}x{fmt_num(box[3] - box[1])} px")
        if extents:
            notes.append(f"green: {size_label}")
        if threshold is not None:
            notes.append(f"cyan: {threshold:g} max (peak)")
        fig.supxlabel("; ".join(notes), fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _to_float(value: object, name: str) -> float:
    """A size in pixels as float (NaN allowed); refuses negatives and non-numbers."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"sizes[{name!r}] is {value!r}; expected an ERF side in pixels") from None
    if v < 0:
        raise ValueError(f"sizes[{name!r}] is {value!r}; expected an ERF side in pixels >= 0")
    return v
