"""What every segmentation dataset shares: its description, label validation, caching and the full scan.

A concrete dataset lists its files and says how to decode one item
(:meth:`SegmentationDataset._load`); this base class maps raw label values to
training ids, checks them with the file name in the message, optionally keeps
the decoded arrays in memory, and applies the joint transform.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from erf.images import IMAGENET_MEAN, IMAGENET_STD  # VGG16's (torchvision's weights), unless a dataset says otherwise

__all__ = ["DatasetInfo", "SegmentationDataset", "voc_palette", "read_image", "read_label_png",
           "IMAGENET_MEAN", "IMAGENET_STD", "IGNORE_INDEX"]

# "Void" in every label map we produce (PASCAL VOC's boundary value).
IGNORE_INDEX = 255
_INVALID = -1  # marks raw label values that are neither a class nor ignored


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC label colours for ids ``0 .. n-1`` (id 0 is black).

    Each id's bits are spread over the high bits of R, G and B, so that
    neighbouring ids get clearly different colours.

    Example:
        >>> voc_palette(3)
        ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    """
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything about a dataset that a checkpoint must remember to rebuild its predictions.

    Args:
        name: dataset kind, e.g. ``"camvid"``.
        classes: class names; the index of a name is its training id.
        colors: one RGB colour per class, for label images and figures.
        ignore_index: the label value that is left out of the loss and the metrics.
        mean: per-channel mean of images scaled to [0, 1], subtracted before the network.
        std: per-channel standard deviation, divided by after the mean.
    """

    name: str
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in self.colors))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.classes:
            raise ValueError(f"dataset {self.name!r} has no classes; expected at least one class name")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"dataset {self.name!r} repeats class names {dup}; expected unique names")
        if len(self.colors) != len(self.classes):
            raise ValueError(f"dataset {self.name!r} has {len(self.classes)} classes but {len(self.colors)} colours; "
                             "expected one RGB colour per class")
        for c in self.colors:
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise ValueError(f"dataset {self.name!r} has colour {c}; expected three integers in 0..255")
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.classes):
            raise ValueError(f"ignore_index {self.ignore_index} must be in {len(self.classes)}..255 "
                             f"(above the {len(self.classes)} class ids, stored in uint8 label maps)")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if len(v) != 3:
                raise ValueError(f"{key} {v} must have 3 values, one per RGB channel")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std {self.std} must be > 0 in every channel")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and JSON (tuples become lists)."""
        return {"name": self.name, "classes": list(self.classes), "colors": [list(c) for c in self.colors],
                "ignore_index": self.ignore_index, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DatasetInfo":
        """Inverse of :meth:`to_dict`."""
        return cls(name=d["name"], classes=tuple(d["classes"]), colors=tuple(tuple(c) for c in d["colors"]),
                   ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
                   mean=tuple(d.get("mean", IMAGENET_MEAN)), std=tuple(d.get("std", IMAGENET_STD)))

    def palette_png(self) -> list[int]:
        """A 768-entry PIL palette: class colours, the ignore label in VOC's cream, black elsewhere."""
        pal = [0] * 768
        for i, c in enumerate(self.colors):
            pal[3 * i: 3 * i + 3] = c
        pal[3 * self.ignore_index: 3 * self.ignore_index + 3] = (224, 224, 192)
        return pal


class SegmentationDataset(torch.utils.data.Dataset):
    """Base of every dataset: ``(image, labels)`` pairs with validated labels.

    Subclasses set ``info`` and implement ``__len__``, :meth:`name` and
    :meth:`_load`; they pass ``label_map`` (raw value -> training id) when the
    stored values are not the training ids already.

    Args:
        info: classes, colours, ignore label and normalisation.
        transform: joint transform ``(image (H, W, 3) uint8, labels (H, W) uint8) -> (image, labels)``,
            see :func:`parsenet.data.transforms.build_transform`; ``None`` returns numpy arrays unchanged.
        label_map: raw label value -> training id or ``info.ignore_index``; raw values not in it
            are errors. Default: ids ``0 .. C-1`` and the ignore label map to themselves.
        cache: keep decoded, validated arrays in memory after the first read (per process: each
            DataLoader worker fills its own copy; call :meth:`check` first to fill it before forking).

    ``__getitem__`` returns ``image`` (3, H, W) float32 normalised and ``labels`` (H, W) int64 with
    ``info.ignore_index`` for void, once a transform is set.
    """

    info: DatasetInfo

    def __init__(self, info: DatasetInfo, *, transform: Callable | None = None,
                 label_map: Mapping[int, int] | None = None, cache: bool = False) -> None:
        self.info = info
        self.transform = transform
        self.cache = bool(cache)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if label_map is None:
            label_map = {i: i for i in range(info.num_classes)} | {info.ignore_index: info.ignore_index}
        lut = np.full(256, _INVALID, dtype=np.int16)  # raw value -> training id
        for raw, tid in label_map.items():
            if not (tid == info.ignore_index or 0 <= tid < info.num_classes):
                raise ValueError(f"label map sends {raw} to {tid}; expected a class id or {info.ignore_index}")
            lut[raw] = tid
        self._lut = lut

    # -- what subclasses implement -------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, i: int) -> str:
        """The item's file stem (or ``"scene_000123"`` for generated data)."""
        raise NotImplementedError

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Decode item ``i``: image (H, W, 3) uint8, raw labels (H, W) integer, and the mask's file name."""
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------------
    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.info.name} with {n} items")
        return i % n

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed item, for figures and checks.

        Returns:
            image (H, W, 3) uint8 RGB, and labels (H, W) uint8 training ids with
            ``info.ignore_index`` for void (raw values already mapped).

        Raises:
            ValueError: the mask's size differs from the image's, or it holds a value that is
                neither a class nor ignored; the message names the file.
        """
        i = self._index(i)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        image, raw_labels, mask_file = self._load(i)
        labels = self._validate(image, raw_labels, mask_file)
        if self.cache:
            self._cache[i] = (image, labels)
        return image, labels

    def _validate(self, image: np.ndarray, raw_labels: np.ndarray, mask_file: str) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image for {mask_file} has shape {image.shape} {image.dtype}; expected (H, W, 3) uint8")
        if raw_labels.ndim != 2:
            raise ValueError(f"mask {mask_file} has shape {raw_labels.shape}; expected a single-channel (H, W) "
                             "label map (PNG mode L or P), not a colour image")
        if raw_labels.shape != image.shape[:2]:
            (h, w), (mh, mw) = image.shape[:2], raw_labels.shape
            raise ValueError(f"mask {mask_file} is {mw}x{mh} but its image is {w}x{h} (width x height); "
                             "expected the same size")
        if raw_labels.size and (raw_labels.min() < 0 or raw_labels.max() > 255):
            bad = raw_labels[(raw_labels < 0) | (raw_labels > 255)]
            raise self._bad_values(mask_file, np.unique(bad))
        labels = self._lut[raw_labels.astype(np.uint8, copy=False)]  # (H, W) int16, _INVALID where unknown
        if (labels == _INVALID).any():
            raise self._bad_values(mask_file, np.unique(raw_labels[labels == _INVALID]))
        return labels.astype(np.uint8)

    def _bad_values(self, mask_file: str, values: np.ndarray) -> ValueError:
        valid = sorted(int(v) for v in np.flatnonzero(self._lut != _INVALID))
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return ValueError(f"mask {mask_file} has label value(s) {shown} outside the {self.info.num_classes} "
                          f"{self.info.name} classes; expected one of {_ranges(valid)}")

    def __getitem__(self, i: int):
        image, labels = self.raw(i)
        if self.transform is None:
            return image, labels
        return self.transform(image, labels)

    def check(self, *, progress: bool = False) -> np.ndarray:
        """Read and validate every item up front (and fill the cache when it is on).

        Args:
            progress: show a tqdm progress bar.

        Returns:
            (C,) int64 pixel count of each class over the split (void not counted).

        Raises:
            ValueError: on the first bad file, naming it, plus how many other files are bad.
        """
        counts = np.zeros(self.info.num_classes, dtype=np.int64)
        errors: list[str] = []
        indices = range(len(self))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"checking {self.info.name}", unit="img")
        for i in indices:
            try:
                _, labels = self.raw(i)
            except (ValueError, OSError) as exc:
                errors.append(str(exc))
                continue
            counts += np.bincount(labels.ravel(), minlength=256)[: self.info.num_classes]
        if errors:
            more = f" (and {len(errors) - 1} more bad file(s))" if len(errors) > 1 else ""
            raise ValueError(errors[0] + more)
        return counts

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, {len(self)} items, {self.info.num_classes} classes)"


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 3, 255]`` -> ``"0..3, 255"``."""
    parts, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(parts)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; a corrupt file names itself."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # a bomb: over Pillow's pixel limit
        raise ValueError(f"cannot read image {path}: {' '.join(str(exc).split())}") from None


def read_label_png(path: Path) -> np.ndarray:
    """Decode a label PNG (mode L or P: palette indices are the labels) to an (H, W) array.

    Colour (RGB) masks come back as (H, W, 3) so that validation can say so.
    """
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "P", "I", "I;16"):
                return np.asarray(im)
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8)
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read mask {path}: {' '.join(str(exc).split())}") from None
