"""Shared look and input checks for the figure functions.

Every figure is built on a bare :class:`matplotlib.figure.Figure` (no pyplot
state, so thousands of figures in one process do not leak) under one set of
rc parameters sized for print: a single paper column is about 3.5 in wide,
a full page width about 7 in, and no text is smaller than 7 pt.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "COLUMN_WIDTH",
    "PAGE_WIDTH",
    "ERF_CMAP",
    "ACTIVATION_CMAP",
    "OVERLAY_ALPHA",
    "RC",
    "DPI",
    "styled",
    "new_figure",
    "fmt_num",
    "fmt_stats",
    "as_image",
    "as_map",
    "as_box",
    "check_width",
    "check_fraction",
    "check_nonempty",
    "greyscale",
    "minmax_scale",
    "fraction_of_max",
]

COLUMN_WIDTH = 3.5  # in: one column of a two-column paper
PAGE_WIDTH = 7.0  # in: full text width of a two-column paper
ERF_CMAP = "inferno"  # perceptually uniform; dark = no effect, bright = strong effect
ACTIVATION_CMAP = "viridis"  # distinct from ERF_CMAP so panels (b) and (d) are not confused
OVERLAY_ALPHA = 0.6  # map opacity over a greyscale image

# Font sizes in pt: 7 is the smallest size journals accept at print size.
RC: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "image.interpolation": "nearest",
}
# savefig.* rc values are read when the caller saves, outside our rc context, so
# the raster resolution is pinned on the figure itself instead.
DPI = 200

F = TypeVar("F", bound=Callable[..., Figure])


def styled(func: F) -> F:
    """Run a figure function under :data:`RC`, so every artist it creates gets the print sizes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with mpl.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained layout (titles, labels and colour bars never overlap)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # an explicit Agg canvas: draw() and savefig work with no GUI and no pyplot
    return fig


def fmt_num(value: float, unit: str = "") -> str:
    """Format a statistic for a title: 3 significant digits, ``n/a`` for NaN or None."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        text = str(int(value))
    else:
        text = f"{float(value):.3g}"
    return f"{text} {unit}".rstrip() if unit else text


def fmt_stats(stats: Mapping[str, Any], per_line: int = 2) -> str:
    """``{"side_px": 48.0, "sigma_px": 12.25}`` -> ``"side_px 48, sigma_px 12.2"``, wrapped every ``per_line`` items."""
    items = []
    for key, value in stats.items():
        if isinstance(value, str):
            items.append(f"{key} {value}")
        else:
            try:
                items.append(f"{key} {fmt_num(value)}")
            except (TypeError, ValueError):
                raise TypeError(
                    f"statistic {key!r} has value {value!r} of type {type(value).__name__}; "
                    "expected a number or a string"
                ) from None
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "\n".join(lines)


def as_image(image: Any, name: str = "image") -> np.ndarray:
    """Check an RGB image: (H, W, 3) uint8, or float in [0, 1]; returns it as given (a view)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected (H, W, 3) RGB")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        if finite.size != arr.size or (finite.size and (finite.min() < 0 or finite.max() > 1)):
            raise ValueError(
                f"{name} is {arr.dtype} with values outside [0, 1] or non-finite; "
                "expected uint8 in [0, 255] or float in [0, 1]"
            )
        return arr
    raise ValueError(f"{name} has dtype {arr.dtype}; expected uint8 or float in [0, 1]")


def as_map(values: Any, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Check a 2-D map (NaN allowed); returns it as float64. ``shape`` pins (H, W) when given."""
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected a 2-D (H, W) map")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} has dtype {arr.dtype}; expected a numeric map")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}; expected {tuple(shape)}")
    return arr.astype(np.float64, copy=False)


def as_box(box: Any, name: str = "box") -> tuple[float, float, float, float]:
    """Check a ``(top, left, bottom, right)`` box in pixels, half-open like a slice (side = bottom - top)."""
    try:
        top, left, bottom, right = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {box!r}; expected 4 numbers (top, left, bottom, right)") from None
    if not all(math.isfinite(v) for v in (top, left, bottom, right)):
        raise ValueError(f"{name} is {box!r}; expected finite numbers")
    if bottom <= top or right <= left:
        raise ValueError(f"{name} is {box!r}; expected top < bottom and left < right (half-open pixel bounds)")
    return top, left, bottom, right


def check_width(width: Any) -> float:
    """Figure width in inches: a positive finite number."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"width is {width!r}; expected a positive number of inches (e.g. 3.5 or 7)") from None
    if not (math.isfinite(w) and w > 0):
        raise ValueError(f"width is {width!r}; expected a positive number of inches (e.g. 3.5 or 7)")
    return w


def check_fraction(value: Any, name: str) -> float:
    """A threshold relative to the maximum: 0 < value < 1."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {value!r}; expected a fraction of the maximum in (0, 1)") from None
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} is {value!r}; expected a fraction of the maximum in (0, 1)")
    return v


def check_nonempty(items: Sequence | Mapping, name: str, what: str) -> None:
    """Refuse an empty list or dict with a line that says what was expected in it."""
    if len(items) == 0:
        raise ValueError(f"{name} is empty; expected at least one {what}")


def greyscale(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) luminance in [0, 1], a quiet backdrop for colour overlays."""
    rgb = image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    return rgb @ np.array([0.299, 0.587, 0.114])  # (H, W): ITU-R BT.601 luma


def minmax_scale(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min and max; a constant (or all-NaN) map becomes all zeros."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or finite.max() == finite.min():
        return np.zeros_like(values)
    return (values - finite.min()) / (finite.max() - finite.min())


def fraction_of_max(values: np.ndarray) -> np.ndarray:
    """Divide by the maximum; an all-zero (or non-positive) map stays all zeros."""
    finite = values[np.isfinite(values)]
    peak = finite.max() if finite.size else 0.0
    if peak <= 0:
        return np.zeros_like(values)
    return np.clip(values / peak, 0.0, 1.0)
