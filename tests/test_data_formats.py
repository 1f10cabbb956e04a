"""Tiny on-disk fixtures of every format (real PNG / JPEG / .mat files), read by the real loaders."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from parsenet.data.base import DatasetInfo, voc_palette
from parsenet.data.build import build_dataset, dataset_names
from parsenet.data.formats import (CamVid, FolderDataset, PascalContext, SiftFlow, VOCSegmentationData,
                                   read_classes_txt)

H, W = 6, 8


def _image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)  # mode L -> P: the stored indices are the labels
    im.save(path)
    return path


def _labels(seed: int, high: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (h, w)).astype(np.uint8)


# -- fixtures, one per format -------------------------------------------------------------
@pytest.fixture
def camvid(tmp_path) -> Path:
    root = tmp_path / "camvid"
    for split, stems in (("train", ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"]), ("val", ["0016E5_07959"])):
        for k, stem in enumerate(stems):
            _save(root / split / f"{stem}.png", _image(k))
            lab = _labels(k, 11)
            lab[0, 0] = 11  # void
            _save(root / f"{split}annot" / f"{stem}.png", lab)
    return root


def _voc_tree(base: Path, ids: dict[str, list[str]], *, mask_dir="SegmentationClass", sets="Segmentation",
              high=21, aug: list[str] | None = None) -> Path:
    pal = DatasetInfo("voc", [str(i) for i in range(high)], voc_palette(high)).palette_png()
    everything = sorted({i for v in ids.values() for i in v} | set(aug or []))
    for k, i in enumerate(everything):
        _save(base / "JPEGImages" / f"{i}.jpg", _image(k))
        lab = _labels(k, high)
        lab[-1, :] = 255  # object boundary
        _save(base / mask_dir / f"{i}.png", lab, palette=pal)
        if aug is not None:
            _save(base / "SegmentationClassAug" / f"{i}.png", lab)  # mode L, as SBD conversions ship it
    for split, v in ids.items():
        (base / "ImageSets" / sets).mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in v))
    if aug is not None:
        (base / "ImageSets" / sets / "train_aug.txt").write_text("".join(f"{i}\n" for i in aug))
    return base


@pytest.fixture
def voc(tmp_path) -> Path:
    _voc_tree(tmp_path / "VOCdevkit" / "VOC2012",
              {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"],
               "trainval": ["2007_000032", "2007_000033", "2007_000039"]})
    return tmp_path


@pytest.fixture
def siftflow(tmp_path) -> Path:
    root = tmp_path / "siftflow"
    train, test = ["coast_arnat59", "forest_nat114", "street_urb562"], ["tallbuilding_a212"]
    for k, stem in enumerate(train + test):
        _save(root / "images" / f"{stem}.jpg", _image(k))
        lab = _labels(k, 34)  # 0 = unlabeled, 1..33 classes
        if stem == "forest_nat114":  # the original distribution's MATLAB file
            savemat(root / "labels" / f"{stem}.mat", {"S": lab.astype(np.float64)})
        else:
            _save(root / "labels" / f"{stem}.png", lab)
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def context(tmp_path) -> Path:
    _voc_tree(tmp_path / "VOCdevkit" / "VOC2010", {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]},
              mask_dir="SegmentationClassContext", sets="SegmentationContext", high=60)
    return tmp_path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "mine"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("# my classes\nbackground 0 0 0\nroad sign 255 0 0\ntree 0 255 0\n")
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for k, stem in enumerate(stems):
            _save(root / split / "images" / f"{stem}.png", _image(k))
            _save(root / split / "masks" / f"{stem}.png", _labels(k, 3))
    return root


# -- each format reads its files ----------------------------------------------------------
def test_camvid_maps_void_to_ignore_and_keeps_pixels(camvid):
    ds = CamVid(camvid, "train")
    assert len(ds) == 3 and ds.info.num_classes == 11 and ds.info.classes[0] == "sky"
    assert [ds.name(i) for i in range(3)] == ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"]
    image, labels = ds.raw(1)
    expected = _labels(1, 11)
    expected[0, 0] = 255
    assert np.array_equal(image, _image(1)) and np.array_equal(labels, expected)
    counts = ds.check()
    by_hand = sum(np.bincount(_labels(k, 11)[np.arange(H * W).reshape(H, W) != 0], minlength=11) for k in range(3))
    assert np.array_equal(counts, by_hand)  # void (pixel 0, 0) not counted


def test_camvid_through_build_dataset_and_a_dataloader(camvid):
    ds = build_dataset(f"camvid:{camvid}", "train", crop_size=4)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert x.shape == (3, 3, 4, 4) and y.shape == (3, 4, 4) and y.dtype == torch.int64
    assert len(build_dataset(f"camvid:{camvid}", "val")) == 1


@pytest.mark.camvid
def test_real_camvid(camvid_root):
    train, val = CamVid(camvid_root, "train"), CamVid(camvid_root, "val", cache=True)
    assert (len(train), len(val)) == (367, 101)
    image, labels = train.raw(0)
    assert image.shape == (180, 240, 3) and labels.shape == (180, 240)
    counts = val.check()
    assert counts.shape == (11,) and counts.sum() > 0.9 * 101 * 180 * 240  # void is ~4 %
    assert set(np.unique(val.raw(5)[1])) <= set(range(11)) | {255}


def test_voc_standard_layout(voc):
    train = VOCSegmentationData(voc, "train")
    assert len(train) == 2 and train.split == "train" and train.info.classes[15] == "person"
    image, labels = train.raw(0)
    expected = _labels(0, 21)
    expected[-1, :] = 255
    assert image.shape == (H, W, 3) and np.array_equal(labels, expected)
    assert [VOCSegmentationData(voc, "val").name(0)] == ["2007_000033"]
    assert len(build_dataset(f"voc:{voc / 'VOCdevkit'}", "trainval")) == 3  # VOCdevkit as root works too


def test_voc_train_reads_sbd_train_aug_when_present(tmp_path):
    aug = ["2007_000032", "2007_000039", "2008_000001", "2008_000002"]
    _voc_tree(tmp_path / "VOCdevkit" / "VOC2012", {"train": aug[:2], "val": ["2007_000033"]}, aug=aug)
    ds = VOCSegmentationData(tmp_path, "train")
    assert len(ds) == 4 and ds.split == "train_aug" and ds.masks[0].parent.name == "SegmentationClassAug"
    assert ds.check().sum() == 4 * (H - 1) * W  # the boundary row is ignored
    assert len(VOCSegmentationData(tmp_path, "train", sbd=False)) == 2


def test_voc_folder_not_named_vocdevkit(tmp_path):
    _voc_tree(tmp_path / "pascal", {"train": ["x1", "x2"], "val": ["x3"]})
    assert len(build_dataset(f"voc:{tmp_path / 'pascal'}", "val")) == 1


def test_siftflow_shifts_labels_and_reads_mat_files(siftflow):
    ds = SiftFlow(siftflow, "train")
    assert len(ds) == 3 and ds.info.num_classes == 33 and ds.info.classes[27] == "sky"
    for k in (0, 1):  # 1 is the .mat file
        raw = _labels(k, 34).astype(int)
        expected = np.where(raw == 0, 255, raw - 1)
        assert np.array_equal(ds.raw(k)[1], expected)
    val, test = SiftFlow(siftflow, "val"), SiftFlow(siftflow, "test")
    assert len(val) == len(test) == 1 and val.name(0) == test.name(0) == "tallbuilding_a212"


def test_pascal_context_reads_60_ids(context):
    ds = build_dataset(f"pascal-context:{context}", "train", train=False)
    assert isinstance(ds, PascalContext) and len(ds) == 2
    assert ds.info.num_classes == 60 and ds.info.classes[0] == "background" and ds.info.classes[59] == "wood"
    expected = _labels(0, 60)
    expected[-1, :] = 255
    assert np.array_equal(ds.raw(0)[1], expected)


def test_folder_with_split_folders_and_colours(folder):
    ds = FolderDataset(folder, "train")
    assert ds.info.classes == ("background", "road sign", "tree")
    assert ds.info.colors == ((0, 0, 0), (255, 0, 0), (0, 255, 0))
    assert [ds.name(i) for i in range(2)] == ["a", "b"]
    assert np.array_equal(ds.raw(1)[0], _image(1)) and np.array_equal(ds.raw(1)[1], _labels(1, 3))


def test_flat_folder_with_split_lists_and_all(tmp_path):
    (tmp_path / "classes.txt").write_text("bg\nfg\n")
    for k, stem in enumerate(["p", "q", "r"]):
        _save(tmp_path / "images" / f"{stem}.jpg", _image(k))
        _save(tmp_path / "masks" / f"{stem}.png", _labels(k, 2))
    (tmp_path / "val.txt").write_text("q\n")
    assert len(FolderDataset(tmp_path, "all")) == 3
    val = FolderDataset(tmp_path, "val")
    assert len(val) == 1 and val.name(0) == "q" and val.info.colors == voc_palette(2)


def test_read_classes_txt_without_colours(tmp_path):
    (tmp_path / "classes.txt").write_text("a\n\n  b c  # comment\n")
    assert read_classes_txt(tmp_path / "classes.txt") == (("a", "b c"), None)


def test_mean_and_std_options_override_normalisation(folder):
    ds = build_dataset(f"folder:{folder}", "val", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert ds.info.mean == (0.0, 0.0, 0.0)
    x, _ = ds[0]
    assert torch.allclose(x, torch.from_numpy(_image(0)).permute(2, 0, 1).float() / 255)


def test_cache_keeps_decoded_arrays(camvid):
    ds, plain = CamVid(camvid, "train", cache=True), CamVid(camvid, "train")
    ds.check()
    for p in (*ds.images, *ds.masks):
        p.unlink()
    assert np.array_equal(ds.raw(1)[0], _image(1))  # served from memory
    with pytest.raises(ValueError, match="cannot read (image|mask) .*0001TP_006720.png"):
        plain.raw(1)  # without the cache the files are needed


def test_dataset_info_round_trip_and_palette_by_hand():
    info = DatasetInfo("toy", ("a", "b"), ((1, 2, 3), (4, 5, 6)), mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert DatasetInfo.from_dict(info.to_dict()) == info
    assert voc_palette(9) == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
                              (0, 128, 128), (128, 128, 128), (64, 0, 0))
    assert voc_palette(256)[255] == (224, 224, 192)  # VOC's boundary colour
    assert dataset_names() == ("scenes", "camvid", "voc", "siftflow", "pascal-context", "folder")


# -- bad input: one test per validation branch --------------------------------------------
def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"CamVid folder {tmp_path / 'nope'} not found; expected the SegNet"):
        build_dataset(f"camvid:{tmp_path / 'nope'}", "train")


def test_misnamed_root_suggests_the_folder_beside_it(camvid):
    with pytest.raises(FileNotFoundError, match=f"CamVid folder .*CamVd not found \\(did you mean: {camvid}\\?\\)"):
        CamVid(camvid.parent / "CamVd", "train")


def test_missing_split_folder_lists_present_splits(camvid):
    with pytest.raises(FileNotFoundError, match=r"camvid/test not found \(splits present: train, val\)"):
        CamVid(camvid, "test")


def test_missing_voc_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no JPEGImages/ in .*expected VOC2012/"):
        VOCSegmentationData(tmp_path, "train")


def test_voc_train_aug_requested_but_absent(voc):
    with pytest.raises(FileNotFoundError, match="SBD augmentation not found.*train_aug.txt"):
        VOCSegmentationData(voc, "train_aug")


def test_list_names_a_missing_image(voc):
    (voc / "VOCdevkit/VOC2012/JPEGImages/2007_000039.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000039.jpg does not exist"):
        VOCSegmentationData(voc, "train")


def test_image_without_mask(camvid):
    (camvid / "trainannot" / "0001TP_006720.png").unlink()
    with pytest.raises(FileNotFoundError, match="image 0001TP_006720.png has no mask .*trainannot/0001TP_006720.png"):
        CamVid(camvid, "train")


def test_split_list_names_an_absent_image_with_close_match(siftflow):
    (siftflow / "test.txt").write_text("tallbuilding_a21\n")
    with pytest.raises(FileNotFoundError, match=r"'tallbuilding_a21'.*did you mean: tallbuilding_a212"):
        SiftFlow(siftflow, "test")


def test_mask_value_outside_classes_names_file_and_value(context):
    bad = context / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000003.png"
    lab = _labels(1, 60)
    lab[2, 3] = 77
    _save(bad, lab)
    ds = PascalContext(context, "train")
    ds.raw(0)  # the good file reads
    with pytest.raises(ValueError, match=r"2008_000003.png has label value\(s\) 77 outside the 60 .*0..59, 255"):
        ds.raw(1)


def test_mask_size_differs_from_image(camvid):
    _save(camvid / "trainannot" / "0001TP_006690.png", _labels(0, 11, h=H, w=W + 1))
    with pytest.raises(ValueError, match=r"mask .*0001TP_006690.png is 9x6 but its image is 8x6"):
        CamVid(camvid, "train").raw(0)


def test_colour_mask_is_rejected(folder):
    _save(folder / "val" / "masks" / "c.png", _image(5))
    with pytest.raises(ValueError, match=r"c.png has shape \(6, 8, 3\); expected a single-channel"):
        FolderDataset(folder, "val").raw(0)


def test_corrupt_image_names_the_file(folder):
    (folder / "val" / "images" / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*c.png"):
        FolderDataset(folder, "val").raw(0)


def test_check_reports_the_first_bad_file_and_how_many_more(camvid):
    for stem in ("0001TP_006690", "Seq05VD_f00000"):
        _save(camvid / "trainannot" / f"{stem}.png", np.full((H, W), 12, np.uint8))
    with pytest.raises(ValueError, match=r"0001TP_006690.png has label value\(s\) 12 .* \(and 1 more bad file"):
        CamVid(camvid, "train").check()


def test_empty_split_folder(camvid):
    for p in (camvid / "val").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="CamVid split 'val' .* is empty: no images"):
        CamVid(camvid, "val")


def test_empty_split_list(siftflow):
    (siftflow / "train.txt").write_text("\n")
    with pytest.raises(ValueError, match="SiftFlow split 'train' is empty: .*train.txt lists no images"):
        SiftFlow(siftflow, "train")


def test_folder_without_classes_txt(folder):
    (folder / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classes.txt not found; expected ROOT/classes.txt"):
        FolderDataset(folder, "train")


def test_folder_split_absent_lists_present_ones(folder):
    with pytest.raises(FileNotFoundError, match=r"split 'tarin' not found \(splits present: train, val "
                                                r"\(did you mean: train\?\)\)"):
        FolderDataset(folder, "tarin")


def test_classes_txt_with_some_colours_missing(tmp_path):
    (tmp_path / "classes.txt").write_text("a 1 2 3\nb\n")
    with pytest.raises(ValueError, match="class 'b' has no colour but others do"):
        read_classes_txt(tmp_path / "classes.txt")


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown dataset 'camvd' \(did you mean: camvid\?\); expected one of"):
        build_dataset("camvd:/data", "train")


def test_dataset_spec_without_path():
    with pytest.raises(ValueError, match="has no path; expected 'voc:PATH'"):
        build_dataset("voc", "train")


def test_unknown_split_suggests_close_match(camvid):
    with pytest.raises(ValueError, match=r"unknown camvid split 'vall' \(did you mean: val\?\)"):
        build_dataset(f"camvid:{camvid}", "vall")


def test_unknown_reader_option(camvid):
    with pytest.raises(ValueError, match=r"'cahce' \(did you mean: cache\?\)"):
        build_dataset(f"camvid:{camvid}", "train", cahce=True)


def test_info_colours_do_not_match_classes():
    with pytest.raises(ValueError, match="2 classes but 1 colours"):
        DatasetInfo("toy", ("a", "b"), ((0, 0, 0),))


def test_info_repeated_class_names():
    with pytest.raises(ValueError, match=r"repeats class names \['a'\]"):
        DatasetInfo("toy", ("a", "a"), ((0, 0, 0), (1, 1, 1)))


def test_info_ignore_index_inside_class_range():
    with pytest.raises(ValueError, match="ignore_index 1 must be in 2..255"):
        DatasetInfo("toy", ("a", "b"), ((0, 0, 0), (1, 1, 1)), ignore_index=1)
