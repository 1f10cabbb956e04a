"""Segmentation grid: image, ground truth and each model's prediction, with a class legend.

ParseNet (Liu et al. 2015, Fig. 4 and 5) compares FCN and ParseNet
predictions this way; the per-panel pixel accuracy (over labelled pixels)
makes the comparison quantitative at a glance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from figures._style import PAGE_WIDTH, as_image, check_nonempty, check_width, new_figure, styled

__all__ = ["fig_segmentation", "colorize_labels"]

IGNORE_COLOR = (0.82, 0.82, 0.82)  # light neutral grey: "no label", unlike any class colour


def colorize_labels(labels: np.ndarray, colors: np.ndarray, ignore_index: int | None = 255) -> np.ndarray:
    """Map an (H, W) integer label map to an (H, W, 3) float RGB image.

    Args:
        labels: (H, W) class indices in ``[0, K)``, or ``ignore_index``.
        colors: (K, 3) RGB in [0, 1].
        ignore_index: label drawn in neutral grey; None for none.

    Returns:
        (H, W, 3) float array in [0, 1].

    Example:
        >>> colorize_labels(np.array([[0, 1], [255, 1]]), np.array([[1, 0, 0], [0, 0, 1.0]])).shape
        (2, 2, 3)
    """
    labels = np.asarray(labels)
    K = len(colors)
    if labels.ndim != 2:
        raise ValueError(f"label map has shape {labels.shape}; expected (H, W)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map has dtype {labels.dtype}; expected integer class indices")
    ignore = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    bad = ~ignore & ((labels < 0) | (labels >= K))
    if bad.any():
        found = sorted(set(np.unique(labels[bad]).tolist()))[:5]
        raise ValueError(
            f"label map has values {found} outside the {K} classes; expected 0..{K - 1}"
            + (f" or ignore_index {ignore_index}" if ignore_index is not None else "")
        )
    palette = np.vstack([np.asarray(colors, dtype=np.float64), IGNORE_COLOR])  # (K + 1, 3): last row = ignore
    index = np.where(ignore, K, labels)  # (H, W)
    return palette[index]


@styled
def fig_segmentation(
    images: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    classes: Sequence[str],
    colors: Sequence | np.ndarray | None = None,
    ignore_index: int | None = 255,
    *,
    width: float = PAGE_WIDTH,
) -> Figure:
    """Rows = images; columns = image, ground truth, then each model's prediction; one class legend.

    Args:
        images: N images, each (H, W, 3) uint8 RGB (or float in [0, 1]).
        ground_truth: N (H, W) integer label maps, ``ignore_index`` where unlabelled.
        predictions: model name -> N (H, W) label maps, e.g.
            ``{"FCN": [...], "ParseNet": [...]}``; insertion order = column order.
        classes: K class names, in label order.
        colors: K colours, anything matplotlib reads (``"red"``, ``(1.0, 0, 0)``,
            ``"#ff0000"``), or (K, 3) integers in 0..255; by default ``tab10`` / ``tab20``.
        ignore_index: ground-truth label for "unlabelled", drawn grey and left
            out of the accuracy; None if every pixel is labelled.
        width: figure width in inches (7 = a page width).

    Returns:
        A Figure with ``N * (2 + len(predictions))`` axes and a figure legend
        of the classes (plus "ignore" when present). Prediction titles give
        the pixel accuracy over labelled pixels of that image.

    Example:
        >>> img = np.zeros((4, 4, 3), np.uint8); gt = np.zeros((4, 4), int)
        >>> fig = fig_segmentation([img], [gt], {"FCN": [gt]}, ["sky"])
        >>> len(fig.axes)
        3
    """
    check_nonempty(images, "images", "image")
    check_nonempty(predictions, "predictions", "model")
    check_nonempty(classes, "classes", "class name")
    N = len(images)
    if len(ground_truth) != N:
        raise ValueError(f"ground_truth has {len(ground_truth)} label maps; expected one per image ({N})")
    for name, preds in predictions.items():
        if len(preds) != N:
            raise ValueError(f"predictions[{name!r}] has {len(preds)} label maps; expected one per image ({N})")
    palette = _palette(colors, len(classes))
    width = check_width(width)

    n_cols = 2 + len(predictions)
    checked = [as_image(im, f"images[{r}]") for r, im in enumerate(images)]
    panel = (width - 0.3) / n_cols - 0.05  # in: row label margin, then padding between panels
    # Each row as tall as its image at the panel width, so images fill their cells.
    row_heights = [panel * im.shape[0] / im.shape[1] for im in checked]
    legend_rows = -(-(len(classes) + 1) // 6)
    fig = new_figure(width, sum(row_heights) + 0.2 * N + 0.3 + 0.18 * legend_rows)
    grid = fig.add_gridspec(N, n_cols, height_ratios=row_heights)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(n_cols)] for r in range(N)])
    seen_ignore = False
    for r in range(N):
        image = checked[r]
        H, W = image.shape[:2]
        gt = _as_labels(ground_truth[r], f"ground_truth[{r}]", (H, W))
        valid = gt != ignore_index if ignore_index is not None else np.ones_like(gt, dtype=bool)
        seen_ignore |= not valid.all()
        row = axes[r]
        row[0].imshow(image)
        row[0].set_title("image" if r == 0 else "")
        row[0].set_ylabel(f"#{r}")
        row[1].imshow(colorize_labels(gt, palette, ignore_index))
        row[1].set_title("ground truth" if r == 0 else "")
        for c, (name, preds) in enumerate(predictions.items(), start=2):
            pred = _as_labels(preds[r], f"predictions[{name!r}][{r}]", (H, W))
            row[c].imshow(colorize_labels(pred, palette, ignore_index))
            n_valid = int(valid.sum())
            acc = (pred[valid] == gt[valid]).mean() if n_valid else float("nan")
            acc_text = f"acc {100 * acc:.1f}%" if n_valid else "acc n/a"
            row[c].set_title(f"{name}\n{acc_text}" if r == 0 else acc_text)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(facecolor=palette[k], edgecolor="0.3", linewidth=0.4, label=str(name))
               for k, name in enumerate(classes)]
    if seen_ignore:
        handles.append(Patch(facecolor=IGNORE_COLOR, edgecolor="0.3", linewidth=0.4, label="ignore"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False,
               handlelength=1.0, columnspacing=1.0)
    return fig


def _palette(colors: Sequence | np.ndarray | None, K: int) -> np.ndarray:
    """(K, 3) RGB in [0, 1] from names, tuples or a uint8 array; tab10/tab20 by default."""
    if colors is None:
        from matplotlib import colormaps

        cmap = colormaps["tab10" if K <= 10 else "tab20"]
        if K > cmap.N:
            raise ValueError(f"classes has {K} names; pass colors explicitly for more than {cmap.N} classes")
        return np.array([cmap(k)[:3] for k in range(K)])
    if len(colors) != K:
        raise ValueError(f"colors has {len(colors)} entries; expected one per class ({K})")
    try:
        arr = np.asarray(colors)
    except ValueError:  # ragged mix of names and tuples: read one by one below
        arr = np.empty(0)
    if arr.shape == (K, 3) and np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"colors has integer values in [{arr.min()}, {arr.max()}]; expected 0..255")
        return arr.astype(np.float64) / 255.0  # (K, 3) 8-bit RGB
    out = []
    for k, c in enumerate(colors):
        try:
            out.append(to_rgb(c))
        except ValueError:
            raise ValueError(
                f"colors[{k}] is {c!r}; expected a matplotlib colour (name, '#rrggbb', or RGB floats in [0, 1])"
            ) from None
    return np.array(out)


def _as_labels(labels: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) integer label map of the image's size."""
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected {shape}, the size of its image")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} has dtype {arr.dtype}; expected integer class indices")
    return arr
