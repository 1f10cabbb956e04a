"""Occlusion ERF (Zhou et al. 2015) against gradient ERF (Luo et al. 2016) for the same layer.

The two probes measure different things: occlusion the change of a unit
under a local noise patch (a finite perturbation, through every
non-linearity), the gradient the unit's first-order sensitivity to each
pixel. Each map is shown as a fraction of its own maximum (their units
differ), with a horizontal profile through each peak to compare shapes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from figures._style import (
    ERF_CMAP,
    OVERLAY_ALPHA,
    PAGE_WIDTH,
    as_box,
    as_image,
    as_map,
    check_fraction,
    check_width,
    fmt_stats,
    fraction_of_max,
    greyscale,
    new_figure,
    styled,
)

__all__ = ["fig_methods"]

METHOD_COLORS = ("tab:orange", "tab:blue")
_PROFILE_TOP = 1.5  # the profile's y range ends here: the band above 1 holds the legend


@styled
def fig_methods(
    occlusion_map: np.ndarray,
    gradient_map: np.ndarray,
    stats_occ: Mapping[str, Any],
    stats_grad: Mapping[str, Any],
    *,
    image: np.ndarray | None = None,
    trf_box: tuple[float, float, float, float] | None = None,
    threshold: float | None = 0.5,
    names: tuple[str, str] = ("occlusion", "gradient"),
    title: str | None = None,
    width: float = PAGE_WIDTH,
) -> Figure:
    """Both ERF maps side by side, statistics in their titles, plus their profiles through the peak.

    Args:
        occlusion_map: (H, W) occlusion ERF map (discrepancy, >= 0).
        gradient_map: (H', W') gradient ERF map (|d out / d input|, >= 0);
            usually the same grid as ``occlusion_map``.
        stats_occ: statistics of the occlusion map shown in its title, in
            order, e.g. ``{"side (px)": 48.0, "sigma (px)": 12.3}``; numbers
            print with 3 significant digits, NaN as "n/a".
        stats_grad: the same for the gradient map.
        image: optional (H, W, 3) image under both maps (both maps must then
            have its size).
        trf_box: optional TRF ``(top, left, bottom, right)`` in map pixels
            (half-open), outlined dashed on both maps.
        threshold: contour at this fraction of each map's maximum; None for none.
        names: panel names of the two methods.
        title: figure title; by default none.
        width: figure width in inches (7 = a page width); below 5 in the
            profile goes under the maps, one statistic per title line.

    Returns:
        A Figure with 3 axes (two maps, one profile plot) and a colour bar.

    Example:
        >>> m = np.zeros((9, 9)); m[4, 4] = 1
        >>> fig = fig_methods(m, m, {"side (px)": 1.0}, {"side (px)": 1.0})
        >>> fig.axes[0].get_title()
        'occlusion\\nside (px) 1'
    """
    occ = as_map(occlusion_map, "occlusion_map")
    grad = as_map(gradient_map, "gradient_map")
    if image is not None:
        image = as_image(image, "image")
        for name, m in (("occlusion_map", occ), ("gradient_map", grad)):
            if m.shape != image.shape[:2]:
                raise ValueError(f"{name} has shape {m.shape}; expected {image.shape[:2]}, the size of image")
    box = None if trf_box is None else as_box(trf_box, "trf_box")
    if threshold is not None:
        threshold = check_fraction(threshold, "threshold")
    if len(names) != 2:
        raise ValueError(f"names is {names!r}; expected two method names (occlusion, gradient)")
    for label, stats in (("stats_occ", stats_occ), ("stats_grad", stats_grad)):
        if not isinstance(stats, Mapping):
            raise TypeError(f"{label} is a {type(stats).__name__}; expected a dict of statistic name -> value")
    width = check_width(width)

    narrow = width < 5.0  # one column: the profile goes under the maps instead of beside them
    titles = [fmt_stats(stats_occ, per_line=1 if narrow else 2), fmt_stats(stats_grad, per_line=1 if narrow else 2)]
    n_lines = 1 + max(t.count("\n") + 1 if t else 0 for t in titles)
    aspect = max(occ.shape[0] / occ.shape[1], grad.shape[0] / grad.shape[1])
    bar_h = 0.08
    extra = 0.14 * n_lines + 0.9 + (0.2 if title else 0)  # in: titles, tick labels, colour-bar label
    # Constrained layout adds the title, tick and label margins around these cells.
    if narrow:
        map_w = (width - 0.7) / 2
        prof_h = 0.55 * map_w * 2
        fig = new_figure(width, map_w * aspect + bar_h + prof_h + extra + 0.55)
        grid = fig.add_gridspec(3, 2, height_ratios=[map_w * aspect, bar_h, prof_h])
        ax_occ, ax_grad = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
        ax_prof, bar_cell = fig.add_subplot(grid[2, :]), grid[1, :]
    else:
        map_w = (width - 0.9) / 3.15  # in: tick-label margins, then the profile slightly wider
        fig = new_figure(width, map_w * aspect + bar_h + extra)
        grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 1.15], height_ratios=[map_w * aspect, bar_h])
        ax_occ, ax_grad, ax_prof = (fig.add_subplot(grid[0, i]) for i in range(3))
        ax_prof.set_box_aspect(aspect)
        bar_cell = grid[1, 0:2]
    im = None
    for ax, m, name, text, color in zip((ax_occ, ax_grad), (occ, grad), names, titles, METHOD_COLORS):
        H, W = m.shape
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)
        scaled = fraction_of_max(m)  # (H, W) in [0, 1], NaN kept (drawn blank)
        filled = np.nan_to_num(scaled)  # (H, W): NaN as "no effect" for contour, peak and profile
        if image is not None:
            ax.imshow(greyscale(image), cmap="gray", vmin=0, vmax=1, extent=extent)
            im = ax.imshow(scaled, cmap=ERF_CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA, extent=extent)
        else:
            im = ax.imshow(scaled, cmap=ERF_CMAP, vmin=0, vmax=1, extent=extent)
        if threshold is not None and filled.max() > threshold:  # a contour needs values on both sides
            ax.contour(np.arange(W), np.arange(H), filled, levels=[threshold], colors="cyan", linewidths=0.9)
        if box is not None:
            ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), box[3] - box[1], box[2] - box[0],
                                   fill=False, edgecolor="white", linestyle="--", linewidth=1.0))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title(f"{name}\n{text}" if text else name, color="black")
        ax.set_xlabel("x (px)")
        for spine in ax.spines.values():
            spine.set_edgecolor(color)  # ties each map to its profile line
            spine.set_linewidth(1.5)

        peak_y, peak_x = _peak(filled)
        ax_prof.plot(np.arange(W) - peak_x, scaled[peak_y], color=color, label=name, linewidth=1.0)
    ax_occ.set_ylabel("y (px)")
    # The colour bar in its own row, so both maps keep the same size.
    cb = fig.colorbar(im, cax=fig.add_subplot(bar_cell), orientation="horizontal")
    cb.set_label("fraction of the map's own maximum")
    if threshold is not None:
        ax_prof.axhline(threshold, color="0.5", linestyle=":", linewidth=0.8, label=f"threshold {threshold:g}")
    ax_prof.set_xlabel("x offset from peak (px)")
    ax_prof.set_ylabel("fraction of max")
    ax_prof.set_ylim(0, _PROFILE_TOP)
    ax_prof.set_yticks([0, 0.25, 0.5, 0.75, 1.0])  # fixed labels: constrained layout sizes the margin right on the first draw
    ax_prof.set_title("row through each peak")
    ax_prof.grid(linewidth=0.4, alpha=0.5)
    # In a band above 1, where no profile goes (each is a fraction of its own maximum): a wide ERF's tails
    # fill the corners too, and a legend in a corner covered them.
    ax_prof.legend(loc="upper center", ncol=2, frameon=False, borderaxespad=0.2, columnspacing=1.0,
                   handlelength=1.5)
    if title:
        fig.suptitle(title)
    return fig


def _peak(values: np.ndarray) -> tuple[int, int]:
    """(y, x) of the maximum; the centre for a flat map."""
    if values.max() <= 0:
        return values.shape[0] // 2, values.shape[1] // 2
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(y), int(x)
