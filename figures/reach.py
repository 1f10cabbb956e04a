"""How far the ERF reaches, layer by layer, in several models, with bootstrap confidence intervals.

The half-max side measures the peak of an ERF map; these panels measure its
reach (see :mod:`erf.stats`): the sides of the centred squares holding 50%,
90% and 99% of the contribution, and the share of the contribution lying far
from the neuron. Each model is one colour, each layer one x position, and the
error bars are the intervals the caller computed (e.g. a percentile bootstrap
over units or images).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from figures._style import PAGE_WIDTH, check_nonempty, check_width, new_figure, styled

__all__ = ["fig_reach_comparison"]

MODEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


@styled
def fig_reach_comparison(
    layers: Sequence[str],
    measures: Mapping[str, Mapping[str, np.ndarray]],
    *,
    title: str | None = None,
    width: float = PAGE_WIDTH,
) -> Figure:
    """One panel per measure: its value per layer for each model, with confidence intervals as error bars.

    Args:
        layers: layer names in network order, the x axis of every panel.
        measures: panel label (e.g. ``"90% mass side (px)"``) -> model name -> (L, 3) array of
            ``(value, interval low, interval high)`` per layer. NaN values are not drawn; a NaN
            interval draws the value without a bar. Model order is the legend order.
        title: figure title; by default none.
        width: figure width in inches (7 = a page width).

    Returns:
        A Figure with one axes per measure and one legend under them.

    Example:
        >>> v = {"FCN": np.array([[10, 8, 12], [20, 18, 22]]), "ParseNet": np.array([[12, 9, 15], [40, 30, 50]])}
        >>> fig = fig_reach_comparison(["fc7", "score"], {"90% mass side (px)": v})
        >>> fig.axes[0].get_ylabel(), [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ('90% mass side (px)', ['fc7', 'score'])
    """
    names = [str(n) for n in layers]
    check_nonempty(names, "layers", "layer name")
    check_nonempty(measures, "measures", "measure (panel label -> model -> values)")
    L = len(names)
    checked: dict[str, dict[str, np.ndarray]] = {}
    models: list[str] = []
    for label, per_model in measures.items():
        if not isinstance(per_model, Mapping) or not per_model:
            raise ValueError(f"measures[{label!r}] is {per_model!r}; expected a dict model name -> (L, 3) values")
        checked[label] = {}
        for model, values in per_model.items():
            try:
                arr = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"measures[{label!r}][{model!r}] is {values!r}; expected numbers") from None
            if arr.shape != (L, 3):
                raise ValueError(f"measures[{label!r}][{model!r}] has shape {arr.shape}; expected ({L}, 3): "
                                 f"(value, low, high) for each of {', '.join(names)}")
            checked[label][str(model)] = arr
            if str(model) not in models:
                models.append(str(model))
    width = check_width(width)

    n = len(checked)
    fig = new_figure(width, 2.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    x = np.arange(L)
    offsets = (np.arange(len(models)) - (len(models) - 1) / 2) * 0.18  # models side by side within a layer
    rotate = L > 3 or max(map(len, names)) > 7
    for ax, (label, per_model) in zip(axes, checked.items()):
        for j, model in enumerate(models):
            if model not in per_model:
                continue
            value, lo, hi = per_model[model].T  # (L,) each
            err = np.vstack([value - lo, hi - value])  # (2, L): distances below and above
            err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
            ax.errorbar(x + offsets[j], value, yerr=err, marker="o", linestyle="-", capsize=2.5,
                        color=MODEL_COLORS[j % len(MODEL_COLORS)], label=model)
        ax.set_xticks(x, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.5, L - 0.5)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        top = max((np.nanmax(a[:, :]) for a in per_model.values() if np.isfinite(a).any()), default=math.nan)
        if "share" in label and not (math.isfinite(top) and top > 1):
            ax.set_ylim(0, 1)  # a share: the whole scale, so 0.1 does not look like 1
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(models), frameon=False,
               title="error bars: confidence interval")
    if title:
        fig.suptitle(title)
    return fig
