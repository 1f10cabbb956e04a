"""RepLKNet-style ERF figure: the log-scaled contribution map with the high-contribution squares."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["fig_replknet_erf"]


def fig_replknet_erf(log_map: np.ndarray, ratios: Sequence[dict], *, title: str = "") -> Figure:
    """The map ``log10(x + 1) / max`` (RepLKNet's display, its 'RdYlGn' colours) and, for each threshold,
    the centred square holding more than that fraction of it, with the area-ratio table beside.

    Args:
        log_map: (S, S) scaled contribution scores (:func:`erf.replknet.log_scale`).
        ratios: rows of :func:`erf.replknet.area_ratios` (threshold, side, area_ratio).
        title: figure title.
    """
    S_h, S_w = log_map.shape
    fig = Figure(figsize=(7.2, 5.2), layout="constrained")
    ax, tab = fig.subplots(1, 2, width_ratios=[3, 1.3])
    im = ax.imshow(log_map, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="log10(contribution + 1), / max")
    cy, cx = S_h // 2, S_w // 2
    for r in ratios:
        if r["side"] is None:
            continue
        half = r["side"] / 2
        ax.add_patch(Rectangle((cx - half, cy - half), r["side"], r["side"], fill=False, lw=0.8, ec="black"))
    ax.set_xticks([])
    ax.set_yticks([])
    tab.axis("off")
    rows = [[f"{r['threshold']:g}", "-" if r["side"] is None else str(r["side"]),
             "> all" if r["area_ratio"] is None else f"{r['area_ratio']:.4f}"] for r in ratios]
    table = tab.table(cellText=rows, colLabels=["t", "side", "area ratio"], loc="center")
    table.scale(1.0, 1.4)
    tab.set_title("high-contribution\narea ratio", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig
