"""ParseNet Fig. 2 style: image, activation, theoretical RF and empirical RF of chosen units.

Liu, Rabinovich and Berg (2015), Fig. 2, shows for a unit of fc7 the image,
its theoretical receptive field (TRF) and its empirical receptive field
(ERF, the Zhou et al. 2015 discrepancy map), which is far smaller. One row
here is one (unit, image) pair.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from erf.stats import threshold_area
from figures._style import (
    ACTIVATION_CMAP,
    ERF_CMAP,
    OVERLAY_ALPHA,
    PAGE_WIDTH,
    as_box,
    as_image,
    as_map,
    check_fraction,
    fraction_of_max,
    greyscale,
    minmax_scale,
    check_nonempty,
    check_width,
    new_figure,
    styled,
)

__all__ = ["UnitPanel", "fig_unit_panels"]


@dataclass(frozen=True, eq=False)
class UnitPanel:
    """One row of :func:`fig_unit_panels`: one unit seen on one image.

    Args:
        image: (H, W, 3) uint8 RGB image (or float in [0, 1]).
        activation: (h, w) activation map of the unit's channel on this image;
            it is stretched over the image (bilinear) for display.
        theoretical_rf: the unit's TRF box ``(top, left, bottom, right)`` in
            image pixels, unclipped (may reach outside the image), half-open
            like a slice, so its side is ``bottom - top``.
        erf_map: (H, W) discrepancy map on the image grid (non-negative).
        label: row label, e.g. ``"fc7 unit 12"``.
        erf_side: the ERF side in pixels if the caller already computed it
            (e.g. with ``erf.stats``); by default it is the side of the square
            with the area at or above ``threshold`` times the map's maximum.
    """

    image: np.ndarray
    activation: np.ndarray
    theoretical_rf: tuple[float, float, float, float]
    erf_map: np.ndarray
    label: str = ""
    erf_side: float | None = None

    def __post_init__(self) -> None:
        image = as_image(self.image, "UnitPanel.image")
        H, W = image.shape[:2]
        as_map(self.activation, "UnitPanel.activation")
        as_box(self.theoretical_rf, "UnitPanel.theoretical_rf")
        as_map(self.erf_map, "UnitPanel.erf_map", shape=(H, W))
        if self.erf_side is not None and not (
            isinstance(self.erf_side, (int, float, np.number)) and float(self.erf_side) >= 0
        ):
            raise ValueError(f"UnitPanel.erf_side is {self.erf_side!r}; expected a non-negative number of pixels or None")


@styled
def fig_unit_panels(
    rows: Sequence[UnitPanel],
    *,
    threshold: float = 0.5,
    width: float = PAGE_WIDTH,
    panels_per_row: int | None = None,
) -> Figure:
    """Four panels per unit: (a) image, (b) activation, (c) TRF box, (d) ERF map with its threshold contour.

    Panel (c) widens its view to hold the whole unclipped TRF when it leaves
    the image: the part inside the image is drawn solid, the full extent
    dashed, over a grey background. Panel (d) titles the ERF side (the side
    of the equal-area square) in pixels and its area as a fraction of the
    image. Maps are shown as fractions of their own maximum, so one colour bar
    per column serves every row.

    Args:
        rows: one :class:`UnitPanel` per row, at least one.
        threshold: contour level and size threshold as a fraction of each
            ERF map's maximum, in (0, 1); 0.5 by default.
        width: figure width in inches (7 = a full page width, 3.5 = a column).
        panels_per_row: 4 puts a unit's panels in one row, 2 in a 2 x 2 block;
            by default 4 from 5 in wide and 2 below, so every title fits.

    Returns:
        A Figure with ``4 * len(rows)`` image axes and 2 colour bars.

    Example:
        >>> H = W = 64
        >>> row = UnitPanel(np.zeros((H, W, 3), np.uint8), np.ones((8, 8)), (-10, -10, 74, 74),
        ...                 np.ones((H, W)), label="fc7 #0")
        >>> len(fig_unit_panels([row]).axes)  # 4 panels + 2 colour bars
        6
    """
    if isinstance(rows, UnitPanel):
        rows = [rows]
    check_nonempty(rows, "rows", "UnitPanel")
    for i, row in enumerate(rows):
        if not isinstance(row, UnitPanel):
            raise TypeError(f"rows[{i}] is a {type(row).__name__}; expected a UnitPanel")
    threshold = check_fraction(threshold, "threshold")
    width = check_width(width)

    if panels_per_row is None:
        panels_per_row = 4 if width >= 5.0 else 2
    if panels_per_row not in (2, 4):
        raise ValueError(f"panels_per_row is {panels_per_row!r}; expected 4 (one row per unit) or 2 (a 2 x 2 block)")

    n, cols = len(rows), panels_per_row
    lines = 4 // cols  # grid rows per unit
    # Size grid rows to their content so fixed-aspect panels fill their cells: an
    # image side per column, two title lines above, and a colour-bar row at the bottom.
    panel_side = (width - 0.35) / cols - 0.08  # in: ylabel margin, then padding between panels
    row_heights = [panel_side * _view_aspect(row) for row in rows for _ in range(lines)]
    bar_height = 0.08
    # Constrained layout adds the title, tick and label margins around these cells.
    fig = new_figure(width, sum(row_heights) + 0.34 * len(row_heights) + bar_height + 0.62)
    grid = fig.add_gridspec(len(row_heights) + 1, cols, height_ratios=[*row_heights, bar_height])
    # Panel k of unit r sits at grid row r * lines + k // cols, column k % cols.
    axes = np.array([[fig.add_subplot(grid[r * lines + k // cols, k % cols]) for k in range(4)] for r in range(n)])
    act_im = erf_im = None
    for r, row in enumerate(rows):
        ax_img, ax_act, ax_trf, ax_erf = axes[r]
        image = np.asarray(row.image)
        H, W = image.shape[:2]
        grey = greyscale(image)
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)  # pixel centres at integer coordinates

        ax_img.imshow(image, extent=extent)
        ax_img.set_title(f"(a) image\n{W}x{H} px")
        ax_img.set_ylabel(row.label)

        act = as_map(row.activation, "activation")
        h, w = act.shape
        ax_act.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent)
        act_im = ax_act.imshow(
            minmax_scale(act), cmap=ACTIVATION_CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA,
            extent=extent, interpolation="bilinear",
        )
        ax_act.set_title(f"(b) activation\n{w}x{h} map")

        top, left, bottom, right = as_box(row.theoretical_rf)
        _draw_trf(ax_trf, image, (top, left, bottom, right), extent)

        erf = as_map(row.erf_map, "erf_map")
        area = threshold_area(np.nan_to_num(erf), threshold)  # NaN: no effect; the size erf.stats reports
        erf_side = math.sqrt(area) if row.erf_side is None else float(row.erf_side)
        frac = erf_side * erf_side / (H * W)
        ax_erf.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=extent)
        scaled = fraction_of_max(erf)
        erf_im = ax_erf.imshow(scaled, cmap=ERF_CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA, extent=extent)
        if np.nanmax(scaled, initial=0) > threshold:  # a contour needs values on both sides
            ax_erf.contour(
                np.arange(W), np.arange(H), np.nan_to_num(scaled), levels=[threshold],
                colors="cyan", linewidths=1.0,
            )
        if area == 0 and row.erf_side is None:
            ax_erf.set_title("(d) ERF: none\n(flat map)")
        else:
            ax_erf.set_title(f"(d) ERF {erf_side:.0f} px\n{100 * frac:.1f}% of image")

        for ax in (ax_img, ax_act, ax_erf):
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])

    # Colour bars in their own row, so every image column keeps the same width.
    act_col, erf_col = (1, 3) if cols == 4 else (0, 1)  # under panels (b) and (d), or side by side
    cb = fig.colorbar(act_im, cax=fig.add_subplot(grid[-1, act_col]), orientation="horizontal")
    cb.set_label("activation\n(min-max scaled)")
    cb = fig.colorbar(erf_im, cax=fig.add_subplot(grid[-1, erf_col]), orientation="horizontal")
    cb.set_label(f"discrepancy\n(fraction of max)\ncontour at {threshold:g}")
    return fig


def _view_aspect(row: UnitPanel) -> float:
    """Height / width of the widest view in a row: the image, or the TRF box when it leaves the image."""
    H, W = np.asarray(row.image).shape[:2]
    top, left, bottom, right = as_box(row.theoretical_rf)
    view_h = max(bottom, H) - min(top, 0)
    view_w = max(right, W) - min(left, 0)
    return max(H / W, view_h / view_w)


def _draw_trf(ax, image: np.ndarray, box: tuple[float, float, float, float], extent) -> None:
    """TRF box over the image: clipped part solid, unclipped extent dashed, view widened to hold it."""
    H, W = image.shape[:2]
    top, left, bottom, right = box
    ax.set_facecolor("0.85")  # outside the image: the zero padding the TRF reaches into
    ax.imshow(image, extent=extent)
    c_top, c_left = max(top, 0.0), max(left, 0.0)
    c_bottom, c_right = min(bottom, float(H)), min(right, float(W))
    # Pixel i covers [i - 0.5, i + 0.5): a half-open box [top, bottom) spans top - 0.5 .. bottom - 0.5.
    if c_bottom > c_top and c_right > c_left:
        ax.add_patch(Rectangle((c_left - 0.5, c_top - 0.5), c_right - c_left, c_bottom - c_top,
                               fill=False, edgecolor="yellow", linewidth=1.4))
    leaves = top < 0 or left < 0 or bottom > H or right > W
    if leaves:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                               fill=False, edgecolor="black", linewidth=1.0, linestyle="--"))
    lo_x, hi_x = min(left, 0.0) - 0.5, max(right, float(W)) - 0.5
    lo_y, hi_y = min(top, 0.0) - 0.5, max(bottom, float(H)) - 0.5
    pad = 0.03 * max(hi_x - lo_x, hi_y - lo_y)
    ax.set_xlim(lo_x - pad, hi_x + pad)
    ax.set_ylim(hi_y + pad, lo_y - pad)
    side_h, side_w = bottom - top, right - left
    size = f"{side_h:.0f} px" if side_h == side_w else f"{side_h:.0f}x{side_w:.0f} px"
    ax.set_title(f"(c) TRF {size}" + ("\ndashed: full extent" if leaves else "\ninside image"))
