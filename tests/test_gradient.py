import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from torch import nn

from erf.gradient import GradientConfig, probe_gradient
from erf.result import recenter


def _linear_net(seed=0, channels=(3, 2, 2), ks=(3, 2)):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(channels[i], channels[i + 1], k, bias=False) for i, k in enumerate(ks)]
    return nn.Sequential(*layers).eval()


def _composed_kernel(net: nn.Sequential) -> np.ndarray:
    """(C_out, C_in, K, K): cross-correlation after cross-correlation = one with the full convolution of the kernels."""
    K = None
    for conv in net:
        w = conv.weight.detach().double().numpy()  # (O, I, k, k)
        if K is None:
            K = w
            continue
        O, M = w.shape[:2]
        K = np.stack([np.stack([sum(convolve2d(w[o, m], K[m, i]) for m in range(M)) for i in range(K.shape[1])])
                      for o in range(O)])
    return K


def test_linear_network_gradient_equals_composed_kernels():
    net = _linear_net()
    K = _composed_kernel(net)  # (2, 3, 4, 4): RF 3 + 2 - 1 = 4
    H = W = 10
    y, x = 2, 5
    res = probe_gradient(net, "1", torch.randn(2, 3, H, W), neuron=(1, y, x))
    want = np.zeros((H, W))
    want[y:y + 4, x:x + 4] = np.abs(K[1]).sum(0)  # output (y, x) reads input rows y..y+3
    np.testing.assert_allclose(res.image_maps[0], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.image_maps[1], want, rtol=1e-5, atol=1e-7)  # linear: input-independent
    np.testing.assert_allclose(res.maps[0], recenter(want, (y + 1.5, x + 1.5)), rtol=1e-5, atol=1e-7)
    assert res.mode == "neuron" and res.neuron == (1, y, x)


def test_position_mode_sums_the_channels():
    net = _linear_net()
    K = _composed_kernel(net)
    res = probe_gradient(net, "1", torch.randn(1, 3, 9, 9), position=(3, 1))
    want = np.zeros((9, 9))
    want[3:7, 1:5] = np.abs(K.sum(0)).sum(0)  # d(sum_c out[c]) / d input, then |.| summed over RGB
    np.testing.assert_allclose(res.image_maps[0], want, rtol=1e-5, atol=1e-7)
    assert res.mode == "position" and res.units.tolist() == [-1]


def test_noise_inputs_and_inits_average_the_maps():
    """A linear net's map is input-independent; over inits it is the mean of each init's analytic map."""
    H = W = 8
    maps = []
    for i in range(3):
        torch.manual_seed(7 + i)
        net = nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.Conv2d(2, 2, 2, bias=False))
        want = np.zeros((H, W))
        want[2:6, 2:6] = np.abs(_composed_kernel(net)[0]).sum(0)
        maps.append(want)
    res = probe_gradient(lambda: nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.Conv2d(2, 2, 2, bias=False)),
                         "1", None, neuron=(0, 2, 2), noise_inputs=3, input_size=(H, W), inits=3, seed=7)
    np.testing.assert_allclose(res.maps[0], recenter(np.mean(maps, 0), (3.5, 3.5)), rtol=1e-5, atol=1e-7)
    assert res.image_maps is None and res.config["inits"] == 3
    assert len(res.model["fingerprint"]) == 3


def test_factory_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    probe_gradient(lambda: nn.Sequential(nn.Conv2d(3, 1, 3)), "0", None, noise_inputs=1, input_size=8, inits=2)
    assert torch.equal(torch.rand(1), before)


@pytest.mark.slow
def test_luo_sqrt_n_law():
    """n stacked 3x3 convs with uniform weights: the ERF is the n-fold box convolution, a Gaussian of
    sigma = sqrt(n * 2/3) (Luo et al. 2016, Sec. 2.2): the fitted sigma grows as sqrt(n)."""
    sigmas = {}
    for n in (4, 8, 16, 32):  # n = 2 (a 5-pixel triangle) is not yet Gaussian
        layers = [nn.Conv2d(3 if i == 0 else 1, 1, 3, bias=False) for i in range(n)]
        for conv in layers:
            nn.init.constant_(conv.weight, 1.0 / conv.weight.numel())
        size = 2 * n + 9
        res = probe_gradient(nn.Sequential(*layers), str(n - 1), None, noise_inputs=1, input_size=size)
        sigmas[n] = res.unit_stats[0]["sigma_y"], res.unit_stats[0]["sigma_x"]
        assert res.unit_stats[0]["r2"] > 0.95
    for n, (sy, sx) in sigmas.items():
        assert sy == pytest.approx(math.sqrt(2 * n / 3), rel=0.1)
        assert sx == pytest.approx(math.sqrt(2 * n / 3), rel=0.1)
        assert sy / sigmas[4][0] == pytest.approx(math.sqrt(n / 4), rel=0.1)


def test_real_cnn_map_is_inside_trf_and_nonnegative():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU())
    res = probe_gradient(net, "4", torch.randn(3, 3, 16, 16), neuron=(0, "center"), batch_size=2)
    top, left, bottom, right = (int(v) for v in _box(res))
    outside = np.ones((16, 16), bool)
    outside[top:bottom, left:right] = False
    assert (res.image_maps >= 0).all() and res.image_maps[:, outside].max() == 0
    assert res.image_maps.sum() > 0
    assert res.topk_values.shape == (1, 3)


def _box(res):
    return res.trf.box(*res.neuron[1:], clip=True)


def test_batch_size_does_not_matter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    images = torch.randn(5, 3, 12, 12)
    a = probe_gradient(net, "3", images, batch_size=1)
    b = probe_gradient(net, "3", images, batch_size=4)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- bad input
def test_inits_need_a_factory():
    with pytest.raises(ValueError, match="inits=2 needs a model factory"):
        probe_gradient(_linear_net(), "1", torch.zeros(1, 3, 8, 8), inits=2)


def test_model_not_a_module():
    with pytest.raises(TypeError, match="model of type int; expected an nn.Module or a callable"):
        probe_gradient(3, "1", torch.zeros(1, 3, 8, 8))


def test_factory_returns_non_module():
    with pytest.raises(TypeError, match="factory returned str"):
        probe_gradient(lambda: "net", "1", torch.zeros(1, 3, 8, 8))


def test_no_inputs():
    with pytest.raises(ValueError, match="no inputs"):
        probe_gradient(_linear_net(), "1")


def test_negative_noise_inputs():
    with pytest.raises(ValueError, match="noise_inputs=-1"):
        probe_gradient(_linear_net(), "1", torch.zeros(1, 3, 8, 8), noise_inputs=-1)


def test_input_size_mismatch():
    with pytest.raises(ValueError, match=r"input_size=9 differs from the images' \(8, 8\)"):
        probe_gradient(_linear_net(), "1", torch.zeros(1, 3, 8, 8), noise_inputs=1, input_size=9)


def test_position_out_of_range():
    with pytest.raises(ValueError, match=r"position \(5, 0\) is outside layer '1' of shape \(C, h, w\) = \(2, 5, 5\)"):
        probe_gradient(_linear_net(), "1", torch.zeros(1, 3, 8, 8), position=(5, 0))


def test_unknown_position_word():
    with pytest.raises(ValueError, match="position='centre'; expected"):
        probe_gradient(_linear_net(), "1", torch.zeros(1, 3, 8, 8), position="centre")


def test_unknown_layer():
    with pytest.raises(ValueError, match=r"unknown layer .*'2'"):
        probe_gradient(_linear_net(), "2", torch.zeros(1, 3, 8, 8))


def test_nan_activation():
    net = _linear_net()
    with torch.no_grad():
        net[0].weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="layer '1' gives NaN or inf activations on input image_00000"):
        probe_gradient(net, "1", torch.ones(1, 3, 8, 8))


def test_gradient_config_is_saved_as_before_and_replaces_the_keywords():
    """GradientConfig carries the settings; the result's config keeps its keys and order; config= wins."""
    net = _linear_net()
    images = torch.randn(2, 3, 8, 8)
    by_keywords = probe_gradient(net, "1", images, noise_inputs=1, seed=3, threshold=0.4, batch_size=2)
    by_config = probe_gradient(net, "1", images, config=GradientConfig(noise_inputs=1, seed=3, threshold=0.4,
                                                                       batch_size=2))
    np.testing.assert_array_equal(by_config.maps, by_keywords.maps)
    assert list(by_config.config) == ["method", "position", "noise_inputs", "inits", "seed", "threshold",
                                      "batch_size", "device", "real_images"]
    assert by_config.config == by_keywords.config
    assert (by_config.config["noise_inputs"], by_config.config["seed"], by_config.config["real_images"]) == (1, 3, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"inits": 0}, "inits=0; expected an integer >= 1"),
    ({"batch_size": 0}, "batch_size=0; expected an integer >= 1"),
    ({"threshold": 1.0}, r"threshold=1.0; expected a fraction of the max in \[0, 1\)"),
])
def test_gradient_config_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientConfig(**kwargs)


def test_gradient_accumulator_merge_is_the_sum_of_its_parts():
    from erf.gradient import _GradientAccumulator

    contrib = torch.arange(3 * 2 * 2, dtype=torch.float64).reshape(3, 2, 2)  # (B, H, W): inputs 0, 1 (real), 2
    whole = _GradientAccumulator(2, (2, 2), inits=1)
    whole.push(torch.tensor([0, 1, 2]), contrib, torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64), True)
    parts = []
    for idx in ([0, 2], [1]):  # two ranks, interleaved inputs
        part = _GradientAccumulator(2, (2, 2), inits=1)
        part.push(torch.tensor(idx), contrib[idx], torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)[idx], True)
        parts.append(part.state_dict())
    merged = _GradientAccumulator(2, (2, 2), inits=1)
    merged.merge(parts)
    assert merged.count == 3 and merged.values.tolist() == [5.0, 6.0]
    assert merged.total.tolist() == [[12.0, 15.0], [18.0, 21.0]]  # 0+4+8, 1+5+9, 2+6+10, 3+7+11
    torch.testing.assert_close(merged.per_image, contrib[:2])
