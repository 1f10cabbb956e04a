import numpy as np
import pytest
import torch
from scipy import ndimage

from parsenet.data.build import build_dataset
from parsenet.data.formats import FolderDataset, export_folder
from parsenet.data.scenes import SCENES, ContextScenes, SceneConfig, render_scene, scene_classes


def test_scene_classes_by_hand():
    assert scene_classes(2, 3) == ("ground", "sky", "dawn_disc", "dawn_square", "dawn_triangle",
                                   "noon_disc", "noon_square", "noon_triangle")
    assert len(ContextScenes("val", num_images=1).info.classes) == 11  # 3 scenes x 3 shapes + ground + sky


def test_default_layout_sky_on_top_objects_far_below():
    # 96 px: sky rows 0-11 (0.125 * 96), objects from row 12 + 0.5 * 96 = 60 down.
    ds = ContextScenes("val", num_images=40)
    for i in range(len(ds)):
        image, labels = ds.raw(i)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert (labels[:12] == 1).all()
        assert (labels[12:60] == 0).all()
        assert not (labels[60:] == 1).any()
        _, n_objects = ndimage.label(labels >= 2)
        assert 1 <= n_objects <= 3


def test_cue_distance_option_moves_the_objects_down():
    cfg = SceneConfig(size=80, sky_fraction=0.1, cue_distance=0.6, object_size=(0.1, 0.2))
    ds = ContextScenes("val", config=cfg, num_images=30)
    rows = np.concatenate([np.nonzero(ds.raw(i)[1] >= 2)[0] for i in range(len(ds))])
    assert rows.min() >= 8 + 48  # sky 0.1 * 80, gap 0.6 * 80


def test_object_labels_follow_the_scene_and_the_sky_colour_gives_it():
    cfg = SceneConfig()
    ds = ContextScenes("val", config=cfg, num_images=60)
    sky_rgb = np.array([c for _, c in SCENES[: cfg.num_scenes]], dtype=float)  # (S, 3)
    scenes = set()
    for i in range(len(ds)):
        image, labels = ds.raw(i)
        scene = [n for n, _ in SCENES].index(ds.scene(i))
        scenes.add(scene)
        objects = labels[labels >= 2].astype(int) - 2
        assert (objects // cfg.num_shapes == scene).all()
        # The cue suffices: the mean sky colour's nearest scene colour is the scene.
        mean = image[labels == 1].mean(axis=0)
        assert np.argmin(((sky_rgb - mean) ** 2).sum(axis=1)) == scene
    assert scenes == {0, 1, 2}


def test_pixels_below_the_sky_are_identical_in_every_scene():
    # Same random stream, forced scene: only the sky's colour and the objects' scene offset change.
    cfg = SceneConfig(num_scenes=4, num_shapes=5)
    sky = 12
    for seed in range(10):
        renders = [render_scene(cfg, np.random.default_rng(seed), scene=s) for s in range(4)]
        img0, lab0, _ = renders[0]
        for s, (img, lab, scene) in enumerate(renders):
            assert scene == s
            assert np.array_equal(img[sky:], img0[sky:])
            obj = lab0 >= 2
            assert np.array_equal(lab >= 2, obj)
            assert np.array_equal(lab[obj], lab0[obj] + s * cfg.num_shapes)  # same shape, other scene
        assert not np.array_equal(renders[0][0][:sky], renders[1][0][:sky])


def test_no_positional_or_size_prior_per_scene():
    cfg = SceneConfig()
    ds = ContextScenes("train", config=cfg, num_images=300, seed=1)
    stats = {s: [] for s in range(cfg.num_scenes)}
    for i in range(len(ds)):
        _, labels = ds.raw(i)
        objects, n = ndimage.label(labels >= 2)
        for k in range(1, n + 1):
            ys, xs = np.nonzero(objects == k)
            scene = (int(labels[ys[0], xs[0]]) - 2) // cfg.num_shapes
            stats[scene].append((ys.mean(), xs.mean(), len(ys)))
    means = np.array([np.mean(stats[s], axis=0) for s in stats])  # (S, 3): row, column, area
    assert all(len(v) > 100 for v in stats.values())
    assert np.ptp(means[:, 0]) < 3 and np.ptp(means[:, 1]) < 6  # pixels, on a 96 px image
    assert np.ptp(means[:, 2]) < 0.15 * means[:, 2].mean()


def test_same_arguments_same_pixels_whatever_the_access_order_or_length():
    a = ContextScenes("train", num_images=10, seed=5)
    b = ContextScenes("train", num_images=50, seed=5)
    later = [a.raw(i) for i in (7, 3, 0)]
    for i, (img, lab) in zip((7, 3, 0), later):
        assert np.array_equal(img, b.raw(i)[0]) and np.array_equal(lab, b.raw(i)[1])
        assert np.array_equal(img, a.raw(i)[0])
    assert not np.array_equal(a.raw(0)[0], ContextScenes("train", num_images=1, seed=6).raw(0)[0])
    assert not np.array_equal(a.raw(0)[0], ContextScenes("val", num_images=1, seed=5).raw(0)[0])


def test_num_images_per_split_mapping():
    counts = {"train": 7, "val": 3}
    assert len(ContextScenes("train", num_images=counts)) == 7
    assert len(ContextScenes("val", num_images=counts)) == 3
    assert len(ContextScenes("test", num_images=counts)) == 200  # the default


def test_rectangular_images():
    image, labels = ContextScenes("val", config=SceneConfig(size=(64, 128)), num_images=1).raw(0)
    assert image.shape == (64, 128, 3) and labels.shape == (64, 128)


def test_build_dataset_gives_normalised_tensors_and_trains_by_split():
    train = build_dataset("scenes", "train", num_images=4, size=64, scale_range=(0.5, 1.0))
    x, y = train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.transform.train and not build_dataset("scenes", "val", num_images=4).transform.train
    assert set(y.unique().tolist()) <= set(range(11)) | {255}


def test_export_then_folder_reads_back_identically(tmp_path):
    cfg = SceneConfig(size=48, object_size=(0.15, 0.3), cue_distance=0.4)
    for split in ("train", "val"):
        export_folder(ContextScenes(split, config=cfg, num_images=5), tmp_path, split)
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir())[0] == "scene_000000.png"
    for split in ("train", "val"):
        src = ContextScenes(split, config=cfg, num_images=5)
        back = build_dataset(f"folder:{tmp_path}", split, train=False)
        assert isinstance(back, FolderDataset) and len(back) == 5
        assert back.info.classes == src.info.classes and back.info.colors == src.info.colors
        for i in range(5):
            assert back.name(i) == src.name(i)
            assert np.array_equal(back.raw(i)[0], src.raw(i)[0])
            assert np.array_equal(back.raw(i)[1], src.raw(i)[1])


def test_export_refuses_to_overwrite(tmp_path):
    ds = ContextScenes("val", config=SceneConfig(size=32, cue_distance=0.3, object_size=(0.2, 0.3)), num_images=1)
    export_folder(ds, tmp_path, "val")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        export_folder(ds, tmp_path, "val")
    export_folder(ds, tmp_path, "val", overwrite=True)


def test_export_into_a_folder_of_other_classes(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="lists other classes than scenes"):
        export_folder(ContextScenes("val", num_images=1), tmp_path, "val")


# -- bad input: one test per validation branch -------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"size": 8}, "size 8 must be an int >= 16"),
    ({"num_scenes": 7}, "num_scenes 7 must be in 1..6"),
    ({"num_shapes": 0}, "num_shapes 0 must be in 1..6"),
    ({"objects": (3, 1)}, r"objects \(3, 1\) must be \(min, max\)"),
    ({"sky_fraction": 1.0}, "sky_fraction 1.0 must be in"),
    ({"cue_distance": -0.1}, r"cue_distance -0.1 must be in \[0, 1\)"),
    ({"object_size": (0.2, 0.1)}, r"object_size \(0.2, 0.1\) must be"),
    ({"cue_distance": 0.8}, "do not fit below sky_fraction"),
    ({"size": 16, "object_size": (0.1, 0.2)}, "too small to draw"),
    ({"noise": -1}, "noise -1 must be >= 0"),
])
def test_bad_scene_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SceneConfig(**kwargs)


def test_unknown_split_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown scenes split 'vall' \(did you mean: val\?\)"):
        ContextScenes("vall")


def test_empty_split():
    with pytest.raises(ValueError, match="num_images 0 must be a positive int"):
        ContextScenes("train", num_images=0)


def test_num_images_mapping_with_unknown_split():
    with pytest.raises(ValueError, match="unknown scenes split in num_images 'valid'"):
        ContextScenes("train", num_images={"valid": 3})


def test_forced_scene_out_of_range():
    with pytest.raises(ValueError, match="scene 3 must be in 0..2"):
        render_scene(SceneConfig(), np.random.default_rng(0), scene=3)


def test_scenes_spec_with_a_path():
    with pytest.raises(ValueError, match="takes no path.*folder:PATH"):
        build_dataset("scenes:/tmp/x", "train")


def test_misspelt_scene_option_suggests_close_match():
    with pytest.raises(ValueError, match=r"'cue_distnce' \(did you mean: cue_distance\?\)"):
        build_dataset("scenes", "train", cue_distnce=0.5)


def test_dataset_survives_pickling_for_spawned_workers():
    import pickle

    ds = build_dataset("scenes", "train", num_images=3, size=48, cue_distance=0.4, object_size=(0.15, 0.3))
    copy = pickle.loads(pickle.dumps(ds))
    torch.manual_seed(0)
    x, y = ds[2]
    torch.manual_seed(0)
    x2, y2 = copy[2]
    assert torch.equal(x, x2) and torch.equal(y, y2)
