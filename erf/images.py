"""Loading probe images: a folder or a list of PNG/JPEG files to one normalised tensor.

The probes take a float tensor (N, 3, H, W), normalised the way the model was
trained (ImageNet mean and std by default), plus one name per image. Names key
the probe's results and its resume state, so they must be unique.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "MAX_PIXELS", "ImageSet", "load_images",
           "images_from_dataset"]

# torchvision's ImageNet statistics (the normalisation of its pretrained classifiers).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Larger images are refused before they are decoded (Pillow's own decompression-bomb limit, 89.5 Mpx).
MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageSet:
    """Images ready for a probe.

    Attributes:
        images: float tensor (N, 3, H, W), ``(pixel / 255 - mean) / std``.
        names: N unique names (file names relative to the folder, or the given paths).
        mean, std: the per-channel normalisation that was applied.
    """

    images: torch.Tensor
    names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return tuple(self.images.shape[-2:])


def _list_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    from erf.util import check_path

    if isinstance(source, (str, os.PathLike)):
        root = check_path(source, "image folder or file")
        if not root.exists():
            raise FileNotFoundError(f"image folder or file {str(root)!r} does not exist")
        if root.is_file():
            return [root], [root.name]
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"image folder {str(root)!r} is empty; expected PNG or JPEG files")
        return files, [p.name for p in files]
    if not isinstance(source, Sequence) or isinstance(source, bytes):
        raise ValueError(f"images source of type {type(source).__name__}; expected a folder, a file or a list of files")
    files = [check_path(p, "image file") for p in source]
    if not files:
        raise ValueError("the list of image files is empty; expected at least one PNG or JPEG file")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file {missing[0]!r} does not exist")
    return files, [str(p) for p in files]


def load_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    resize: tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    on_bad: str = "skip",
    limit: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> ImageSet:
    """Load a folder (non-recursive, sorted by name) or a list of image files.

    Grayscale, palette and RGBA images are converted to RGB with a warning that
    says so (alpha is dropped, not blended). 16-bit and 32-bit grayscale pixels
    are scaled by their full range (65535 for 16 bits), not clipped to 255.
    Images of different sizes are refused unless ``resize`` is given.

    Args:
        source: a folder, one file, or a list of files.
        resize: (H, W) to resize every image to (bilinear); default None keeps sizes.
        mean, std: per-channel normalisation of pixels in [0, 1]; default ImageNet's.
        on_bad: what to do with a file that is not a readable PNG/JPEG:
            ``"skip"`` (default, with a warning) or ``"error"``.
        limit: keep only the first ``limit`` images (default all).
        max_pixels: refuse an image with more pixels than this before decoding it (default
            :data:`MAX_PIXELS`); None for no limit.

    Returns:
        An :class:`ImageSet` with ``images`` of shape (N, 3, H, W).

    Example:
        >>> s = load_images("photos/", resize=(224, 224))
        >>> s.images.shape, s.names[:2]
        (torch.Size([4, 3, 224, 224]), ('astronaut.png', 'chelsea.jpg'))
    """
    from PIL import Image, UnidentifiedImageError

    if on_bad not in ("skip", "error"):
        from erf.util import unknown_name

        raise unknown_name("on_bad policy", on_bad, ["skip", "error"], show_all=True)
    if resize is not None:
        if len(resize) != 2 or any(int(s) != s or s < 1 for s in resize):
            raise ValueError(f"resize={resize!r}; expected (H, W) with two positive integers")
        resize = (int(resize[0]), int(resize[1]))
    for what, values in (("mean", mean), ("std", std)):
        try:
            ok = len(values) == 3 and all(np.isfinite(float(v)) for v in values)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{what}={values!r}; expected three finite numbers (one per RGB channel)")
    mean_t = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
    std_t = torch.tensor([float(s) for s in std]).view(3, 1, 1)
    if (std_t <= 0).any():
        raise ValueError(f"std={tuple(std)!r}; expected three positive numbers")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}; expected a positive number of images")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels={max_pixels!r}; expected a positive integer or None")

    files, names = _list_files(source)
    arrays, kept = [], []
    for path, name in zip(files, names):
        if limit is not None and len(kept) == limit:
            break
        try:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UnidentifiedImageError(f"suffix {path.suffix!r} is not one of {', '.join(IMAGE_SUFFIXES)}")
            arrays.append(_read_rgb(path, name, resize, max_pixels))  # (H, W, 3) float32 in [0, 1]
            kept.append(name)
        except (UnidentifiedImageError, OSError) as exc:
            msg = f"{name} is not a readable PNG/JPEG image ({exc})"
            if on_bad == "error":
                raise ValueError(msg + "; remove it or pass on_bad='skip'") from None
            warnings.warn(f"skipping {msg}")
    if not arrays:
        raise ValueError(f"no readable PNG/JPEG images in {source!s}; expected at least one")
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        listing = ", ".join(f"{n}: {a.shape[0]}x{a.shape[1]}" for n, a in list(zip(kept, arrays))[:4])
        raise ValueError(f"images have different sizes ({listing}, ...); expected one size, "
                         "or pass resize=(H, W) (--resize in the CLI)")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W) in [0, 1]
    images = (pixels - mean_t) / std_t  # (N, 3, H, W)
    return ImageSet(images.contiguous(), tuple(kept),
                    tuple(mean_t.flatten().tolist()), tuple(std_t.flatten().tolist()))


def _read_rgb(path: Path, name: str, resize: tuple[int, int] | None, max_pixels: int | None) -> np.ndarray:
    """One image as (H, W, 3) float32 in [0, 1]: 8-bit modes through RGB, deeper grayscale by its full range."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit below, with the option to raise it
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ValueError(f"{name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; raise the limit "
                             "(--max-pixels N, max_pixels=) if the image is trusted")
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale by the range, then grey -> RGB
            full = 65535.0 if im.mode.startswith("I;16") or np.asarray(im).max() <= 65535 else 2.0 ** 31 - 1
            gray = Image.fromarray((np.asarray(im, dtype=np.float64) / full).astype(np.float32), mode="F")
            if resize is not None and gray.size != (resize[1], resize[0]):
                gray = gray.resize((resize[1], resize[0]), Image.BILINEAR)
            warnings.warn(f"{name}: converted {im.mode} grayscale image to RGB (scaled by {full:.0f})")
            return np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=2)
        if im.mode != "RGB":
            warnings.warn(f"{name}: converted {im.mode} image to RGB" + (" (alpha channel dropped)" if "A" in im.mode else ""))
            im = im.convert("RGB")
        if resize is not None and im.size != (resize[1], resize[0]):
            im = im.resize((resize[1], resize[0]), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0


def images_from_dataset(dataset, *, limit: int | None = None, resize: tuple[int, int] | None = None,
                        prefix: str = "item", mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> ImageSet:
    """The first ``limit`` images of a dataset whose items are ``(image (3, H, W), ...)``, already normalised.

    Args:
        dataset: e.g. ``parsenet.data.build_dataset("scenes", "val")``; labels are ignored.
        limit: how many images (default all).
        resize: (H, W) to resize to (bilinear on the normalised values); images of different sizes
            are refused without it.
        prefix: names are ``f"{prefix}_{index:05d}"``.
        mean, std: recorded as the normalisation the dataset applied (default ImageNet's).

    Returns:
        An :class:`ImageSet`.

    Example:
        >>> images_from_dataset(build_dataset("scenes", "val", size=64), limit=4).images.shape
        torch.Size([4, 3, 64, 64])
    """
    n = len(dataset)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}; expected a positive number of images")
    count = n if limit is None else min(limit, n)
    if count == 0:
        raise ValueError("the dataset is empty; expected at least one image")
    images = []
    for i in range(count):
        item = dataset[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"dataset item {i} holds {type(image).__name__} "
                             f"{tuple(getattr(image, 'shape', ()))}; expected an image tensor (3, H, W)")
        if resize is not None and tuple(image.shape[-2:]) != tuple(resize):
            image = torch.nn.functional.interpolate(image[None].float(), size=tuple(resize), mode="bilinear",
                                                    align_corners=False)[0]
        images.append(image.float())
    sizes = {tuple(t.shape[-2:]) for t in images}
    if len(sizes) > 1:
        raise ValueError(f"dataset images have different sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes)[:4])}"
                         "); expected one size, or pass resize=(H, W)")
    names = tuple(f"{prefix}_{i:05d}" for i in range(count))
    return ImageSet(torch.stack(images), names, tuple(float(m) for m in mean), tuple(float(v) for v in std))
