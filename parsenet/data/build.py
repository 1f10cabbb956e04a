"""One entry point from a dataset spec string (``"camvid:PATH"``, ``"scenes"``) to a ready dataset."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from erf.util import unknown_name
from parsenet.data.base import SegmentationDataset
from parsenet.data.formats import CamVid, FolderDataset, PascalContext, SiftFlow, VOCSegmentationData
from parsenet.data.scenes import ContextScenes, SceneConfig
from parsenet.data.transforms import build_transform

__all__ = ["build_dataset", "dataset_names"]

# kind -> reader class taking (root, split, **options); "scenes" is generated and takes no path.
_READERS = {
    "camvid": CamVid,
    "voc": VOCSegmentationData,
    "siftflow": SiftFlow,
    "pascal-context": PascalContext,
    "folder": FolderDataset,
}
_SCENE_OPTIONS = tuple(f.name for f in fields(SceneConfig))


def dataset_names() -> tuple[str, ...]:
    """The dataset kinds :func:`build_dataset` accepts, ``"scenes"`` first."""
    return ("scenes", *_READERS)


def build_dataset(spec: str, split: str, *, train: bool | None = None, crop_size: int | Sequence[int] | None = None,
                  scale_range: Sequence[float] = (0.5, 2.0), seed: int = 0, **options) -> SegmentationDataset:
    """Build a dataset and its transform from a spec.

    Args:
        spec: ``"scenes"`` (generated, no files) or ``"<kind>:<path>"`` with kind one of
            ``camvid``, ``voc``, ``siftflow``, ``pascal-context``, ``folder``
            (layouts: :mod:`parsenet.data.formats`).
        split: ``"train"``, ``"val"``, ... (each kind lists its own).
        train: apply the random training transforms; default ``split == "train"``.
        crop_size: training crop side (padded with the ignore label); ``None`` keeps each image's size.
        scale_range: training random scale factors; for the context scenes keep the cue in view
            (``scale_range[1] <= 1`` with ``crop_size=None``), or a crop may cut the sky away.
        seed: the context scenes' generation seed (each split draws its own images); readers of
            files ignore it. Training randomness comes from torch's global RNG
            (see :mod:`parsenet.data.transforms`).
        **options: ``cache`` (keep decoded arrays in memory) and ``mean`` / ``std`` (override the
            normalisation) for every kind; for ``scenes`` the :class:`SceneConfig` fields
            (``size``, ``num_scenes``, ``num_shapes``, ``objects``, ``cue_distance``,
            ``sky_fraction``, ``object_size``, ``noise``) and ``num_images``; ``sbd`` for ``voc``;
            ``name`` for ``folder``.

    Returns:
        a :class:`SegmentationDataset` whose items are ``(image (3, H, W) float32, labels (H, W) int64)``.

    Example:
        >>> ds = build_dataset("scenes", "val", size=64, num_images=8)
        >>> image, labels = ds[0]; image.shape, labels.shape, ds.info.num_classes
        (torch.Size([3, 64, 64]), torch.Size([64, 64]), 11)
    """
    kind, sep, path = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind not in dataset_names():
        raise unknown_name("dataset", kind, dataset_names(), show_all=True)
    normalization = {k: options.pop(k) for k in ("mean", "std") if k in options}
    if kind == "scenes":
        if sep:
            raise ValueError(f"dataset spec {spec!r}: 'scenes' is generated and takes no path; expected 'scenes' "
                             "(to read exported scenes use 'folder:PATH')")
        _check_options(kind, options, _SCENE_OPTIONS + ("num_images", "cache"))
        config = SceneConfig(**{k: options.pop(k) for k in _SCENE_OPTIONS if k in options})
        dataset = ContextScenes(split, config=config, seed=seed, **options)
    else:
        if not path.strip():
            raise ValueError(f"dataset spec {spec!r} has no path; expected '{kind}:PATH'")
        reader = _READERS[kind]
        accepted = tuple(p for p in inspect.signature(reader).parameters if p not in ("root", "split", "transform"))
        _check_options(kind, options, accepted)
        dataset = reader(Path(path).expanduser(), split, **options)
    if normalization:
        dataset.info = replace(dataset.info, **{k: tuple(v) for k, v in normalization.items()})
    train = split == "train" if train is None else bool(train)
    dataset.transform = build_transform(dataset.info, train=train, crop_size=crop_size, scale_range=scale_range)
    return dataset


def _check_options(kind: str, options: dict, accepted: tuple[str, ...]) -> None:
    for key in options:
        if key not in accepted:
            raise unknown_name(f"option for dataset {kind!r}:", key, accepted + ("mean", "std"), show_all=True)
