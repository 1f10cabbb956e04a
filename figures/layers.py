"""Zhou et al. (2015) style: theoretical against empirical receptive-field size, layer by layer.

Zhou et al. (ICLR 2015), Table 1, found the empirical RF of deep layers far
smaller than the theoretical one; ParseNet (Liu et al. 2015, Sec. 2) builds
its case for global context on that gap. This figure shows it for each
probed layer of one model, with the ERF/TRF ratio written above each layer.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from figures._style import COLUMN_WIDTH, check_nonempty, check_width, fmt_num, new_figure, styled

__all__ = ["fig_trf_vs_erf"]

TRF_COLOR = "0.35"
ERF_COLOR = "tab:orange"


@styled
def fig_trf_vs_erf(
    layers: Sequence[str],
    trf_side: Sequence[float],
    erf_side: Sequence[float | Sequence[float]],
    erf_side_std: Sequence[float] | None = None,
    *,
    image_size: float | None = None,
    title: str | None = None,
    width: float = COLUMN_WIDTH,
) -> Figure:
    """TRF side and ERF side (mean, spread over units) per layer, in pixels, with ERF/TRF annotated.

    Args:
        layers: layer names in network order, e.g. ``["conv4_3", "conv5_3", "fc7"]``.
        trf_side: (L,) theoretical RF side per layer in pixels.
        erf_side: per layer, either the mean ERF side in pixels, or a 1-D
            sequence of per-unit ERF sides (then the mean and standard
            deviation are computed here and the units drawn as dots).
            NaN entries (a layer or unit with no measurable ERF) are skipped.
        erf_side_std: (L,) standard deviation over units, only when
            ``erf_side`` holds means; drawn as error bars.
        image_size: input image side in pixels; drawn as a reference line.
        title: figure title; by default "Receptive field size by layer".
        width: figure width in inches (3.5 = one paper column).

    Returns:
        A Figure with one axes: x = layers, y = side (px).

    Example:
        >>> fig = fig_trf_vs_erf(["conv5_3", "fc7"], [196, 404], [[60, 70, 80], [90, 110]], image_size=224)
        >>> fig.axes[0].get_ylabel()
        'receptive-field side (px)'
    """
    names = [str(n) for n in layers]
    check_nonempty(names, "layers", "layer name")
    L = len(names)
    trf = _as_sides(trf_side, "trf_side", L)
    if len(erf_side) != L:
        raise ValueError(f"erf_side has {len(erf_side)} entries; expected one per layer ({L}: {', '.join(names)})")
    try:
        per_unit = [np.asarray(v, dtype=np.float64) for v in erf_side]
    except (TypeError, ValueError):
        raise ValueError(f"erf_side is {erf_side!r}; expected per layer a number or a list of unit sides (pixels)") from None
    spread_given = any(v.ndim == 1 for v in per_unit)
    for name, v in zip(names, per_unit):
        if v.ndim > 1:
            raise ValueError(f"erf_side for layer {name!r} has shape {v.shape}; expected a number or a 1-D list of unit sides")
    if spread_given and erf_side_std is not None:
        raise ValueError("erf_side_std was given with per-unit erf_side lists; pass either means with erf_side_std, or per-unit lists")
    if spread_given:
        mean = np.array([_nan_stat(np.mean, np.atleast_1d(v)) for v in per_unit])
        std = np.array([_nan_stat(np.std, np.atleast_1d(v)) for v in per_unit])
    else:
        mean = np.array([float(v) for v in per_unit])
        std = None if erf_side_std is None else _as_sides(erf_side_std, "erf_side_std", L)
    for name, v in zip(names, per_unit):
        if np.any(np.atleast_1d(v)[np.isfinite(v)] < 0):
            raise ValueError(f"erf_side for layer {name!r} has negative values; expected sides in pixels >= 0")
    if image_size is not None and not (isinstance(image_size, (int, float, np.number)) and image_size > 0):
        raise ValueError(f"image_size is {image_size!r}; expected a positive number of pixels or None")
    width = check_width(width)

    fig = new_figure(width, 0.75 * width + 0.3)
    ax = fig.add_subplot()
    x = np.arange(L)
    ax.plot(x, trf, marker="s", color=TRF_COLOR, label="theoretical RF")
    if spread_given:
        rng = np.random.default_rng(0)  # fixed jitter: the figure is the same on every run
        for i, v in enumerate(per_unit):
            v = np.atleast_1d(v)
            v = v[np.isfinite(v)]
            ax.scatter(x[i] + rng.uniform(-0.12, 0.12, v.size), v, s=5, color=ERF_COLOR, alpha=0.35,
                       linewidths=0, label="ERF, one unit" if i == 0 else None)
    ax.errorbar(x, mean, yerr=std, marker="o", color=ERF_COLOR, capsize=3,
                label="ERF, mean ± std over units" if std is not None else "empirical RF")
    if image_size is not None:
        ax.axhline(float(image_size), color="tab:blue", linestyle=":", linewidth=1.0,
                   label=f"image side {fmt_num(image_size)} px")

    # ERF/TRF ratio above the taller of the two markers of each layer.
    top = np.nanmax(np.vstack([trf, mean + (0 if std is None else np.nan_to_num(std))]), axis=0)
    for i in range(L):
        ratio = mean[i] / trf[i] if trf[i] > 0 else math.nan
        text = "n/a" if not math.isfinite(ratio) else f"{ratio:.2f}"
        ax.annotate(text, (x[i], top[i] if math.isfinite(top[i]) else trf[i]), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))

    ax.set_xticks(x, names, rotation=30 if L > 4 or max(map(len, names)) > 8 else 0,
                  ha="right" if L > 4 or max(map(len, names)) > 8 else "center")
    ax.set_xlim(-0.5, L - 0.5)
    # Headroom for the ratio labels above the highest marker.
    highest = np.nanmax([np.nanmax(top), *(np.nanmax(v) for v in map(np.atleast_1d, per_unit) if np.isfinite(v).any()),
                         float(image_size or 0)])
    ax.set_ylim(0, 1.15 * highest if math.isfinite(highest) and highest > 0 else 1.0)
    ax.set_xlabel("layer (numbers: ERF/TRF)")
    ax.set_ylabel("receptive-field side (px)")
    ax.set_title(title or "Receptive field size by layer")
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    ax.legend(loc="best", frameon=False)
    return fig


def _as_sides(values: Sequence[float], name: str, count: int) -> np.ndarray:
    """A (count,) float array of sides in pixels (NaN allowed, negatives refused)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {values!r}; expected {count} numbers (pixels)") from None
    if arr.shape != (count,):
        raise ValueError(f"{name} has shape {arr.shape}; expected ({count},), one per layer")
    if np.any(arr[np.isfinite(arr)] < 0):
        raise ValueError(f"{name} is {values!r}; expected sides in pixels >= 0")
    return arr


def _nan_stat(stat, values: np.ndarray) -> float:
    """``stat`` over the finite values, NaN when there are none (no warning)."""
    finite = values[np.isfinite(values)]
    return float(stat(finite)) if finite.size else math.nan
