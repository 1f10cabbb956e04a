"""Readers for the real datasets' on-disk layouts, and a writer for the generic folder layout.

Every reader lists its files up front (a missing folder, a missing mask or an
empty split is reported at construction, with the path and the layout that was
expected) and decodes one item at a time; label values are checked per item by
:class:`parsenet.data.base.SegmentationDataset`, or all at once by ``check()``.

Layouts accepted (``ROOT`` is the path after ``kind:``):

* **camvid** (SegNet layout): ``ROOT/{train,val,test}/*.png`` images and
  ``ROOT/{train,val,test}annot/*.png`` label maps with the same names; values
  0-10 are the 11 classes, 11 is void (ignored).
* **voc** (PASCAL VOC 2012): ``ROOT`` is ``VOC2012`` or a folder holding
  ``VOC2012`` or ``VOCdevkit/VOC2012``, with ``JPEGImages/``,
  ``SegmentationClass/`` (palette PNGs, 255 = boundary, ignored) and
  ``ImageSets/Segmentation/{train,val,trainval}.txt``. With the SBD
  augmentation (``ImageSets/Segmentation/train_aug.txt`` and
  ``SegmentationClassAug/``) present, split ``train`` reads the 10,582
  ``train_aug`` images; ``sbd=False`` keeps the 1,464 VOC ones.
* **siftflow** (33 classes): ``ROOT/images/<stem>.jpg`` (or .png),
  ``ROOT/labels/<stem>.png`` (or the original ``<stem>.mat`` with matrix ``S``),
  ``ROOT/train.txt`` (2,488 stems) and ``ROOT/test.txt`` (200 stems). Label 0 is
  unlabeled (ignored), 1-33 are the classes. The standard split has no
  validation set: split ``val`` reads ``test.txt``.
* **pascal-context** (59 classes + background): ``ROOT`` is ``VOC2010`` or a folder
  holding ``VOC2010`` or ``VOCdevkit/VOC2010``, with ``JPEGImages/``,
  ``SegmentationClassContext/<id>.png`` label maps pre-converted to 0 =
  background, 1-59 = the 59 most frequent classes (alphabetical), 255 = ignored, and
  ``ImageSets/SegmentationContext/{train,val}.txt`` (4,998 / 5,105 ids).
* **folder**: ``ROOT/classes.txt`` (one class per line, id = line number,
  optionally followed by ``R G B``), and either ``ROOT/<split>/images/`` +
  ``ROOT/<split>/masks/``, or ``ROOT/images/`` + ``ROOT/masks/`` with a list of
  stems in ``ROOT/<split>.txt`` (split ``all`` takes every image). Masks are
  single-channel PNGs (mode L or P) holding class ids, 255 = ignored.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from erf.util import atomic_write, unknown_name
from parsenet.data.base import (IGNORE_INDEX, DatasetInfo, SegmentationDataset, read_image, read_label_png,
                                voc_palette)

__all__ = [
    "FileListDataset", "CamVid", "VOCSegmentationData", "SiftFlow", "PascalContext", "FolderDataset",
    "export_folder", "read_classes_txt",
    "CAMVID_CLASSES", "CAMVID_COLORS", "VOC_CLASSES", "SIFTFLOW_CLASSES", "PASCAL_CONTEXT_CLASSES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
# The SegNet tutorial's CamVid colours.
CAMVID_COLORS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                 (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# SiftFlow (Liu, Yuen, Torralba 2011): label k in the .mat files is SIFTFLOW_CLASSES[k - 1].
SIFTFLOW_CLASSES = ("awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk",
                    "desert", "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole",
                    "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight",
                    "sun", "tree", "window")
# PASCAL-Context (Mottaghi et al. 2014), the 59-class benchmark plus background (ParseNet Table 4).
PASCAL_CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain",
    "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood")


class FileListDataset(SegmentationDataset):
    """A dataset given as parallel lists of image and mask files.

    Args:
        info: classes, colours, ignore label, normalisation.
        images: image files, one per item.
        masks: label-map files, same order.
        split: split name, for messages.
        transform, label_map, cache: see :class:`~parsenet.data.base.SegmentationDataset`.

    Raises:
        ValueError: the lists are empty or of different lengths.
    """

    def __init__(self, info: DatasetInfo, images: Iterable[Path], masks: Iterable[Path], *, split: str,
                 transform: Callable | None = None, label_map: dict[int, int] | None = None,
                 cache: bool = False) -> None:
        super().__init__(info, transform=transform, label_map=label_map, cache=cache)
        self.images, self.masks, self.split = [Path(p) for p in images], [Path(p) for p in masks], split
        if len(self.images) != len(self.masks):
            raise ValueError(f"{info.name} {split}: {len(self.images)} images but {len(self.masks)} masks")
        if not self.images:
            raise ValueError(f"{info.name} split {split!r} is empty: no images listed")

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.images[self._index(i)].stem

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        mask = self.masks[i]
        labels = _read_mat_labels(mask) if mask.suffix == ".mat" else read_label_png(mask)
        return read_image(self.images[i]), labels, str(mask)


def _read_mat_labels(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path)["S"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read label matrix 'S' from {path}: {exc}") from None


# -- helpers shared by the readers -------------------------------------------------------
def _require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} not found{_siblings(path)}; expected {layout}")
    return path


def _siblings(path: Path) -> str:
    """Close matches among the folders beside a missing one (a misspelt or miscased name), as full paths."""
    if not path.parent.is_dir():
        return ""
    by_lower = {p.name.lower(): p for p in path.parent.iterdir() if p.is_dir()}
    matches = difflib.get_close_matches(path.name.lower(), list(by_lower), n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(str(by_lower[m]) for m in matches)}?)" if matches else ""


def _pair_by_stem(image_dir: Path, mask_dir: Path, *, mask_suffixes: tuple[str, ...] = (".png",),
                  stems: list[str] | None = None, what: str) -> tuple[list[Path], list[Path]]:
    """Images of ``image_dir`` and the masks with the same stems; every image must have its mask."""
    by_stem = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if stems is None:
        stems = sorted(by_stem)
    if not stems:
        raise ValueError(f"{what} is empty: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    images, masks, missing = [], [], []
    for stem in stems:
        if stem not in by_stem:
            raise FileNotFoundError(f"{what} lists {stem!r} but {image_dir} has no image with that name"
                                    f"{_close(stem, by_stem)}")
        mask = next((mask_dir / (stem + s) for s in mask_suffixes if (mask_dir / (stem + s)).is_file()), None)
        if mask is None:
            missing.append(stem)
            continue
        images.append(by_stem[stem])
        masks.append(mask)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{what}: image {by_stem[missing[0]].name} has no mask "
                                f"{mask_dir / (missing[0] + mask_suffixes[0])}{more}")
    return images, masks


def _close(name: str, choices) -> str:
    from erf.util import did_you_mean

    return did_you_mean(name, choices, n=3)


def _read_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: split list {path} not found")
    stems = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not stems:
        raise ValueError(f"{what} is empty: {path} lists no images")
    return stems


def _find_root(root: Path, marker: str, nested: tuple[str, ...], what: str, layout: str) -> Path:
    """``root`` itself or one of ``root/<nested>`` that contains ``marker``."""
    candidates = [root] + [root / n for n in nested]
    for c in candidates:
        if (c / marker).is_dir():
            return c
    if not root.exists():
        raise FileNotFoundError(f"{what} folder {root} not found{_siblings(root)}; expected {layout}")
    raise FileNotFoundError(f"{what}: no {marker}/ in {' or '.join(str(c) for c in candidates)}; expected {layout}")


def _check_split(split: str, splits: Iterable[str], what: str) -> None:
    splits = tuple(splits)
    if split not in splits:
        raise unknown_name(f"{what} split", split, splits, show_all=True)


# -- CamVid -------------------------------------------------------------------------------
_CAMVID_LAYOUT = "the SegNet layout ROOT/train, ROOT/trainannot, ROOT/val, ROOT/valannot (and test, testannot)"


class CamVid(FileListDataset):
    """CamVid, 11 classes, in the SegNet layout; label 11 (void) becomes the ignore label.

    Args:
        root: folder holding ``train/``, ``trainannot/``, ``val/``, ...
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform, cache: see :class:`~parsenet.data.base.SegmentationDataset`.

    Example:
        >>> ds = CamVid("../shared/data/camvid", "val")  # doctest: +SKIP
        >>> len(ds), ds.raw(0)[0].shape  # doctest: +SKIP
        (101, (180, 240, 3))
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str = "train", *, transform: Callable | None = None,
                 cache: bool = False) -> None:
        root = Path(root)
        _check_split(split, self.SPLITS, "camvid")
        _require_dir(root, "CamVid", _CAMVID_LAYOUT)
        present = [s for s in self.SPLITS if (root / s).is_dir()]
        if split not in present:
            raise FileNotFoundError(f"CamVid split folder {root / split} not found (splits present: "
                                    f"{', '.join(present) or 'none'}); expected {_CAMVID_LAYOUT}")
        mask_dir = _require_dir(root / f"{split}annot", "CamVid label", _CAMVID_LAYOUT)
        images, masks = _pair_by_stem(root / split, mask_dir, what=f"CamVid split {split!r} ({root / split})")
        info = DatasetInfo("camvid", CAMVID_CLASSES, CAMVID_COLORS)
        label_map = {i: i for i in range(11)} | {11: IGNORE_INDEX}
        super().__init__(info, images, masks, split=split, transform=transform, label_map=label_map, cache=cache)
        self.root = root


# -- PASCAL VOC 2012 ----------------------------------------------------------------------
_VOC_LAYOUT = ("VOC2012/ with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt "
               "(ROOT may be VOC2012, its parent, or the parent of VOCdevkit)")


class VOCSegmentationData(FileListDataset):
    """PASCAL VOC 2012 segmentation, 21 classes, 255 = object boundary (ignored).

    The standard splits are listed by :class:`torchvision.datasets.VOCSegmentation`
    (never with ``download=True``); the SBD ``train_aug`` split is read from its own list.

    Args:
        root: ``VOC2012``, or a folder holding ``VOC2012`` or ``VOCdevkit/VOC2012``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"train_aug"``.
        sbd: for ``"train"``, read ``train_aug`` instead when its list and ``SegmentationClassAug/``
            exist (``None``, the default), always (``True``) or never (``False``).
        transform, cache: see :class:`~parsenet.data.base.SegmentationDataset`.
    """

    SPLITS = ("train", "val", "trainval", "train_aug")

    def __init__(self, root: str | Path, split: str = "train", *, sbd: bool | None = None,
                 transform: Callable | None = None, cache: bool = False) -> None:
        _check_split(split, self.SPLITS, "voc")
        voc = _find_root(Path(root), "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"), "PASCAL VOC 2012", _VOC_LAYOUT)
        aug_list = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
        has_aug = aug_list.is_file() and (voc / "SegmentationClassAug").is_dir()
        if split == "train" and sbd is None:
            sbd = has_aug
        if split == "train_aug" or (split == "train" and sbd):
            if not has_aug:
                raise FileNotFoundError(f"SBD augmentation not found: expected {aug_list} and "
                                        f"{voc / 'SegmentationClassAug'}/ (or pass sbd=False for VOC's own train)")
            split_name, mask_dir, ids = "train_aug", voc / "SegmentationClassAug", _read_list(aug_list, "VOC train_aug")
            images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
            masks = [mask_dir / f"{i}.png" for i in ids]
        else:
            split_name = split
            images, masks = _voc_standard_split(voc, split)
        for p in (*images, *masks):
            if not p.is_file():
                raise FileNotFoundError(f"PASCAL VOC {split_name} lists {p.stem!r} but {p} does not exist")
        info = DatasetInfo("voc", VOC_CLASSES, voc_palette(len(VOC_CLASSES)))
        super().__init__(info, images, masks, split=split_name, transform=transform, cache=cache)
        self.root = voc


def _voc_standard_split(voc: Path, split: str) -> tuple[list[Path], list[Path]]:
    list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    ids = _read_list(list_file, f"PASCAL VOC split {split!r}")  # clear message for a missing or empty list
    _require_dir(voc / "SegmentationClass", "PASCAL VOC label", _VOC_LAYOUT)
    if voc.name == "VOC2012" and voc.parent.name == "VOCdevkit":
        from torchvision.datasets import VOCSegmentation

        tv = VOCSegmentation(voc.parent.parent, year="2012", image_set=split, download=False)
        return [Path(p) for p in tv.images], [Path(p) for p in tv.masks]
    # Same layout without the VOCdevkit/VOC2012 names, which torchvision requires.
    return [voc / "JPEGImages" / f"{i}.jpg" for i in ids], [voc / "SegmentationClass" / f"{i}.png" for i in ids]


# -- SiftFlow -----------------------------------------------------------------------------
_SIFTFLOW_LAYOUT = ("ROOT/images/<stem>.jpg, ROOT/labels/<stem>.png (or .mat), ROOT/train.txt (2488 stems) and "
                    "ROOT/test.txt (200 stems)")


class SiftFlow(FileListDataset):
    """SiftFlow, 33 classes; raw label 0 (unlabeled) is ignored, raw ``k`` is class ``k - 1``.

    Args:
        root: folder with ``images/``, ``labels/``, ``train.txt``, ``test.txt``.
        split: ``"train"`` (2,488 images) or ``"test"`` (200); ``"val"`` is the test split.
        transform, cache: see :class:`~parsenet.data.base.SegmentationDataset`.
    """

    SPLITS = ("train", "test", "val")

    def __init__(self, root: str | Path, split: str = "train", *, transform: Callable | None = None,
                 cache: bool = False) -> None:
        root = Path(root)
        _check_split(split, self.SPLITS, "siftflow")
        _require_dir(root, "SiftFlow", _SIFTFLOW_LAYOUT)
        image_dir = _require_dir(root / "images", "SiftFlow image", _SIFTFLOW_LAYOUT)
        label_dir = _require_dir(root / "labels", "SiftFlow label", _SIFTFLOW_LAYOUT)
        list_name = "test" if split == "val" else split
        stems = _read_list(root / f"{list_name}.txt", f"SiftFlow split {split!r}")
        images, masks = _pair_by_stem(image_dir, label_dir, mask_suffixes=(".png", ".mat"), stems=stems,
                                      what=f"SiftFlow split {split!r}")
        info = DatasetInfo("siftflow", SIFTFLOW_CLASSES, voc_palette(len(SIFTFLOW_CLASSES) + 1)[1:])
        label_map = {k: k - 1 for k in range(1, 34)} | {0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX}
        super().__init__(info, images, masks, split=split, transform=transform, label_map=label_map, cache=cache)
        self.root = root


# -- PASCAL-Context -----------------------------------------------------------------------
_CONTEXT_LAYOUT = ("VOC2010/ with JPEGImages/, SegmentationClassContext/<id>.png (0 = background, 1-59 classes) "
                   "and ImageSets/SegmentationContext/{train,val}.txt (ROOT may be VOC2010, its parent, "
                   "or the parent of VOCdevkit)")


class PascalContext(FileListDataset):
    """PASCAL-Context, 59 classes plus background (60 ids), from pre-converted PNG label maps.

    Args:
        root: ``VOC2010``, or a folder holding ``VOC2010`` or ``VOCdevkit/VOC2010``.
        split: ``"train"`` (4,998 images) or ``"val"`` (5,105).
        transform, cache: see :class:`~parsenet.data.base.SegmentationDataset`.
    """

    SPLITS = ("train", "val")

    def __init__(self, root: str | Path, split: str = "train", *, transform: Callable | None = None,
                 cache: bool = False) -> None:
        _check_split(split, self.SPLITS, "pascal-context")
        voc = _find_root(Path(root), "SegmentationClassContext", ("VOC2010", "VOCdevkit/VOC2010"),
                         "PASCAL-Context", _CONTEXT_LAYOUT)
        _require_dir(voc / "JPEGImages", "PASCAL-Context image", _CONTEXT_LAYOUT)
        ids = _read_list(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt", f"PASCAL-Context {split!r}")
        images, masks = _pair_by_stem(voc / "JPEGImages", voc / "SegmentationClassContext", stems=ids,
                                      what=f"PASCAL-Context split {split!r}")
        info = DatasetInfo("pascal-context", PASCAL_CONTEXT_CLASSES, voc_palette(len(PASCAL_CONTEXT_CLASSES)))
        super().__init__(info, images, masks, split=split, transform=transform, cache=cache)
        self.root = voc


# -- generic folder -----------------------------------------------------------------------
_FOLDER_LAYOUT = ("ROOT/classes.txt plus ROOT/<split>/images/ and ROOT/<split>/masks/, or ROOT/images/ and "
                  "ROOT/masks/ with ROOT/<split>.txt listing stems (split 'all' = every image)")


def read_classes_txt(path: str | Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Parse ``classes.txt``: one class per line, optionally ``name R G B``; ``#`` starts a comment.

    Returns:
        class names, and their colours (``None`` when no line gives one).

    Example:
        >>> p = Path(__import__("tempfile").mkdtemp()) / "classes.txt"
        >>> _ = p.write_text("ground 0 0 0\\nsky 128 0 0\\n")
        >>> read_classes_txt(p)
        (('ground', 'sky'), ((0, 0, 0), (128, 0, 0)))
    """
    path = Path(path)
    names, colors = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[-3:]):
            names.append(" ".join(parts[:-3]))
            colors.append(tuple(int(p) for p in parts[-3:]))
        else:
            names.append(" ".join(parts))
            colors.append(None)
    if not names:
        raise ValueError(f"{path} lists no classes; expected one class name per line")
    given = [c for c in colors if c is not None]
    if given and len(given) != len(colors):
        line = next(i for i, c in enumerate(colors) if c is None)
        raise ValueError(f"{path}: class {names[line]!r} has no colour but others do; expected 'name R G B' "
                         "on every line or on none")
    return tuple(names), (tuple(colors) if given else None)


class FolderDataset(FileListDataset):
    """Any dataset laid out as ``images/`` + ``masks/`` with the same stems, plus ``classes.txt``.

    Args:
        root: the dataset folder (see the module docstring for the accepted layouts).
        split: a split folder name, a ``<split>.txt`` list, or ``"all"`` for a flat folder.
        name: the dataset's name in :class:`~parsenet.data.base.DatasetInfo`.
        transform, cache: see :class:`~parsenet.data.base.SegmentationDataset`.
    """

    def __init__(self, root: str | Path, split: str = "train", *, name: str = "folder",
                 transform: Callable | None = None, cache: bool = False) -> None:
        root = Path(root)
        _require_dir(root, "dataset", _FOLDER_LAYOUT)
        classes_txt = root / "classes.txt"
        if not classes_txt.is_file():
            raise FileNotFoundError(f"{classes_txt} not found; expected {_FOLDER_LAYOUT}")
        classes, colors = read_classes_txt(classes_txt)
        what = f"folder dataset {root} split {split!r}"
        if (root / split / "images").is_dir():
            image_dir = root / split / "images"
            mask_dir = _require_dir(root / split / "masks", "mask", _FOLDER_LAYOUT)
            images, masks = _pair_by_stem(image_dir, mask_dir, what=what)
        elif (root / "images").is_dir() and ((root / f"{split}.txt").is_file() or split == "all"):
            mask_dir = _require_dir(root / "masks", "mask", _FOLDER_LAYOUT)
            stems = None if split == "all" else _read_list(root / f"{split}.txt", what)
            images, masks = _pair_by_stem(root / "images", mask_dir, stems=stems, what=what)
        else:
            present = {p.parent.name for p in root.glob("*/images")}
            if (root / "images").is_dir():
                present |= {p.stem for p in root.glob("*.txt") if p.stem != "classes"} | {"all"}
            present = sorted(present)
            raise FileNotFoundError(f"{what} not found (splits present: {', '.join(present) or 'none'}"
                                    f"{_close(split, present)}); expected {_FOLDER_LAYOUT}")
        info = DatasetInfo(name, classes, colors or voc_palette(len(classes)))
        super().__init__(info, images, masks, split=split, transform=transform, cache=cache)
        self.root = root


def export_folder(dataset: SegmentationDataset, root: str | Path, split: str, *, overwrite: bool = False,
                  progress: bool = False) -> Path:
    """Write a dataset as ``root/<split>/images/*.png`` + ``masks/*.png`` (palette) + ``root/classes.txt``.

    The ``folder:`` reader gives back the same pixels, labels, names, classes and colours.
    Every file is written atomically.

    Args:
        dataset: any dataset; its untransformed items (:meth:`raw`) are written.
        root: output folder; other splits already there are kept.
        split: name of the split folder to write.
        overwrite: replace an existing ``root/<split>``; otherwise that is an error.
        progress: show a tqdm progress bar.

    Returns:
        ``root / split``.
    """
    root = Path(root)
    out = root / split
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    info = dataset.info
    classes_txt = "".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(info.classes, info.colors))
    if (root / "classes.txt").is_file() and (root / "classes.txt").read_text() != classes_txt:
        raise ValueError(f"{root / 'classes.txt'} lists other classes than {info.name}; expected an empty "
                         "folder or one exported from the same dataset")
    with atomic_write(root / "classes.txt", "w") as f:
        f.write(classes_txt)
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"writing {split}", unit="img")
    palette = info.palette_png()
    for i in indices:
        image, labels = dataset.raw(i)
        stem = dataset.name(i)
        with atomic_write(out / "images" / f"{stem}.png") as f:
            Image.fromarray(image).save(f, format="PNG")
        mask = Image.fromarray(labels.astype(np.uint8, copy=False))  # mode L ...
        mask.putpalette(palette)  # ... becomes P: ids stay the pixel values, colours for viewers
        with atomic_write(out / "masks" / f"{stem}.png") as f:
            mask.save(f, format="PNG")
    return out
