"""Segmentation metrics from one confusion matrix (Long et al., FCN, CVPR 2015, Sec. 5).

Let ``n[i, j]`` be the number of pixels of ground-truth class ``i`` predicted as
class ``j`` (void pixels are never counted), ``t[i] = sum_j n[i, j]`` the
pixels of class ``i`` and ``p[j] = sum_i n[i, j]`` the pixels predicted ``j``:

* pixel accuracy           ``sum_i n[i, i] / sum_i t[i]``
* class accuracy           ``acc[i] = n[i, i] / t[i]``
* intersection over union  ``iou[i] = n[i, i] / (t[i] + p[i] - n[i, i])``
* mean accuracy / mean IoU the mean of ``acc`` / ``iou`` over the classes where it is defined
* frequency-weighted IoU   ``sum_i t[i] * iou[i] / sum_i t[i]``

Undefined values. A class absent from both the ground truth and the
predictions has ``iou = 0/0``; it is reported as NaN and left out of the mean
IoU (the usual convention of FCN's and DeepLab's evaluation scripts). A class
absent from the ground truth has ``acc = 0/0`` (NaN, left out of the mean
accuracy), but if it was predicted its IoU is a well-defined 0 and counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from erf.util import finite_or_none, format_percent

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "metrics_table"]


@dataclass(frozen=True)
class SegmentationMetrics:
    """The metrics of one confusion matrix; fractions in [0, 1], NaN where undefined.

    Args:
        pixel_acc: fraction of non-void pixels labelled correctly.
        mean_acc: mean per-class accuracy over classes present in the ground truth.
        mean_iou: mean IoU over classes present in the ground truth or the predictions.
        fw_iou: IoU averaged with weights proportional to each class's pixel count.
        per_class_iou: (K,) IoU of each class.
        per_class_acc: (K,) accuracy (recall) of each class.
        pixels: number of non-void pixels counted.
    """

    pixel_acc: float
    mean_acc: float
    mean_iou: float
    fw_iou: float
    per_class_iou: tuple[float, ...]
    per_class_acc: tuple[float, ...]
    pixels: int

    def to_dict(self) -> dict:
        """JSON-safe dict: NaN becomes ``None`` (strict JSON has no NaN)."""
        return finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentationMetrics":
        """Inverse of :meth:`to_dict` (``None`` back to NaN)."""

        def nan(v):
            return float("nan") if v is None else float(v)

        return cls(
            pixel_acc=nan(d["pixel_acc"]), mean_acc=nan(d["mean_acc"]), mean_iou=nan(d["mean_iou"]),
            fw_iou=nan(d["fw_iou"]), per_class_iou=tuple(nan(v) for v in d["per_class_iou"]),
            per_class_acc=tuple(nan(v) for v in d["per_class_acc"]), pixels=int(d["pixels"]),
        )


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix on the predictions' device; rows are ground truth.

    Args:
        num_classes: K, the number of classes (void excluded).
        ignore_index: label of void pixels, never counted (VOC, CamVid here: 255).
        device: where the counts live; keep it where the predictions are.

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]]))
        >>> cm.matrix.tolist(), cm.compute().pixel_acc
        ([[1, 0, 0], [0, 1, 0], [0, 0, 0]], 1.0)
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, device: str | torch.device = "cpu"):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch.

        Args:
            pred: (B, H, W) predicted labels, or (B, K, H, W) scores (argmax over K is taken).
            target: (B, H, W) ground-truth labels in ``[0, K)`` or ``ignore_index``.
        """
        K = self.num_classes
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[1] != K:
                raise ValueError(f"scores of shape {tuple(pred.shape)} do not fit targets of shape "
                                 f"{tuple(target.shape)} and {K} classes; expected (B, {K}, H, W)")
            pred = pred.argmax(1)  # (B, H, W)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        pred = pred.to(self.matrix.device, torch.int64).flatten()
        target = target.to(self.matrix.device, torch.int64).flatten()
        valid = target != self.ignore_index  # (N,): void pixels drop out here
        pred, target = pred[valid], target[valid]
        if target.numel() and (target.min() < 0 or target.max() >= K):
            bad = target[(target < 0) | (target >= K)][0].item()
            raise ValueError(f"target label {bad} is outside the {K} classes [0, {K - 1}] "
                             f"and is not the ignore label {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= K):
            bad = pred[(pred < 0) | (pred >= K)][0].item()
            raise ValueError(f"predicted label {bad} is outside the {K} classes [0, {K - 1}]")
        # Each (gt, pred) pair maps to one cell index gt * K + pred; bincount counts them all at once.
        self.matrix += torch.bincount(target * K + pred, minlength=K * K).view(K, K)

    def all_reduce(self) -> None:
        """Sum the counts over all processes of the default group (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> SegmentationMetrics:
        """The metrics of the counts so far (see the module docstring for the definitions)."""
        n = self.matrix.detach().to("cpu", torch.float64)  # (K, K): rows ground truth, columns prediction
        tp = n.diagonal()  # (K,)
        gt = n.sum(1)  # (K,) t_i
        predicted = n.sum(0)  # (K,) p_i
        total = gt.sum()
        union = gt + predicted - tp  # (K,)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        pixel_acc = (tp.sum() / total).item() if total > 0 else float("nan")
        fw_iou = ((gt * iou.nan_to_num(0.0)).sum() / total).item() if total > 0 else float("nan")
        return SegmentationMetrics(
            pixel_acc=pixel_acc,
            mean_acc=_nanmean(acc),
            mean_iou=_nanmean(iou),
            fw_iou=fw_iou,
            per_class_iou=tuple(iou.tolist()),
            per_class_acc=tuple(acc.tolist()),
            pixels=int(total.item()),
        )


def _nanmean(x: torch.Tensor) -> float:
    defined = x[~x.isnan()]
    return defined.mean().item() if defined.numel() else float("nan")


def metrics_table(columns: dict[str, SegmentationMetrics], classes: Sequence[str]) -> str:
    """A plain-text table of one or more runs' metrics side by side, in percent.

    Args:
        columns: column title -> metrics (all with ``len(classes)`` classes).
        classes: class names, one per row of per-class IoU.

    Example:
        >>> print(metrics_table({"FCN": m1, "ParseNet": m2}, ["sky", "road"]))  # doctest: +SKIP
        metric           FCN  ParseNet
        pixel acc       81.2      90.4
        ...
    """
    for title, m in columns.items():
        if len(m.per_class_iou) != len(classes):
            raise ValueError(f"column {title!r} has {len(m.per_class_iou)} classes but {len(classes)} class names were given")
    rows = [("pixel acc", "pixel_acc"), ("mean acc", "mean_acc"), ("mean IoU", "mean_iou"), ("fw IoU", "fw_iou")]
    table = [("metric", *columns.keys())]
    for label, key in rows:
        table.append((label, *(format_percent(getattr(m, key)) for m in columns.values())))
    table.append(("IoU per class", *("" for _ in columns)))
    for k, name in enumerate(classes):
        table.append((f"  {name}", *(format_percent(m.per_class_iou[k]) for m in columns.values())))
    first = max(len(r[0]) for r in table)
    widths = [max(len(r[c]) for r in table) for c in range(1, len(table[0]))]
    out = []
    for r in table:
        cells = [r[0].ljust(first)] + [cell.rjust(max(w, 6)) for cell, w in zip(r[1:], widths)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
