"""RepLKNet's ERF protocol on a hand-made model whose input gradient is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from erf.gradient import probe_gradient
from erf.replknet import area_ratios, format_area_ratios, log_scale, probe_replknet


def hand_made() -> nn.Module:
    """One 5x5 conv, two output channels, no bias, on inputs of ones.

    Channel 0 sums to 1*9 + 16*1 - 3 > 0 on ones: its gradient is its kernel. Colour 0 has 9 at the
    centre and 1 on the outer ring (16 taps); colour 1 has -1 on three ring taps (cut by the ReLU of the
    gradient); colour 2 is 0. Channel 1 sums to -100 + 8 < 0: ReLU'd away, so its big taps never count.
    """
    conv = nn.Conv2d(3, 2, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        ring = torch.ones(5, 5)
        ring[1:4, 1:4] = 0
        conv.weight[0, 0] = ring
        conv.weight[0, 0, 2, 2] = 9.0
        conv.weight[0, 1, 0, 0] = conv.weight[0, 1, 4, 4] = conv.weight[0, 1, 0, 2] = -1.0
        conv.weight[1, 0, 2, 2] = -100.0
        conv.weight[1, 2, 0, :] = 2.0
    return nn.Sequential(conv)


def expected_scores(S: int) -> np.ndarray:
    m = np.zeros((S, S))
    c = S // 2
    m[c - 2:c + 3, c - 2:c + 3] = 1.0
    m[c - 1:c + 2, c - 1:c + 2] = 0.0
    m[c, c] = 9.0
    return m


def test_scores_table_and_hook_match_the_hand_computed_gradient():
    S = 11
    images = torch.ones(2, 3, S, S)
    res = probe_replknet(hand_made(), "0", images, input_size=S)
    np.testing.assert_allclose(res.maps[0][S - S // 2:2 * S - S // 2, S - S // 2:2 * S - S // 2],
                               expected_scores(S), atol=1e-6)
    # log10(9 + 1) = 1 at the centre, log10(1 + 1) on 16 ring pixels: the 3x3 square holds
    # 1 / (1 + 16 log10 2) = 0.172 of the total, the 5x5 square all of it
    rows = res.config["replknet"]["area_ratios"]
    assert [(r["threshold"], r["side"]) for r in rows] == [(0.2, 5), (0.3, 5), (0.5, 5), (0.99, 5)]
    assert rows[0]["area_ratio"] == pytest.approx(25 / 121)
    assert [r["side"] for r in area_ratios(expected_scores(S), (0.1, 0.17, 0.18))] == [3, 3, 5]
    assert "0.99" in format_area_ratios(rows) and "0.2066" in format_area_ratios(rows)
    hooked = probe_gradient(hand_made(), "0", images, input_size=S, protocol="replknet")
    np.testing.assert_array_equal(hooked.maps, res.maps)


def test_images_are_resized_to_the_protocol_size():
    res = probe_replknet(hand_made(), "0", torch.ones(1, 3, 20, 30), input_size=11)
    assert res.maps.shape == (1, 22, 22) and res.config["input_size"] == 11


def test_log_scale_is_log10_plus_one_over_max():
    np.testing.assert_allclose(log_scale(np.array([[0.0, 9.0], [99.0, 1.0]])),
                               [[0, 0.5], [1.0, np.log10(2) / 2]])


@pytest.mark.parametrize("kwargs, match", [
    ({"protocol": "replknett"}, r"unknown gradient protocol 'replknett'; expected 'luo' .* or 'replknet'"),
    ({"protocol": "replknet", "input_size": (11, 12)}, r"resizes to a square"),
])
def test_bad_protocol_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        probe_gradient(hand_made(), "0", torch.ones(1, 3, 11, 11), **kwargs)


def test_bad_thresholds_and_sizes():
    with pytest.raises(ValueError, match=r"threshold 1.5; expected a fraction in \(0, 1\)"):
        probe_replknet(hand_made(), "0", torch.ones(1, 3, 11, 11), input_size=11, thresholds=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"input_size=4; expected an integer side of at least 8"):
        probe_replknet(hand_made(), "0", torch.ones(1, 3, 11, 11), input_size=4)


def test_figure_draws_the_log_map_and_the_table():
    from figures.replknet import fig_replknet_erf

    m = log_scale(expected_scores(11))
    fig = fig_replknet_erf(m, area_ratios(expected_scores(11)), title="hand-made")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), m)
    assert len(ax.patches) == 4 and ax.patches[0].get_width() == 5  # one 5x5 square per threshold
