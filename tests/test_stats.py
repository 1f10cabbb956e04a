import math

import numpy as np
import pytest

from erf.stats import (CONTRIBUTION_LEVELS, ERFStats, centered_square, erf_stats, fit_gaussian, summarize,
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
