"""Training curves: loss and mean IoU against step, one line per run."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from erf.util import unknown_name
from figures._style import PAGE_WIDTH, check_nonempty, check_width, new_figure, styled

__all__ = ["fig_training_curves"]

_KEYS = ("step", "loss", "eval_step", "miou")


@styled
def fig_training_curves(
    runs: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    smoothing: float = 0.6,
    log_loss: bool = False,
    title: str | None = None,
    width: float = PAGE_WIDTH,
) -> Figure:
    """Training loss (left) and validation mean IoU (right) against step, one colour per run.

    Args:
        runs: run name -> ``{"step": [...], "loss": [...], "eval_step": [...],
            "miou": [...]}``; ``step``/``loss`` and ``eval_step``/``miou`` pair
            up element by element. mIoU is a fraction in [0, 1], plotted in
            percent. A run without evaluations may leave out ``eval_step`` and
            ``miou``. NaN values (a diverged step, an empty evaluation) leave gaps.
        smoothing: exponential moving average weight for the loss, in [0, 1);
            the raw loss is drawn faintly underneath. 0 draws the raw loss only.
        log_loss: log scale for the loss axis.
        title: figure title; by default none.
        width: figure width in inches (7 = a page width); below 5 in the
            mIoU panel goes under the loss panel.

    Returns:
        A Figure with 2 axes and one figure legend naming every run with its
        best mIoU.

    Example:
        >>> run = {"step": [0, 1, 2], "loss": [2.0, 1.5, 1.2], "eval_step": [2], "miou": [0.31]}
        >>> fig = fig_training_curves({"FCN": run})
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['training loss', 'mean IoU (%)']
    """
    check_nonempty(runs, "runs", "run")
    if not (0.0 <= float(smoothing) < 1.0):
        raise ValueError(f"smoothing is {smoothing!r}; expected an EMA weight in [0, 1)")
    width = check_width(width)
    parsed = {str(name): _parse_run(str(name), run) for name, run in runs.items()}

    narrow = width < 5.0  # one column: loss above mIoU instead of beside it
    legend_cols = 1 if narrow else min(len(parsed), 3)
    legend_h = 0.17 * -(-len(parsed) // legend_cols) + 0.1
    panel_h = 0.5 * width if narrow else 0.33 * width
    fig = new_figure(width, (2 if narrow else 1) * (panel_h + 0.45) + legend_h + (0.2 if title else 0))
    ax_loss, ax_iou = fig.subplots(2, 1) if narrow else fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(parsed))]
    handles, labels = [], []
    for color, (name, (step, loss, eval_step, miou)) in zip(colors, parsed.items()):
        if smoothing > 0 and loss.size > 1:
            ax_loss.plot(step, loss, color=color, alpha=0.25, linewidth=0.7)
            (line,) = ax_loss.plot(step, _ema(loss, smoothing), color=color)
        else:
            (line,) = ax_loss.plot(step, loss, color=color)
        finite = miou[np.isfinite(miou)]
        best = f"best mIoU {100 * finite.max():.1f}%" if finite.size else "no evaluation"
        marker = "o" if miou.size <= 30 else None
        ax_iou.plot(eval_step, 100 * miou, color=color, marker=marker)
        handles.append(line)
        labels.append(f"{name} ({best})")
    if log_loss:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss" + (f" (EMA {smoothing:g}, raw faint)" if smoothing > 0 else ""))
    ax_iou.set_xlabel("step")
    ax_iou.set_ylabel("mean IoU (%)")
    ax_iou.set_title("validation mean IoU")
    for ax in (ax_loss, ax_iou):
        ax.grid(linewidth=0.4, alpha=0.5)
    # One legend for both panels, under them: run names can be long, the panels stay uncluttered.
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _parse_run(name: str, run: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, ...]:
    """Check one run's series and return (step, loss, eval_step, miou) as float arrays."""
    if not isinstance(run, Mapping):
        raise TypeError(f"run {name!r} is a {type(run).__name__}; expected a dict with keys {', '.join(_KEYS)}")
    for key in run:
        if key not in _KEYS:
            raise unknown_name(f"key in run {name!r}", key, _KEYS, show_all=True)
    for key in ("step", "loss"):
        if key not in run:
            raise ValueError(f"run {name!r} has no {key!r}; expected keys {', '.join(_KEYS)}")
    if ("eval_step" in run) != ("miou" in run):
        raise ValueError(f"run {name!r} has only one of 'eval_step' and 'miou'; expected both or neither")
    arrays = []
    for key in _KEYS:
        try:
            arr = np.asarray(run.get(key, []), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"run {name!r} has {key}={run[key]!r}; expected a list of numbers") from None
        if arr.ndim != 1:
            raise ValueError(f"run {name!r} has {key} of shape {arr.shape}; expected a 1-D list")
        arrays.append(arr)
    step, loss, eval_step, miou = arrays
    if step.size != loss.size:
        raise ValueError(f"run {name!r} has {step.size} steps and {loss.size} losses; expected one loss per step")
    if eval_step.size != miou.size:
        raise ValueError(f"run {name!r} has {eval_step.size} eval steps and {miou.size} mIoU values; expected one per eval step")
    finite = miou[np.isfinite(miou)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(
            f"run {name!r} has mIoU values in [{finite.min():g}, {finite.max():g}]; expected fractions in [0, 1]"
        )
    return step, loss, eval_step, miou


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Bias-corrected exponential moving average; NaN entries are skipped and stay NaN.

    s_t = weight * s_{t-1} + (1 - weight) * x_t from s_0 = 0, divided by
    (1 - weight^n) after n finite values, so early points are not pulled to 0.
    """
    out = np.full(values.shape, math.nan)
    acc, n = 0.0, 0
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc = weight * acc + (1.0 - weight) * v
            n += 1
            out[i] = acc / (1.0 - weight**n)
    return out
