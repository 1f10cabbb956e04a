"""Joint image + label transforms, built on torchvision ``transforms.v2`` and ``tv_tensors``.

Training (DeepLab / ParseNet recipe): random scale, random crop padded with the
ignore label (the image with its mean colour, which is 0 after normalisation),
horizontal flip, then normalisation. Validation: normalisation only.

Randomness: every random draw comes from **torch's global RNG** of the process
that runs the transform (``torch.rand`` / ``torch.randint`` inside v2). In the
main process ``torch.manual_seed`` fixes it and ``torch.get_rng_state`` saves
it; in DataLoader workers torch seeds each worker from the loader's
``generator``, so a trainer that passes a seeded ``torch.Generator`` to its
DataLoader (and saves that generator's state) replays the same crops on resume.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from parsenet.data.base import DatasetInfo

__all__ = ["RandomScale", "SegmentationTransform", "build_transform", "denormalize"]


class RandomScale(v2.Transform):
    """Resize image and mask together by one factor drawn uniformly from ``scale_range``.

    Images are resized bilinearly (antialiased when shrinking), masks with nearest
    neighbour (torchvision's kernel for ``tv_tensors.Mask``), so no new label values appear.

    Args:
        scale_range: ``(low, high)`` factors, ``0 < low <= high``; DeepLab uses ``(0.5, 2.0)``.

    Example:
        >>> img, mask = tv_tensors.Image(torch.zeros(3, 10, 20)), tv_tensors.Mask(torch.zeros(10, 20))
        >>> [t.shape for t in RandomScale((2.0, 2.0))(img, mask)]
        [torch.Size([3, 20, 40]), torch.Size([20, 40])]
    """

    def __init__(self, scale_range: Sequence[float]) -> None:
        super().__init__()
        self.scale_range = _check_scale_range(scale_range)

    def make_params(self, flat_inputs: list) -> dict:
        h, w = F.get_size(next(x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask))))
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))  # one draw from the global RNG
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class SegmentationTransform:
    """Callable ``(image (H, W, 3) uint8, labels (H, W) uint8) -> (image (3, h, w) float32, labels (h, w) int64)``.

    Args:
        info: supplies mean, std (normalisation and pad colour) and the ignore label.
        train: apply the random scale / crop / flip; ``False`` normalises only.
        crop_size: side of the square training crop, or ``(h, w)``; ``None`` crops back to
            each image's own size, so a scaled image keeps its shape. Parts of the crop
            outside the scaled image get the ignore label (and the mean colour).
        scale_range: ``(low, high)`` random scale factors for training.
        flip: random horizontal flip with probability 0.5 for training.

    Each call runs with one intra-op thread (restored afterwards), as DataLoader workers do:
    per-image ops are too small to gain from threads, and on a busy CPU the thread
    hand-offs made them 15x slower (CamVid, 2 shared cores: 16 s vs 1.2 s per epoch).
    """

    def __init__(self, info: DatasetInfo, *, train: bool, crop_size: int | Sequence[int] | None = None,
                 scale_range: Sequence[float] = (0.5, 2.0), flip: bool = True) -> None:
        self.info = info
        self.train = bool(train)
        self.crop_size = _check_crop_size(crop_size)
        self.scale_range = _check_scale_range(scale_range)
        self.flip = bool(flip)
        # Pad the uint8 image with its mean colour: after Normalize the padding is (almost) zero.
        self._fill = {tv_tensors.Image: tuple(round(255 * m) for m in info.mean), tv_tensors.Mask: info.ignore_index}
        self._scale = RandomScale(self.scale_range) if self.scale_range != (1.0, 1.0) else v2.Identity()
        self._crop = v2.RandomCrop(self.crop_size, pad_if_needed=True, fill=self._fill) if self.crop_size else None
        self._flip = v2.RandomHorizontalFlip(0.5) if self.flip else v2.Identity()
        self._normalize = v2.Compose([
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(mean=list(info.mean), std=list(info.std)),
        ])

    def __call__(self, image, labels) -> tuple[torch.Tensor, torch.Tensor]:
        threads = torch.get_num_threads()
        if threads == 1:
            return self._apply(image, labels)
        torch.set_num_threads(1)
        try:
            return self._apply(image, labels)
        finally:
            torch.set_num_threads(threads)

    def _apply(self, image, labels) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(_to_chw(image))  # (3, H, W) uint8
        labels = tv_tensors.Mask(_to_tensor(labels))  # (H, W) uint8
        if self.train:
            H, W = labels.shape
            image, labels = self._scale(image, labels)  # (3, sH, sW), (sH, sW)
            crop = self._crop or v2.RandomCrop((H, W), pad_if_needed=True, fill=self._fill)
            image, labels = crop(image, labels)  # (3, h, w), (h, w): padding is ignore
            image, labels = self._flip(image, labels)
        image, labels = self._normalize(image, labels)
        return image.as_subclass(torch.Tensor), labels.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        if not self.train:
            return "SegmentationTransform(train=False)"
        return (f"SegmentationTransform(train=True, crop_size={self.crop_size}, "
                f"scale_range={self.scale_range}, flip={self.flip})")


def build_transform(info: DatasetInfo, *, train: bool, crop_size: int | Sequence[int] | None = None,
                    scale_range: Sequence[float] = (0.5, 2.0), flip: bool = True) -> SegmentationTransform:
    """The training or validation transform of a dataset; see :class:`SegmentationTransform`.

    Example:
        >>> from parsenet.data.base import DatasetInfo
        >>> info = DatasetInfo("toy", ("a", "b"), ((0, 0, 0), (255, 0, 0)))
        >>> t = build_transform(info, train=True, crop_size=8)
        >>> img, lab = t(np.zeros((5, 6, 3), np.uint8), np.ones((5, 6), np.uint8))
        >>> img.shape, lab.shape, lab.dtype
        (torch.Size([3, 8, 8]), torch.Size([8, 8]), torch.int64)
    """
    return SegmentationTransform(info, train=train, crop_size=crop_size, scale_range=scale_range, flip=flip)


def denormalize(image: torch.Tensor, info: DatasetInfo) -> np.ndarray:
    """Undo the normalisation for display: (3, H, W) float -> (H, W, 3) uint8."""
    mean = torch.tensor(info.mean).view(3, 1, 1)
    std = torch.tensor(info.std).view(3, 1, 1)
    rgb = (image.detach().cpu().float() * std + mean).clamp(0, 1)  # (3, H, W) in [0, 1]
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _to_chw(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image if image.ndim == 3 and image.shape[0] == 3 else image.permute(2, 0, 1)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image has shape {arr.shape}; expected (H, W, 3) RGB")
    return _to_tensor(arr).permute(2, 0, 1)  # (3, H, W), a view


def _to_tensor(arr) -> torch.Tensor:
    if isinstance(arr, torch.Tensor):
        return arr
    arr = np.asarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"scale_range {scale_range!r} must be two numbers (low, high)") from None
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range {scale_range!r} must satisfy 0 < low <= high, e.g. (0.5, 2.0)")
    return lo, hi


def _check_crop_size(crop_size) -> tuple[int, int] | None:
    if crop_size is None:
        return None
    size = (crop_size, crop_size) if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"crop_size {crop_size!r} must be a positive int or (height, width), or None for no crop")
    return int(size[0]), int(size[1])
