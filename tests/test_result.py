import json

import numpy as np
import pytest

from erf.result import FORMAT_VERSION, ERFResult, build_result, canvas_anchor, recenter
from erf.rf import LayerRF


def test_recenter_hand_case():
    m = np.arange(6.0).reshape(2, 3)  # H=2, W=3 -> canvas 4x6, centre pixel (2, 3)
    out = recenter(m, (0, 2))
    want = np.zeros((4, 6))
    want[2:4, 1:4] = m  # image pixel (i, j) -> (i - 0 + 2, j - 2 + 3)
    np.testing.assert_array_equal(out, want)
    assert out[2, 3] == m[0, 2]


def test_recenter_rounds_half_pixel_centres_up_and_keeps_leading_dims():
    assert canvas_anchor((3.5, -0.5)) == (4, 0)
    m = np.random.default_rng(0).random((2, 5, 5))
    out = recenter(m, (2.5, 1.49))  # anchor (3, 1)
    assert out.shape == (2, 10, 10)
    np.testing.assert_array_equal(out[:, 5, 5], m[:, 3, 1])
    assert out.sum() == pytest.approx(m.sum())  # a centre inside the image keeps every pixel


def test_recenter_centre_outside_image_clips():
    m = np.ones((3, 3))
    out = recenter(m, (-2, 1))  # anchor row -2: image rows land on canvas rows 5, 6, 7 -> only 5 fits
    assert out.sum() == 3 and out[5].sum() == 3


def _result(U=3, H=6, W=5, with_image_maps=True):
    rng = np.random.default_rng(1)
    maps = rng.random((U, 2 * H, 2 * W)).astype(np.float32)
    maps[-1] = 0  # an empty unit
    return build_result(
        method="occlusion", mode="units", layer="features.29", image_size=(H, W),
        config={"patch": [3, 3], "stride": [1, 1], "seed": 0}, model={"name": "tiny", "fingerprint": "ab"},
        images=["a.png", "b.png"], trf=LayerRF("features.29", (1, 1), (4.0, 9.0), (1.0, 1.0), (0.0, 0.0), False, (H, W)), units=np.arange(U),
        maps=maps, trf_areas=np.full(U, 20.0), topk_images=np.zeros((U, 2), int),
        topk_locations=np.zeros((U, 2, 2), int), topk_values=rng.random((U, 2)),
        image_maps=rng.random((2, H, W)).astype(np.float32) if with_image_maps else None,
    )


def test_build_result_layer_map_and_table():
    res = _result()
    np.testing.assert_allclose(res.layer_map, res.maps[:2].mean(0))  # the empty unit is left out
    assert res.summary["empty_units"] == 1
    row = res.table_row()
    assert row["trf_side"] == 6.0  # sqrt(4 * 9)
    assert row["erf_side"] == pytest.approx(np.mean([res.unit_stats[u]["side"] for u in (0, 1)]))
    assert row["erf_over_trf"] == pytest.approx(row["erf_side"] / 6.0)
    assert res.unit_stats[2]["side"] is None
    assert res.canvas_center == (6, 5)


@pytest.mark.parametrize("with_image_maps", [True, False])
def test_save_load_round_trip(tmp_path, with_image_maps):
    res = _result(with_image_maps=with_image_maps)
    res.save(tmp_path / "r")
    back = ERFResult.load(tmp_path / "r")
    for name in ("units", "maps", "layer_map", "topk_images", "topk_locations", "topk_values"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    if with_image_maps:
        np.testing.assert_array_equal(back.image_maps, res.image_maps)
    else:
        assert back.image_maps is None
    for name in ("method", "mode", "layer", "image_size", "config", "model", "images", "trf", "unit_stats",
                 "layer_stats", "summary", "neuron"):
        assert getattr(back, name) == getattr(res, name), name
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["format_version"] == FORMAT_VERSION and summary["arrays"]["maps"] == [3, 12, 10]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["result.npz", "summary.json"]  # no temp files


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ERFResult.load(tmp_path / "nope")


def test_load_partial_folder(tmp_path):
    _result().save(tmp_path)
    (tmp_path / "summary.json").unlink()
    with pytest.raises(ValueError, match="not a complete ERF result folder: summary.json missing"):
        ERFResult.load(tmp_path)


def test_load_old_format(tmp_path):
    _result().save(tmp_path)
    meta = json.loads((tmp_path / "summary.json").read_text())
    meta["format_version"] = 0
    (tmp_path / "summary.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version 0; this toolkit reads version 1"):
        ERFResult.load(tmp_path)


def test_load_mixed_folder(tmp_path):
    _result(U=3).save(tmp_path / "a")
    _result(U=2).save(tmp_path / "b")
    (tmp_path / "a" / "result.npz").write_bytes((tmp_path / "b" / "result.npz").read_bytes())
    with pytest.raises(ValueError, match="result.npz does not match summary.json"):
        ERFResult.load(tmp_path / "a")


def test_load_corrupt_json(tmp_path):
    _result().save(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json' is not valid JSON"):
        ERFResult.load(tmp_path)


def test_reach_summary_agrees_with_the_layer_map_and_resamples_units():
    res = _result(U=6, H=8, W=8)
    reach = res.summary["reach"]
    from erf.stats import centered_square, far_field_share

    assert reach["resampled"] == "units" and reach["n"] == 5  # the empty unit is not resampled
    assert reach["mass_side@0.9"] == centered_square(res.layer_map, (8, 8), 0.9) == res.table_row()["mass90_side"]
    assert reach["far_share"] == pytest.approx(far_field_share(res.layer_map, (8, 8), 8 / 4), rel=1e-5)
    assert reach["far_share"] == res.layer_stats["far_share"]
    for key, (lo, hi) in reach["ci"].items():
        assert lo <= hi, key
    lo, hi = reach["ci"]["far_share"]
    assert lo <= reach["far_share"] <= hi
    assert res.table_row()["mass90_ci"] == reach["ci"]["mass_side@0.9"]


def test_reach_resamples_images_when_their_mean_is_the_map():
    # A position-mode result (the gradient's shape): maps[0] is the re-centred mean of the image maps.
    rng = np.random.default_rng(3)
    H = W = 8
    per_image = rng.random((4, H, W)).astype(np.float32) ** 3
    trf = LayerRF("c", (4, 4), (5.0, 5.0), (2.0, 2.0), (1.0, 1.5), False, (H, W))
    center = (1.0 + 2 * 2.0, 1.5 + 1 * 2.0)  # unit (2, 1)
    res = build_result(method="gradient", mode="position", layer="c", image_size=(H, W), config={}, model={},
                       images=list("abcd"), trf=trf, units=np.array([-1]), maps=recenter(per_image.mean(0), center)[None],
                       trf_areas=np.array([25.0]), topk_images=np.arange(4)[None],
                       topk_locations=np.tile(np.array([2, 1])[None, None], (1, 4, 1)), topk_values=np.ones((1, 4)),
                       image_maps=per_image)
    samples, over = res.reach_samples()
    assert over == "images" and samples.shape[0] == 4
    assert res.summary["reach"]["ci"]["mass_side@0.5"] is not None
    # Different image maps (the mean no longer reproduces the map): nothing is resampled, no interval is made up.
    res.image_maps = per_image[::-1] * np.arange(1, 5)[:, None, None]
    assert res.reach_samples()[1] == "none"


_SAVED = __import__("pathlib").Path(__file__).parent / "data" / "results"  # written by the code before trf was typed


@pytest.mark.parametrize("name", ["occlusion-v2", "gradient-v2", "gradient-v1"])
def test_results_saved_before_trf_was_typed_still_load_and_save_the_same_json(name, tmp_path):
    """occlusion-v2 / gradient-v2: saved by the previous code; gradient-v1: the same in format 1, with a trf
    from before LayerRF had exact/global_from/layout (their defaults fill them)."""
    res = ERFResult.load(_SAVED / name)
    assert res.trf == LayerRF(name="2", size=(3, 3), rf=(5.0, 5.0), jump=(2.0, 2.0), start=(1.0, 1.0),
                              is_global=False, input_size=(8, 8))
    assert res.trf.box(1, 1, clip=True) == (1, 1, 6, 6)  # centre 1 + 1 * 2 = 3, side 5
    assert res.format_version == (1 if name.endswith("v1") else 2)
    old = json.loads((_SAVED / name / "summary.json").read_text())
    res.save(tmp_path)
    new = json.loads((tmp_path / "summary.json").read_text())
    if name.endswith("v1"):  # saving writes the current format and the full LayerRF
        old["format_version"] = FORMAT_VERSION
        old["trf"].update(exact=True, global_from="", layout="NCHW")
    assert new == old  # trf and config serialised exactly as before
    assert list(new["trf"]) == ["name", "size", "rf", "jump", "start", "is_global", "input_size", "exact",
                                "global_from", "layout"]


def test_a_trf_that_is_not_a_layer_rf_is_refused_in_one_line(tmp_path):
    res = ERFResult.load(_SAVED / "gradient-v2")
    res.save(tmp_path)
    meta = json.loads((tmp_path / "summary.json").read_text())
    meta["trf"] = {"rf": [5.0, 5.0]}
    (tmp_path / "summary.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"summary.json's trf .* lacks name, size, jump, start, is_global, "
                                         r"input_size .*expected the fields of erf.rf.LayerRF; rerun the probe"):
        ERFResult.load(tmp_path)
