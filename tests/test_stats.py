import math

import numpy as np
import pytest

from erf.stats import (CONTRIBUTION_LEVELS, FIT_R2_MIN, ERFStats, bootstrap_means, centered_square, erf_stats,
                       far_field_share, fit_gaussian, percentile_interval, reach_from_sums, reach_sums,
                       second_moment_radius, summarize,
                       threshold_area)


def _gauss(shape, mu, sigma):
    y, x = np.mgrid[:shape[0], :shape[1]].astype(float)
    return np.exp(-0.5 * (((y - mu[0]) / sigma[0]) ** 2 + ((x - mu[1]) / sigma[1]) ** 2))


def test_threshold_area_hand_case():
    m = np.array([[0.0, 0.6], [1.0, 0.5]])
    assert threshold_area(m, 0.5) == 2  # 0.5 is not strictly above 0.5
    assert threshold_area(m, 0.0) == 3
    assert threshold_area(np.zeros((3, 3))) == 0


def test_threshold_area_is_scale_invariant():
    m = _gauss((30, 30), (15, 12), (3, 5))
    assert threshold_area(m) == threshold_area(7.5 * m)


def test_centered_square_hand_case():
    m = np.zeros((5, 5))
    m[2, 2], m[1, 3], m[0, 0] = 2, 1, 1  # total 4; rings 0, 1, 2 hold 2, 1, 1
    assert centered_square(m, (2, 2), 0.5) == 1
    assert centered_square(m, (2, 2), 0.51) == 3
    assert centered_square(m, (2, 2), 0.75) == 3
    assert centered_square(m, (2, 2), 1.0) == 5
    # Off-centre neuron: the square grows until it reaches the far corner.
    assert centered_square(m, (4, 4), 0.99) == 9
    assert math.isnan(centered_square(np.zeros((3, 3)), (1, 1), 0.5))


def test_centered_square_of_uniform_block():
    m = np.pad(np.ones((7, 7)), 10)  # 49 pixels around (13, 13)
    assert centered_square(m, (13, 13), 0.99) == 7
    assert centered_square(m, (13, 13), 9 / 49) == 3
    assert centered_square(m, (13, 13), 10 / 49) == 5


@pytest.mark.parametrize("shape,mu,sigma", [((41, 41), (20, 20), (3, 5)), ((60, 90), (25.5, 50.2), (6, 2.5)),
                                            ((300, 300), (140, 170), (30, 20))])
def test_gaussian_fit_recovers_parameters(shape, mu, sigma):
    fit = fit_gaussian(3.0 * _gauss(shape, mu, sigma))
    assert fit.amplitude == pytest.approx(3.0, rel=0.01)  # block means lower a sharp peak slightly
    assert (fit.mu_y, fit.mu_x) == pytest.approx(mu, abs=0.05)
    # The 300 px case is block-averaged before the fit; the blur correction keeps sigma exact to ~1%.
    assert (fit.sigma_y, fit.sigma_x) == pytest.approx(sigma, rel=0.01)
    assert fit.r2 > 0.999


def test_gaussian_fit_of_non_gaussian_has_lower_r2():
    ring = _gauss((41, 41), (20, 20), (8, 8)) - _gauss((41, 41), (20, 20), (4, 4))
    assert fit_gaussian(ring).r2 < 0.9


def test_gaussian_fit_of_zero_map_is_nan():
    fit = fit_gaussian(np.zeros((4, 4)))
    assert all(math.isnan(v) for v in (fit.sigma_y, fit.sigma_x, fit.r2))


def test_erf_stats_hand_case():
    m = np.pad(np.ones((3, 3)), 2)  # 7x7 with a 3x3 block of ones at the centre (3, 3)
    s = erf_stats(m, center=(3, 3), trf_area=18, image_area=49)
    assert s.area == 9 and s.side == 3.0
    assert s.frac_trf == 0.5 and s.frac_image == pytest.approx(9 / 49)
    assert s.square_sides == (3.0, 3.0, 3.0, 3.0)
    assert s.square_frac_image == pytest.approx((9 / 49,) * 4)
    assert s.levels == CONTRIBUTION_LEVELS
    d = s.to_dict()
    assert d["area"] == 9 and d["square_sides"] == [3.0, 3.0, 3.0, 3.0]


def test_erf_stats_zero_map_gives_none_in_json():
    s = erf_stats(np.zeros((5, 5)), center=(2, 2), trf_area=9, image_area=25)
    assert math.isnan(s.side)
    assert s.to_dict()["side"] is None and s.to_dict()["square_sides"] == [None] * 4


def test_summarize_ignores_empty_maps():
    a = erf_stats(np.pad(np.ones((3, 3)), 2), center=(3, 3), trf_area=9, image_area=49)
    b = erf_stats(np.pad(np.ones((5, 5)), 1), center=(3, 3), trf_area=9, image_area=49)
    z = erf_stats(np.zeros((7, 7)), center=(3, 3), trf_area=9, image_area=49)
    out = summarize([a, b, z])
    assert out["side"] == {"mean": 4.0, "std": 1.0, "min": 3.0, "max": 5.0, "count": 2}
    assert out["square_side@0.5"]["mean"] == 4.0


def test_bad_threshold():
    with pytest.raises(ValueError, match=r"threshold=1.5; expected a fraction"):
        threshold_area(np.ones((2, 2)), 1.5)


def test_bad_level():
    with pytest.raises(ValueError, match=r"t=0; expected a fraction of the total"):
        centered_square(np.ones((2, 2)), (0, 0), 0)


def test_bad_map_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\); expected a non-empty 2-D array"):
        fit_gaussian(np.ones(3))


def test_nan_map():
    with pytest.raises(ValueError, match="NaN or inf"):
        threshold_area(np.array([[np.nan, 1.0]]))


def test_negative_map():
    with pytest.raises(ValueError, match="negative values"):
        erf_stats(-np.ones((3, 3)), center=(1, 1), trf_area=9, image_area=9)


def test_bad_areas():
    with pytest.raises(ValueError, match=r"trf_area=0.*expected positive"):
        erf_stats(np.ones((3, 3)), center=(1, 1), trf_area=0, image_area=9)


def test_summarize_empty():
    with pytest.raises(ValueError, match="no statistics"):
        summarize([])


def test_stats_dataclass_is_frozen():
    s = erf_stats(np.ones((3, 3)), center=(1, 1), trf_area=9, image_area=9)
    assert isinstance(s, ERFStats)
    with pytest.raises(AttributeError):
        s.area = 1


# ---------------------------------------------------------------- reach: mass extent, far field, second moment


def test_reach_of_a_single_pixel():
    m = np.zeros((21, 21))
    m[10, 10] = 5.0
    s = erf_stats(m, center=(10, 10), trf_area=441, image_area=441)
    assert s.mass_sides == (1.0, 1.0, 1.0)  # every level is reached by the centre pixel alone
    assert s.far_share == 0.0 and s.moment_radius == 0.0 and s.side == 1.0
    # The same pixel 6 px right of the neuron: all of it is far beyond a 5 px radius.
    assert far_field_share(m, (10, 4), 5.0) == 1.0
    assert second_moment_radius(m, (10, 4)) == pytest.approx(math.sqrt(36 / 2))
    assert centered_square(m, (10, 4), 0.5) == 13  # 6 rings out: side 2 * 6 + 1


def test_reach_of_a_uniform_map():
    m = np.ones((11, 11))  # 121 pixels, neuron at the centre: ring r (r >= 1) holds 8r pixels
    s = erf_stats(m, center=(5, 5), trf_area=121, image_area=121, far_radius=3.0)
    # Cumulative share through ring r is (2r + 1)^2 / 121: 49 / 121 < 0.5 <= 81 / 121, 0.9 -> ring 5.
    assert s.mass_sides == (9.0, 11.0, 11.0)
    # Far beyond 3 px: 121 minus the 29 pixels with dy^2 + dx^2 <= 9.
    assert s.far_share == pytest.approx((121 - 29) / 121)
    # E[(dy^2 + dx^2) / 2] = E[dy^2] = (2 * (1 + 4 + 9 + 16 + 25)) / 11 = 10.
    assert s.moment_radius == pytest.approx(math.sqrt(10.0))
    assert s.side == 11.0  # half-max covers everything


def _lobe(m, cy, cx, amp):
    y, x = np.mgrid[:m.shape[0], :m.shape[1]]
    return m + amp * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0 ** 2))


def test_two_far_lobes_grow_reach_but_not_the_half_max_side():
    near = _lobe(np.zeros((97, 97)), 48, 48, 1.0)  # the object at the neuron
    both = _lobe(near, 10, 86, 0.45)  # plus a cue far away, under half the peak
    a = erf_stats(near, center=(48, 48), trf_area=97 ** 2, image_area=97 ** 2)
    b = erf_stats(both, center=(48, 48), trf_area=97 ** 2, image_area=97 ** 2)
    assert b.side == a.side  # the half-max side only sees the peak
    assert b.mass_sides[1] > 3 * a.mass_sides[1] and b.mass_sides[2] > 3 * a.mass_sides[2]
    assert a.far_share < 1e-6 and b.far_share == pytest.approx(0.45 / 1.45, rel=1e-3)
    assert b.moment_radius > 5 * a.moment_radius


@pytest.mark.parametrize("sigma", [2.0, 4.0, 7.5])
def test_second_moment_radius_of_a_gaussian_is_sigma(sigma):
    m = _gauss((121, 121), (60, 60), (sigma, sigma))
    assert second_moment_radius(m, (60, 60)) == pytest.approx(sigma, rel=1e-3)
    s = erf_stats(m, center=(60, 60), trf_area=121 ** 2, image_area=121 ** 2)
    assert s.spread_from == "fit" and s.spread == pytest.approx(sigma, rel=1e-3)


def test_spread_falls_back_to_the_moment_radius_when_the_fit_fails():
    m = np.zeros((41, 41))
    m[20, 20] = m[20, 2] = m[2, 38] = 1.0  # three spikes: no Gaussian fits
    s = erf_stats(m, center=(20, 20), trf_area=41 ** 2, image_area=41 ** 2)
    assert s.r2 < FIT_R2_MIN and s.spread_from == "moment"
    assert s.spread == s.moment_radius == pytest.approx(math.sqrt((18 ** 2 + 18 ** 2 + 18 ** 2) / 2 / 3))
    empty = erf_stats(np.zeros((5, 5)), center=(2, 2), trf_area=25, image_area=25)
    assert empty.spread_from == "none" and math.isnan(empty.spread) and math.isnan(empty.far_share)


def test_far_radius_defaults_to_a_quarter_of_the_image_side():
    s = erf_stats(np.ones((9, 9)), center=(4, 4), trf_area=81, image_area=64)
    assert s.far_radius == 2.0


def test_reach_of_a_mean_map_is_the_reach_of_the_mean_sums():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 15, 17)) ** 4
    sums = np.stack([reach_sums(m, (7, 9), 4.0) for m in maps])
    direct = reach_from_sums(reach_sums(maps.mean(0), (7, 9), 4.0))
    assert reach_from_sums(sums.mean(0)) == pytest.approx(direct)
    mean = maps.mean(0)
    assert direct["mass_side@0.9"] == centered_square(mean, (7, 9), 0.9)
    assert direct["far_share"] == pytest.approx(far_field_share(mean, (7, 9), 4.0))


def test_summarize_carries_the_reach_measures():
    a = erf_stats(np.pad(np.ones((3, 3)), 4), center=(5, 5), trf_area=9, image_area=121)
    out = summarize([a, a])
    assert out["mass_side@0.9"]["mean"] == 3.0 and out["far_share"]["mean"] == 0.0
    assert set(a.to_dict()) >= {"mass_sides", "far_share", "moment_radius", "spread", "spread_from", "far_radius"}


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_the_true_mean_at_its_level():
    # 300 synthetic experiments with a known answer (mean 2): the 90% interval should miss ~10% of the time.
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(300):
        x = rng.exponential(2.0, size=(40, 1))  # skewed, like per-unit ERF sizes
        lo, hi = percentile_interval(bootstrap_means(x, n_boot=400, seed=trial)[:, 0], 0.9)
        hits += lo <= 2.0 <= hi
    assert 0.82 <= hits / 300 <= 0.95  # percentile bootstrap at n = 40 under-covers a little


def test_bootstrap_of_a_ratio_covers_the_true_ratio():
    rng = np.random.default_rng(2)
    hits = 0
    for trial in range(200):
        a, b = rng.normal(10, 2, size=(30, 1)), rng.normal(15, 3, size=(30, 1))
        ra, rb = bootstrap_means(a, n_boot=400, seed=2 * trial), bootstrap_means(b, n_boot=400, seed=2 * trial + 1)
        lo, hi = percentile_interval(rb[:, 0] / ra[:, 0], 0.95)
        hits += lo <= 1.5 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_means_by_hand_and_checks():
    assert np.all(bootstrap_means(np.full((3, 2), 4.0), n_boot=5) == 4.0)  # constant data: every replicate is 4
    r = bootstrap_means(np.arange(4.0)[:, None], n_boot=50, seed=3)
    np.testing.assert_array_equal(r, bootstrap_means(np.arange(4.0)[:, None], n_boot=50, seed=3))  # reproducible
    assert r.min() >= 0 and r.max() <= 3 and (r * 4 == np.round(r * 4)).all()  # means of 4 draws of 0..3
    assert percentile_interval(np.array([np.nan, 1.0, 1.0])) == (1.0, 1.0)
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan])))
    with pytest.raises(ValueError, match=r"samples of shape \(3,\); expected \(n, k\)"):
        bootstrap_means(np.ones(3))
    with pytest.raises(ValueError, match="n_boot=0; expected a positive"):
        bootstrap_means(np.ones((3, 1)), n_boot=0)
    with pytest.raises(ValueError, match="level=95; expected a coverage in"):
        percentile_interval(np.ones(3), 95)
