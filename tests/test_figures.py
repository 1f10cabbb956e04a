"""Figure functions: expected panels, numbers in titles, edge cases, readability, and saving to png/pdf/svg."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from erf.stats import threshold_area
from figures._style import as_box, fmt_num, fmt_stats, fraction_of_max
from figures.context import fig_context_comparison
from figures.curves import _ema, fig_training_curves
from figures.feature_scale import fig_feature_scale
from figures.layers import fig_trf_vs_erf
from figures.methods import fig_methods
from figures.reach import fig_reach_comparison
from figures.segmentation import colorize_labels, fig_segmentation
from figures.unit_panels import UnitPanel, fig_unit_panels

H = W = 32


def _blob(h: int = H, w: int = W, cy: float = 16, cx: float = 16, sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _image(h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square_erf(side: int = 8) -> np.ndarray:
    """An (H, W) map that is 1 on a side x side square, 0 elsewhere: thresholded side = ``side``."""
    m = np.zeros((H, W))
    m[4 : 4 + side, 6 : 6 + side] = 1.0
    return m


def _row(**kw) -> UnitPanel:
    args = dict(image=_image(), activation=_blob(4, 4, 1, 2, 1.0), theoretical_rf=(-10, -6, 42, 46),
                erf_map=_square_erf(), label="fc7 #3")
    args.update(kw)
    return UnitPanel(**args)


def _colorbar_labels(fig: Figure) -> list[str]:
    """Labels of the colour bars in ``fig`` (a colour bar's axes carries ``_colorbar``)."""
    out = []
    for ax in fig.axes:
        cb = getattr(ax, "_colorbar", None)
        if cb is not None:
            out.append(cb.ax.get_xlabel() or cb.ax.get_ylabel())
    return out


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


# ---------------------------------------------------------------- shared helpers, hand-checked


def test_unit_panel_erf_size_is_the_one_erf_stats_reports():
    # Issue 12: figures counted pixels at or above the threshold, erf.stats strictly above, so a figure
    # printed 3 px where summary.json said 1 px. One threshold_area (erf.stats) now serves both.
    assert threshold_area(np.array([[0.0, 0.6], [1.0, 0.5]]), 0.5) == 2
    erf = np.zeros((H, W))
    erf[10, 10] = 1.0
    erf[11, 9:13] = erf[9, 9:13] = 0.5  # 8 pixels exactly at half the maximum: not above it
    assert threshold_area(erf, 0.5) == 1
    assert fig_unit_panels([_row(erf_map=erf)]).axes[3].get_title().startswith("(d) ERF 1 px")


def test_fmt_num_and_fmt_stats():
    assert fmt_num(3.0, "px") == "3 px"
    assert fmt_num(12.345) == "12.3"
    assert fmt_num(7) == "7"
    assert fmt_num(float("nan"), "px") == "n/a"
    assert fmt_stats({"side": 48.0, "sigma": 12.25, "fit": float("nan")}) == "side 48, sigma 12.2\nfit n/a"
    with pytest.raises(TypeError, match="statistic 'x' has value"):
        fmt_stats({"x": [1, 2]})


def test_fraction_of_max_and_box_checks():
    np.testing.assert_allclose(fraction_of_max(np.array([[0.0, 2.0], [4.0, -1.0]])), [[0, 0.5], [1, 0]])
    assert fraction_of_max(np.zeros((2, 2))).max() == 0
    assert as_box([1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="expected 4 numbers"):
        as_box((1, 2, 3))
    with pytest.raises(ValueError, match="expected top < bottom"):
        as_box((5, 0, 5, 10))
    with pytest.raises(ValueError, match="finite"):
        as_box((0, 0, np.inf, 3))


def test_colorize_labels_by_hand():
    colors = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    rgb = colorize_labels(np.array([[0, 1], [255, 1]]), colors)
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[0, 1], [0, 0, 1])
    np.testing.assert_allclose(rgb[1, 0], [0.82, 0.82, 0.82])
    with pytest.raises(ValueError, match=r"values \[2\] outside the 2 classes"):
        colorize_labels(np.array([[0, 2]]), colors)
    with pytest.raises(ValueError, match="expected integer class indices"):
        colorize_labels(np.array([[0.0, 1.0]]), colors)
    with pytest.raises(ValueError, match=r"expected \(H, W\)"):
        colorize_labels(np.array([0, 1]), colors)


def test_ema_is_bias_corrected_and_skips_nan():
    out = _ema(np.array([2.0, 4.0, np.nan, 4.0]), 0.5)
    assert out[0] == pytest.approx(2.0)  # 1 / (1 - 0.5)
    assert out[1] == pytest.approx(2.5 / 0.75)  # (0.5 * 1 + 2) / (1 - 0.25)
    assert math.isnan(out[2])
    assert out[3] == pytest.approx((0.5 * 2.5 + 2) / 0.875)


# ---------------------------------------------------------------- 1. unit panels


def test_unit_panels_layout_and_numbers():
    fig = fig_unit_panels([_row(), _row(theoretical_rf=(4, 4, 20, 20), label="conv5_3 #1")])
    panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    assert len(panels) == 8
    titles = [ax.get_title() for ax in panels]
    # 8x8 square on a 32x32 image: side 8 px, 64 / 1024 = 6.25% of the image.
    assert titles[3] == "(d) ERF 8 px\n6.2% of image"
    assert titles[2] == "(c) TRF 52 px\ndashed: full extent"
    assert titles[6] == "(c) TRF 16 px\ninside image"
    assert panels[0].get_ylabel() == "fc7 #3"
    labels = _colorbar_labels(fig)
    assert len(labels) == 2 and "activation" in labels[0] and "discrepancy" in labels[1]


def test_unit_panels_narrow_width_uses_two_by_two_blocks():
    fig = fig_unit_panels([_row(), _row()], width=3.5)
    panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    assert len(panels) == 8
    rows = [ax.get_subplotspec().rowspan.start for ax in panels]
    cols = [ax.get_subplotspec().colspan.start for ax in panels]
    assert rows == [0, 0, 1, 1, 2, 2, 3, 3] and cols == [0, 1] * 4
    wide = [ax.get_subplotspec().rowspan.start for ax in fig_unit_panels([_row()], width=3.5, panels_per_row=4).axes[:4]]
    assert wide == [0, 0, 0, 0]


def test_unit_panels_rejects_bad_panels_per_row():
    with pytest.raises(ValueError, match="panels_per_row is 3; expected 4"):
        fig_unit_panels([_row()], panels_per_row=3)


def test_unit_panels_trf_outside_image_is_dashed_and_in_view():
    fig = fig_unit_panels([_row()])
    ax_trf = fig.axes[2]
    styles = [p.get_linestyle() for p in ax_trf.patches if isinstance(p, Rectangle)]
    assert styles == ["solid", "--"]  # clipped box solid, full extent dashed
    x0, x1 = ax_trf.get_xlim()
    assert x0 < -6.5 and x1 > 45.5  # the whole unclipped box (left -6, right 46) is visible
    inside = fig_unit_panels([_row(theoretical_rf=(4, 4, 20, 20))]).axes[2]
    assert [p.get_linestyle() for p in inside.patches if isinstance(p, Rectangle)] == ["solid"]


def test_unit_panels_threshold_contour_and_size_follow_threshold():
    erf = _blob(sigma=4.0)
    fig = fig_unit_panels([_row(erf_map=erf)], threshold=0.25)
    area = np.count_nonzero(erf >= 0.25)
    assert f"ERF {math.sqrt(area):.0f} px" in fig.axes[3].get_title()
    assert len(fig.axes[3].collections) == 1  # the contour


def test_unit_panels_size_is_invariant_to_map_scale():
    a = fig_unit_panels([_row(erf_map=_blob())]).axes[3].get_title()
    b = fig_unit_panels([_row(erf_map=37.5 * _blob())]).axes[3].get_title()
    assert a == b


def test_unit_panels_edge_cases():
    fig = fig_unit_panels(_row(erf_map=np.zeros((H, W)), activation=np.zeros((3, 5))))  # one row, all zero
    assert fig.axes[3].get_title() == "(d) ERF: none\n(flat map)"
    assert len(fig.axes[3].collections) == 0
    nan_map = _square_erf()
    nan_map[0, 0] = np.nan
    assert "ERF 8 px" in fig_unit_panels([_row(erf_map=nan_map)]).axes[3].get_title()
    assert "ERF 50 px" in fig_unit_panels([_row(erf_side=50.0)]).axes[3].get_title()
    float_img = fig_unit_panels([_row(image=np.full((H, W, 3), 0.5))])
    assert len(float_img.axes) == 6


def test_unit_panel_rejects_erf_map_of_wrong_shape():
    with pytest.raises(ValueError, match=r"UnitPanel.erf_map has shape \(16, 16\); expected \(32, 32\)"):
        _row(erf_map=np.zeros((16, 16)))


def test_unit_panel_rejects_non_rgb_image():
    with pytest.raises(ValueError, match=r"UnitPanel.image has shape \(32, 32\); expected \(H, W, 3\)"):
        _row(image=np.zeros((H, W), np.uint8))


def test_unit_panel_rejects_float_image_out_of_range():
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        _row(image=np.full((H, W, 3), 2.0))


def test_unit_panel_rejects_inverted_box():
    with pytest.raises(ValueError, match="theoretical_rf is .*expected top < bottom"):
        _row(theoretical_rf=(10, 0, 5, 8))


def test_unit_panel_rejects_3d_activation():
    with pytest.raises(ValueError, match=r"activation has shape \(1, 4, 4\); expected a 2-D"):
        _row(activation=np.zeros((1, 4, 4)))


def test_unit_panel_rejects_negative_erf_side():
    with pytest.raises(ValueError, match="erf_side is -1.0; expected a non-negative"):
        _row(erf_side=-1.0)


def test_unit_panels_rejects_empty_rows():
    with pytest.raises(ValueError, match="rows is empty; expected at least one UnitPanel"):
        fig_unit_panels([])


def test_unit_panels_rejects_non_panel_row():
    with pytest.raises(TypeError, match="rows\\[0\\] is a dict; expected a UnitPanel"):
        fig_unit_panels([{"image": _image()}])


def test_unit_panels_rejects_threshold_out_of_range():
    with pytest.raises(ValueError, match="threshold is 1.5; expected a fraction"):
        fig_unit_panels([_row()], threshold=1.5)


def test_unit_panels_rejects_bad_width():
    with pytest.raises(ValueError, match="width is 0; expected a positive number of inches"):
        fig_unit_panels([_row()], width=0)


# ---------------------------------------------------------------- 2. TRF vs ERF across layers


def test_trf_vs_erf_ratios_and_labels():
    fig = fig_trf_vs_erf(["conv5_3", "fc7"], [100, 200], [[40, 60], [50]], image_size=224)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.25"]  # means 50 and 50
    assert ax.get_ylabel() == "receptive-field side (px)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv5_3", "fc7"]
    entries = _legend_texts(ax.get_legend())
    assert "image side 224 px" in entries and "ERF, one unit" in entries
    assert ax.get_ylim()[1] > 224


def test_trf_vs_erf_means_with_std_and_nan():
    fig = fig_trf_vs_erf(["a", "b", "c"], [10, 20, 40], [5.0, float("nan"), 30.0], [1.0, 2.0, 3.0])
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.50", "n/a", "0.75"]
    assert "ERF, mean ± std over units" in _legend_texts(fig.axes[0].get_legend())


def test_trf_vs_erf_single_layer_empty_units():
    fig = fig_trf_vs_erf(["fc7"], [404], [[]])
    assert [t.get_text() for t in fig.axes[0].texts] == ["n/a"]


def test_trf_vs_erf_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"erf_side has 1 entries; expected one per layer \(2: a, b\)"):
        fig_trf_vs_erf(["a", "b"], [1, 2], [1])


def test_trf_vs_erf_rejects_trf_length_mismatch():
    with pytest.raises(ValueError, match=r"trf_side has shape \(3,\); expected \(2,\)"):
        fig_trf_vs_erf(["a", "b"], [1, 2, 3], [1, 2])


def test_trf_vs_erf_rejects_std_with_per_unit_lists():
    with pytest.raises(ValueError, match="erf_side_std was given with per-unit"):
        fig_trf_vs_erf(["a"], [10], [[1, 2]], [0.5])


def test_trf_vs_erf_rejects_negative_side():
    with pytest.raises(ValueError, match="erf_side for layer 'a' has negative values"):
        fig_trf_vs_erf(["a"], [10], [[-1, 2]])


def test_trf_vs_erf_rejects_nested_units():
    with pytest.raises(ValueError, match="erf_side for layer 'a' has shape \\(1, 2\\)"):
        fig_trf_vs_erf(["a"], [10], [[[1, 2]]])


def test_trf_vs_erf_rejects_bad_image_size():
    with pytest.raises(ValueError, match="image_size is -5; expected a positive"):
        fig_trf_vs_erf(["a"], [10], [5], image_size=-5)


def test_trf_vs_erf_rejects_empty_layers():
    with pytest.raises(ValueError, match="layers is empty"):
        fig_trf_vs_erf([], [], [])


# ---------------------------------------------------------------- 3. with vs without context


def test_context_shares_one_colour_scale_and_titles_sizes():
    maps = {"FCN": 0.5 * _blob(64, 64, 32, 32, 4), "ParseNet": 2.0 * _blob(64, 64, 32, 32, 9)}
    fig = fig_context_comparison(maps, {"FCN": 9.6, "ParseNet": 21.2}, trf_box=(0, 0, 40, 40), threshold=0.5)
    panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    assert [ax.get_title() for ax in panels] == ["FCN\nERF 9.6 px\nERF/TRF 0.24", "ParseNet\nERF 21.2 px\nERF/TRF 0.53"]
    assert [ax.images[0].get_clim() for ax in panels] == [(0.0, 2.0), (0.0, 2.0)]
    assert _colorbar_labels(fig) == ["discrepancy (shared scale)"]
    assert all(any(p.get_linestyle() == "--" for p in ax.patches) for ax in panels)


def test_context_all_zero_maps_nan_size_and_more_models():
    z = np.zeros((16, 24))
    fig = fig_context_comparison({"a": z, "b": z, "c": z}, {"a": float("nan"), "b": 0, "c": 1})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a\nERF n/a", "b\nERF 0 px", "c\nERF 1 px"]
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_context_rejects_misspelt_size_key():
    with pytest.raises(ValueError, match=r"unknown model in sizes 'ParseNt' \(did you mean: ParseNet\?\)"):
        fig_context_comparison({"FCN": _blob(), "ParseNet": _blob()}, {"FCN": 1.0, "ParseNt": 2.0})


def test_context_rejects_missing_size():
    with pytest.raises(ValueError, match="sizes has no entry for model 'ParseNet'"):
        fig_context_comparison({"FCN": _blob(), "ParseNet": _blob()}, {"FCN": 1.0})


def test_context_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"maps\['B'\] has shape \(8, 8\); expected \(32, 32\)"):
        fig_context_comparison({"A": _blob(), "B": np.zeros((8, 8))}, {"A": 1, "B": 1})


def test_context_rejects_negative_size():
    with pytest.raises(ValueError, match=r"sizes\['A'\] is -3; expected an ERF side in pixels >= 0"):
        fig_context_comparison({"A": _blob()}, {"A": -3})


def test_context_rejects_empty_maps():
    with pytest.raises(ValueError, match="maps is empty"):
        fig_context_comparison({}, {})


# ---------------------------------------------------------------- 4. feature scale


def test_feature_scale_log_boxes_and_legend():
    rng = np.random.default_rng(0)
    before = {k: rng.lognormal(m, 0.5, 100) for k, m in [("conv4_3", 6), ("conv5_3", 4), ("fc7", 2), ("pool6", 0)]}
    after = {k: np.full(100, 10.0) for k in before}
    fig = fig_feature_scale(before, after)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv4_3", "conv5_3", "fc7", "pool6"]
    assert _legend_texts(fig.legends[0]) == ["before L2 norm", "after L2 norm + scale"]
    assert len([p for p in ax.patches]) == 8  # one box per layer and series
    assert ax.get_xlabel() == "layer"


def test_feature_scale_notes_dropped_values_and_handles_before_only():
    fig = fig_feature_scale({"fc7": np.array([0.0, 1.0, np.nan, 2.0]), "pool6": np.zeros(3)})
    (ax,) = fig.axes
    assert "(5 zero or non-finite values not shown)" in ax.get_xlabel()  # 0 and NaN in fc7, 3 zeros in pool6
    assert _legend_texts(fig.legends[0]) == ["before L2 norm"]


def test_feature_scale_rejects_unknown_layer_in_after():
    with pytest.raises(ValueError, match=r"unknown layer in norms_after 'fc8' \(did you mean: fc7\?\)"):
        fig_feature_scale({"fc7": np.ones(3)}, {"fc8": np.ones(3)})


def test_feature_scale_rejects_2d_norms():
    with pytest.raises(ValueError, match=r"norms_before\['fc7'\] has shape \(2, 3\); expected a 1-D"):
        fig_feature_scale({"fc7": np.ones((2, 3))})


def test_feature_scale_rejects_empty():
    with pytest.raises(ValueError, match="norms_before is empty"):
        fig_feature_scale({})


# ---------------------------------------------------------------- 5. segmentation


def _seg_inputs():
    gt = np.array([[0, 1], [2, 255]])
    good = np.array([[0, 1], [2, 0]])  # all 3 labelled pixels right
    bad = np.array([[0, 1], [1, 1]])  # 2 of 3 right
    img = _image(2, 2)
    return [img, img], [gt, np.zeros((2, 2), int)], {"FCN": [bad, bad], "ParseNet": [good, good]}


def test_segmentation_grid_legend_and_accuracy():
    images, gts, preds = _seg_inputs()
    fig = fig_segmentation(images, gts, preds, ["sky", "road", "car"], ["tab:blue", (0.5, 0.5, 0.5), "#ff0000"])
    assert len(fig.axes) == 2 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "FCN\nacc 66.7%", "ParseNet\nacc 100.0%"]
    # Row 2: ground truth all 0; FCN predicts [[0,1],[1,1]] -> 1 of 4 right.
    assert fig.axes[6].get_title() == "acc 25.0%"
    assert _legend_texts(fig.legends[0]) == ["sky", "road", "car", "ignore"]


def test_segmentation_legend_without_ignore_and_default_colours():
    gt = np.array([[0, 1], [1, 0]])
    fig = fig_segmentation([_image(2, 2)], [gt], {"m": [gt]}, ["a", "b"], ignore_index=None)
    assert _legend_texts(fig.legends[0]) == ["a", "b"]
    assert fig.axes[2].get_title() == "m\nacc 100.0%"


def test_segmentation_uint8_colours_and_all_ignored_image():
    gt = np.full((2, 2), 255)
    fig = fig_segmentation([_image(2, 2)], [gt], {"m": [np.zeros((2, 2), int)]}, ["a"], np.array([[255, 0, 0]], np.uint8))
    assert fig.axes[2].get_title() == "m\nacc n/a"
    np.testing.assert_allclose(fig.axes[1].images[0].get_array()[0, 0], [0.82, 0.82, 0.82])


def test_segmentation_rejects_out_of_range_label():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"values \[2\] outside the 2 classes"):
        fig_segmentation(images, gts, preds, ["sky", "road"])


def test_segmentation_rejects_wrong_prediction_count():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"predictions\['FCN'\] has 1 label maps; expected one per image \(2\)"):
        fig_segmentation(images, gts, {"FCN": preds["FCN"][:1]}, ["a", "b", "c"])


def test_segmentation_rejects_wrong_gt_count():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"ground_truth has 1 label maps; expected one per image \(2\)"):
        fig_segmentation(images, gts[:1], preds, ["a", "b", "c"])


def test_segmentation_rejects_label_map_of_wrong_size():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"ground_truth\[0\] has shape \(3, 3\); expected \(2, 2\)"):
        fig_segmentation(images, [np.zeros((3, 3), int), gts[1]], preds, ["a", "b", "c"])


def test_segmentation_rejects_colour_count():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"colors has 2 entries; expected one per class \(3\)"):
        fig_segmentation(images, gts, preds, ["a", "b", "c"], ["red", "blue"])


def test_segmentation_rejects_unreadable_colour():
    images, gts, preds = _seg_inputs()
    with pytest.raises(ValueError, match=r"colors\[1\] is 'bluu'; expected a matplotlib colour"):
        fig_segmentation(images, gts, preds, ["a", "b", "c"], ["red", "bluu", "green"])


def test_segmentation_rejects_empty_predictions():
    images, gts, _ = _seg_inputs()
    with pytest.raises(ValueError, match="predictions is empty; expected at least one model"):
        fig_segmentation(images, gts, {}, ["a"])


# ---------------------------------------------------------------- 6. occlusion vs gradient


def test_methods_titles_profile_and_colour_bar():
    fig = fig_methods(_blob(sigma=5), _blob(sigma=3), {"side (px)": 11.9, "sigma (px)": 5.0},
                      {"side (px)": 7.1, "sigma (px)": float("nan")}, image=_image(), trf_box=(2, 2, 30, 30))
    panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    assert len(panels) == 3
    assert panels[0].get_title() == "occlusion\nside (px) 11.9, sigma (px) 5"
    assert panels[1].get_title() == "gradient\nside (px) 7.1, sigma (px) n/a"
    assert _colorbar_labels(fig) == ["fraction of the map's own maximum"]
    prof = panels[2]
    assert _legend_texts(prof.get_legend()) == ["occlusion", "gradient", "threshold 0.5"]
    x, y = prof.lines[0].get_data()
    assert y.max() == pytest.approx(1.0) and x[np.argmax(y)] == 0  # profile through the peak, centred


def test_methods_profile_legend_lies_outside_the_curves():
    wide = _blob(sigma=12)  # tails reach every corner of the profile plot
    for width in (3.5, 7.0):
        fig = fig_methods(wide, wide, {"side (px)": 20.0}, {"side (px)": 20.0}, width=width)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        prof = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None][2]
        legend = prof.get_legend().get_window_extent(renderer)
        top_of_curves = prof.transData.transform((0, 1.0))[1]  # every profile is a fraction of its own max
        assert legend.y0 > top_of_curves, f"width {width}: the legend reaches down into the curves"
        inside = prof.get_window_extent(renderer)
        assert inside.x0 <= legend.x0 and legend.x1 <= inside.x1 and legend.y1 <= inside.y1


def test_methods_all_zero_maps_and_empty_stats():
    fig = fig_methods(np.zeros((8, 8)), np.zeros((8, 10)), {}, {"n": 3}, threshold=None)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["occlusion", "gradient\nn 3"]


def test_methods_rejects_map_not_matching_image():
    with pytest.raises(ValueError, match=r"gradient_map has shape \(8, 8\); expected \(32, 32\), the size of image"):
        fig_methods(_blob(), np.zeros((8, 8)), {}, {}, image=_image())


def test_methods_rejects_stats_not_a_dict():
    with pytest.raises(TypeError, match="stats_occ is a list; expected a dict"):
        fig_methods(_blob(), _blob(), [1.0], {})


def test_methods_rejects_wrong_number_of_names():
    with pytest.raises(ValueError, match="names is .*expected two method names"):
        fig_methods(_blob(), _blob(), {}, {}, names=("a",))


# ---------------------------------------------------------------- 7. training curves


def _run(best: float = 0.62) -> dict:
    steps = list(range(0, 100, 10))
    return dict(step=steps, loss=[2.0 / (1 + s) for s in steps], eval_step=[50, 90], miou=[0.4, best])


def test_training_curves_legends_and_best_miou():
    fig = fig_training_curves({"FCN": _run(0.55), "ParseNet": _run(0.62)})
    ax_loss, ax_iou = fig.axes
    assert _legend_texts(fig.legends[0]) == ["FCN (best mIoU 55.0%)", "ParseNet (best mIoU 62.0%)"]
    assert ax_iou.get_ylabel() == "mean IoU (%)"
    np.testing.assert_allclose(ax_iou.lines[1].get_ydata(), [40.0, 62.0])


def test_training_curves_nan_and_run_without_eval():
    run = _run()
    run["miou"] = [float("nan"), float("nan")]
    fig = fig_training_curves({"a": run, "b": {"step": [0], "loss": [1.0]}}, smoothing=0, log_loss=True)
    assert _legend_texts(fig.legends[0]) == ["a (no evaluation)", "b (no evaluation)"]
    assert fig.axes[0].get_yscale() == "log"


def test_training_curves_rejects_misspelt_key():
    with pytest.raises(ValueError, match=r"unknown key in run 'a' 'mIoU' \(did you mean: miou\?\)"):
        fig_training_curves({"a": {"step": [0], "loss": [1.0], "eval_step": [0], "mIoU": [0.1]}})


def test_training_curves_rejects_missing_loss():
    with pytest.raises(ValueError, match="run 'a' has no 'loss'"):
        fig_training_curves({"a": {"step": [0]}})


def test_training_curves_rejects_half_eval():
    with pytest.raises(ValueError, match="run 'a' has only one of 'eval_step' and 'miou'"):
        fig_training_curves({"a": {"step": [0], "loss": [1.0], "eval_step": [0]}})


def test_training_curves_rejects_length_mismatch():
    with pytest.raises(ValueError, match="run 'a' has 2 steps and 1 losses"):
        fig_training_curves({"a": {"step": [0, 1], "loss": [1.0]}})


def test_training_curves_rejects_eval_length_mismatch():
    with pytest.raises(ValueError, match="run 'a' has 1 eval steps and 2 mIoU values"):
        fig_training_curves({"a": {"step": [0], "loss": [1.0], "eval_step": [0], "miou": [0.1, 0.2]}})


def test_training_curves_rejects_percent_miou():
    with pytest.raises(ValueError, match=r"mIoU values in \[40, 62\]; expected fractions in \[0, 1\]"):
        fig_training_curves({"a": {**_run(), "miou": [40.0, 62.0]}})


def test_training_curves_rejects_non_numeric_series():
    with pytest.raises(ValueError, match="run 'a' has loss=.*expected a list of numbers"):
        fig_training_curves({"a": {"step": [0], "loss": ["x"]}})


def test_training_curves_rejects_bad_smoothing():
    with pytest.raises(ValueError, match="smoothing is 1.0; expected an EMA weight in \\[0, 1\\)"):
        fig_training_curves({"a": _run()}, smoothing=1.0)


# ---------------------------------------------------------------- every figure: saving and readability


def _all_figures(width: float | None = None) -> dict[str, Figure]:
    """Every figure on small synthetic data, at its default width or at ``width`` inches."""
    rng = np.random.default_rng(1)
    images, gts, preds = _seg_inputs()
    w = {} if width is None else {"width": width}
    return {
        "unit_panels": fig_unit_panels([_row(erf_map=_blob()), _row(theoretical_rf=(4, 4, 20, 20))], **w),
        "trf_vs_erf": fig_trf_vs_erf(["conv3_3", "conv4_3", "conv5_3", "fc7"], [40, 92, 196, 404],
                                     [rng.normal(m, 5, 20) for m in (30, 50, 70, 100)], image_size=224, **w),
        "context": fig_context_comparison({"FCN": _blob(sigma=3), "ParseNet": _blob(sigma=7)},
                                          {"FCN": 7.1, "ParseNet": 16.5}, trf_box=(0, 0, 32, 32), threshold=0.5, **w),
        "feature_scale": fig_feature_scale({"conv4_3": rng.lognormal(6, 1, 50), "fc7": rng.lognormal(1, 1, 50)},
                                           {"conv4_3": np.full(50, 10.0), "fc7": np.full(50, 10.0)}, **w),
        "segmentation": fig_segmentation(images, gts, preds, ["sky", "road", "car"], **w),
        "methods": fig_methods(_blob(sigma=5), _blob(sigma=3), {"side (px)": 11.9, "sigma (px)": 5.02},
                               {"side (px)": 7.1, "sigma (px)": 3.01}, title="conv5_3", **w),
        "curves": fig_training_curves({"FCN": _run(0.5), "ParseNet (global context, L2 norm)": _run(0.6)},
                                      title="runs", **w),
        "context_log": fig_context_comparison({"FCN": _blob(sigma=3), "ParseNet": _blob(sigma=7)},
                                              {"FCN": 7.0, "ParseNet": 15.0}, size_label="90% mass", log_decades=3,
                                              title="fc7: gradient ERF with and without global context", **w),
        "reach": fig_reach_comparison(["conv5_3", "fc7", "score"], _reach_measures(), title="occlusion", **w),
    }


def _reach_measures() -> dict[str, dict[str, np.ndarray]]:
    v = np.array([[10.0, 8, 12], [20, 18, 23], [30, 25, 33]])
    return {"50% mass side (px)": {"FCN": v, "ParseNet": 1.2 * v}, "90% mass side (px)": {"FCN": 2 * v, "ParseNet": 3 * v},
            "99% mass side (px)": {"FCN": 3 * v, "ParseNet": 4 * v},
            "far-field share": {"FCN": v / 100, "ParseNet": np.array([[0.3, np.nan, np.nan], [0.4, 0.3, 0.5], [np.nan] * 3])}}


@pytest.fixture(scope="module")
def all_figures() -> dict[str, Figure]:
    return _all_figures()


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<svg")])
def test_every_figure_saves_to_memory(all_figures, fmt, magic):
    for name, fig in all_figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        data = buf.getvalue()
        assert magic in data[:400], f"{name} as {fmt}"


def _labels(fig: Figure) -> list[Text]:
    """The texts a reader must be able to read apart: titles, axis labels, legend entries, figure titles."""
    out = [t for t in (fig._suptitle, fig._supxlabel) if t is not None]
    for ax in fig.axes:
        out += [ax.title, ax.xaxis.label, ax.yaxis.label]
        if ax.get_legend() is not None:
            out += list(ax.get_legend().get_texts())
    for legend in fig.legends:
        out += list(legend.get_texts())
    return [t for t in out if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("width", [3.5, 7.0], ids=["column", "page"])
def test_every_figure_is_readable_in_print(width):
    for name, fig in _all_figures(width).items():  # fresh figures: laid out for Agg only
        assert fig.get_size_inches()[0] == width, name
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for text in fig.findobj(Text):
            if text.get_visible() and text.get_text().strip():
                assert text.get_fontsize() >= 7, f"{name}: {text.get_text()!r} at {text.get_fontsize()} pt"
        # Everything drawn (titles, labels, legends, colour bars) lies inside the figure:
        # nothing is clipped when the caller saves without bbox_inches="tight".
        drawn = fig.get_tightbbox(renderer)  # inches
        w, h = fig.get_size_inches()
        slack = 0.005  # in: one pixel at 200 dpi
        assert drawn.x0 >= -slack and drawn.y0 >= -slack and drawn.x1 <= w + slack and drawn.y1 <= h + slack, (
            f"{name} at width {w}: drawn extent {drawn.bounds} leaves the {w}x{h} in figure"
        )
        # No two titles or labels overlap.
        texts = _labels(fig)
        boxes = [t.get_window_extent(renderer) for t in texts]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                assert not boxes[i].overlaps(boxes[j]), (
                    f"{name} at width {w}: {texts[i].get_text()!r} overlaps {texts[j].get_text()!r}"
                )


def test_figures_do_not_touch_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    _all_figures()
    assert plt.get_fignums() == before


# ---------------------------------------------------------------- reach comparison and log-scale maps


def test_reach_comparison_panels_bars_and_legend():
    fig = fig_reach_comparison(["conv5_3", "fc7", "score"], _reach_measures())
    assert [ax.get_ylabel() for ax in fig.axes] == ["50% mass side (px)", "90% mass side (px)", "99% mass side (px)",
                                                     "far-field share"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["FCN", "ParseNet"]
    assert fig.axes[3].get_ylim() == (0, 1)  # a share is drawn on its whole scale
    line = fig.axes[1].lines[0]  # FCN's 90% mass sides, left of each layer's centre
    np.testing.assert_allclose(line.get_ydata(), [20, 40, 60])
    np.testing.assert_allclose(line.get_xdata(), np.arange(3) - 0.09)
    # The error bars span the given intervals: FCN's 90% bar at conv5_3 runs from 16 to 24.
    segs = fig.axes[1].collections[0].get_segments()
    assert segs[0][:, 1].tolist() == [16.0, 24.0]


def test_reach_comparison_rejects_bad_values():
    with pytest.raises(ValueError, match=r"measures\['m'\]\['FCN'\] has shape \(2, 3\); expected \(3, 3\)"):
        fig_reach_comparison(["a", "b", "c"], {"m": {"FCN": np.zeros((2, 3))}})
    with pytest.raises(ValueError, match="measures is empty"):
        fig_reach_comparison(["a"], {})
    with pytest.raises(ValueError, match="layers is empty"):
        fig_reach_comparison([], {"m": {"FCN": np.zeros((0, 3))}})


def test_context_log_row_shows_decades_below_the_peak():
    m = {"FCN": _blob(sigma=3), "ParseNet": 2 * _blob(sigma=3)}
    fig = fig_context_comparison(m, {"FCN": 5.0, "ParseNet": 9.0}, size_label="90% mass", log_decades=3)
    titles = [ax.get_title() for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    assert titles == ["FCN\n90% mass 5 px", "ParseNet\n90% mass 9 px", "FCN, log scale", "ParseNet, log scale"]
    assert _colorbar_labels(fig) == ["discrepancy (shared scale)", "log10(1 + x / 1e-3 max)"]
    log_img = fig.axes[3].images[0].get_array()  # ParseNet's log panel: its peak is the shared maximum
    assert float(log_img.max()) == pytest.approx(np.log10(1 + 1e3))
    assert float(fig.axes[2].images[0].get_array().max()) == pytest.approx(np.log10(1 + 0.5e3))
    with pytest.raises(ValueError, match="log_decades is 0; expected a whole number of decades"):
        fig_context_comparison(m, {"FCN": 5.0, "ParseNet": 9.0}, log_decades=0)
