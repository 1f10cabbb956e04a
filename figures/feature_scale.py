"""Feature scale across layers, before and after L2 normalisation (ParseNet's motivation).

ParseNet (Liu et al. 2015, Sec. 3.3 and Fig. 3) observes that the features
it fuses (conv4_3, conv5_3, fc7 and the global pool6) differ in scale by
orders of magnitude, so that concatenating them lets the largest dominate;
normalising each to unit L2 norm and learning a per-channel scale fixes
this. This figure plots the per-position L2 norms on a log axis.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from erf.util import unknown_name
from figures._style import COLUMN_WIDTH, check_nonempty, check_width, new_figure, styled

__all__ = ["fig_feature_scale"]

BEFORE_COLOR = "0.6"
AFTER_COLOR = "tab:blue"


@styled
def fig_feature_scale(
    norms_before: Mapping[str, np.ndarray],
    norms_after: Mapping[str, np.ndarray] | None = None,
    *,
    title: str | None = None,
    width: float = COLUMN_WIDTH,
) -> Figure:
    """Box plots (log scale) of per-position feature L2 norms per layer, before and after normalisation.

    Args:
        norms_before: layer name -> 1-D array of ``||x[:, y, x]||_2`` at sampled
            positions (one value per position and image), in network order,
            e.g. ``{"conv4_3": ..., "conv5_3": ..., "fc7": ..., "pool6": ...}``.
        norms_after: the same after L2 normalisation and learned scaling;
            its keys must be among ``norms_before``'s. Optional.
        title: axes title; by default "Feature scale per layer".
        width: figure width in inches (3.5 = one paper column).

    Non-finite and non-positive norms cannot sit on a log axis: they are left
    out, and their count is noted under the axis.

    Returns:
        A Figure with one axes (log y) and a legend "before" / "after".

    Example:
        >>> rng = np.random.default_rng(0)
        >>> fig = fig_feature_scale({"conv4_3": rng.gamma(2, 100, 50), "fc7": rng.gamma(2, 5, 50)},
        ...                         {"conv4_3": np.full(50, 10.0), "fc7": np.full(50, 10.0)})
        >>> fig.axes[0].get_yscale()
        'log'
    """
    check_nonempty(norms_before, "norms_before", "layer")
    layers = [str(k) for k in norms_before]
    after = dict(norms_after or {})
    for key in after:
        if key not in norms_before:
            raise unknown_name("layer in norms_after", key, layers, show_all=True)
    width = check_width(width)
    series = [("before", "before L2 norm", BEFORE_COLOR, norms_before)]
    if after:
        series.append(("after", "after L2 norm + scale", AFTER_COLOR, after))

    fig = new_figure(width, 0.7 * width + 0.3)
    ax = fig.add_subplot()
    box_w = 0.7 / len(series)
    dropped = 0
    for s, (label, _, color, norms) in enumerate(series):
        for i, layer in enumerate(layers):
            if layer not in norms:
                continue
            values = _as_norms(norms[layer], f"norms_{label}[{layer!r}]")
            keep = values[np.isfinite(values) & (values > 0)]  # (N',): what a log axis can show
            dropped += values.size - keep.size
            if keep.size == 0:
                continue
            pos = i + (s - (len(series) - 1) / 2) * box_w
            ax.boxplot(
                keep, positions=[pos], widths=0.85 * box_w, patch_artist=True, manage_ticks=False,
                boxprops=dict(facecolor=color, edgecolor="black", linewidth=0.6),
                medianprops=dict(color="black", linewidth=1.0),
                whiskerprops=dict(linewidth=0.6), capprops=dict(linewidth=0.6),
                flierprops=dict(marker=".", markersize=2, markeredgecolor=color, alpha=0.5),
            )
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylabel("L2 norm per position")
    ax.set_xlabel("layer" + (f"\n({dropped} zero or non-finite values not shown)" if dropped else ""))
    ax.set_title(title or "Feature scale per layer")
    ax.grid(axis="y", which="major", linewidth=0.4, alpha=0.5)
    handles = [Patch(facecolor=c, edgecolor="black", linewidth=0.6, label=text) for _, text, c, _ in series]
    # Below the axes: inside, "best" still lands on boxes when the layers' scales overlap.
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def _as_norms(values: object, name: str) -> np.ndarray:
    """A 1-D float array of norms; a scalar is one sample."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {values!r}; expected a 1-D array of L2 norms") from None
    if arr.ndim > 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 1-D array of L2 norms (flatten positions first)")
    return np.atleast_1d(arr)
