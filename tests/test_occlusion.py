import numpy as np
import pytest
import torch
from torch import nn

from erf.occlusion import (FullReinference, make_patches, occluder_centers, occluder_positions,
                           probe_occlusion)
from erf.rf import receptive_field


def _cnn(channels=4, k=3):
    return nn.Sequential(nn.Conv2d(3, channels, k), nn.ReLU(), nn.Conv2d(channels, channels, k, stride=2),
                         nn.ReLU()).eval()


def _overlaps(starts, p, lo, hi):
    """Bool per occluder start: does [start, start + p) meet [lo, hi)?"""
    starts = np.asarray(starts)
    return (starts < hi) & (starts + p > lo)


# --------------------------------------------------------------------------- grid and noise
def test_positions_hand_case_include_border():
    assert occluder_positions((5, 6), patch=3, stride=2).tolist() == [[0, 0], [0, 2], [0, 3], [2, 0], [2, 2],
                                                                       [2, 3]]
    # Zhou protocol at 224 px: starts 0, 3, ..., 213 = 224 - 11 already touches the border.
    pos = occluder_positions(224, 11, 3)
    assert pos.shape == (72 * 72, 2) and pos.max().item() == 213
    assert occluder_positions((4, 4), 4, 1).tolist() == [[0, 0]]


def test_centers_hand_case():
    cy, cx = occluder_centers((5, 6), patch=3, stride=2)
    assert cy.tolist() == [1.0, 3.0] and cx.tolist() == [1.0, 3.0, 4.0]


def test_patches_do_not_depend_on_batching():
    image = torch.randn(1, 3, 16, 16)
    whole = make_patches(image, torch.arange(10), 5, seed=3)
    parts = torch.cat([make_patches(image, torch.arange(0, 3), 5, seed=3),
                       make_patches(image, torch.arange(3, 10), 5, seed=3)])
    assert torch.equal(whole, parts)
    assert torch.equal(make_patches(image, torch.tensor([7]), 5, seed=3), whole[7:8])
    assert not torch.equal(make_patches(image, torch.arange(10), 5, seed=4), whole)
    assert not torch.equal(whole[0], whole[1])  # fresh noise per position


def test_patch_noise_kinds_follow_image_statistics():
    image = torch.stack([torch.linspace(-2, 1, 64), torch.linspace(0, 3, 64), torch.full((64,), 0.5)]).view(3, 8, 8)
    uni = make_patches(image, torch.arange(200), 3, noise="uniform")  # (200, 3, 3, 3)
    assert uni[:, 0].min() >= -2 and uni[:, 0].max() <= 1 and uni[:, 0].max() > 0.9
    assert uni[:, 1].min() >= 0 and uni[:, 1].max() <= 3
    torch.testing.assert_close(uni[:, 2], torch.full_like(uni[:, 2], 0.5))  # a flat channel has no range
    const = make_patches(image, torch.arange(4), 3, noise="constant")
    torch.testing.assert_close(const[:, :, 0, 0], image.mean(dim=(1, 2)).expand(4, 3))
    gauss = make_patches(image, torch.arange(400), 3, noise="gaussian")
    assert abs(gauss[:, 1].mean() - 1.5) < 0.1 and abs(gauss[:, 1].std() - image[1].std(unbiased=False)) < 0.1


def test_full_reinference_pastes_patches():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32)[:60].view(1, 3, 4, 5)
    engine = FullReinference(nn.Identity(), image)
    patches = -torch.ones(2, 3, 2, 2)
    out = engine(torch.tensor([[0, 0], [2, 3]]), patches)  # (2, 3, 4, 5)
    want = image.repeat(2, 1, 1, 1)
    want[0, :, 0:2, 0:2] = -1
    want[1, :, 2:4, 3:5] = -1
    assert torch.equal(out, want)


# --------------------------------------------------------------------------- hand-checked probe
def test_one_by_one_conv_hand_case():
    """1x1 conv summing the channels, 1x1 constant occluder: only the neuron's own pixel changes it,
    by |sum_c (mean_c - x_c[y, x])|."""
    model = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False))
    nn.init.ones_(model[0].weight)
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)
    res = probe_occlusion(model, "0", image, patch=1, stride=1, noise="constant", neuron=(0, 1, 2))
    want = np.zeros((4, 4), np.float32)
    want[1, 2] = abs(float((image[0].mean(dim=(1, 2)) - image[0, :, 1, 2]).sum()))  # = |(7.5 - 6) * 3| = 4.5
    assert want[1, 2] == 4.5
    np.testing.assert_allclose(res.image_maps[0], want, atol=1e-5)
    # The map is a single pixel: normalised to 1 and centred on the canvas centre (H, W) = (4, 4).
    assert res.maps.shape == (1, 8, 8) and res.maps[0, 4, 4] == 1.0 and res.maps[0].sum() == 1.0
    assert res.unit_stats[0]["area"] == 1


@pytest.mark.parametrize("k", [3, 5])
def test_single_conv_discrepancy_is_nonzero_exactly_within_trf(k):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 2, k)).eval()
    H = W = 14
    images = torch.randn(2, 3, H, W)
    y, x = 4, 6  # TRF of output (y, x): input rows [y, y + k), cols [x, x + k)
    res = probe_occlusion(model, "0", images, patch=3, stride=1, neuron=(1, y, x), skip_outside_trf=False)
    starts = np.arange(H - 2)
    inside = np.outer(_overlaps(starts, 3, y, y + k), _overlaps(starts, 3, x, x + k))  # (12, 12)
    for m in res.image_maps:
        grid = m[1:H - 1, 1:W - 1]  # stride 1: the values at the occluder centres
        assert (grid[inside] > 1e-4).all()
        assert np.abs(grid[~inside]).max() <= 1e-5
    assert res.trf.rf == (k, k)


def _random_cnn(rng: np.random.Generator) -> nn.Sequential:
    layers, c = [], 3
    for _ in range(rng.integers(1, 4)):
        kind = rng.choice(["conv", "conv", "max", "avg"])
        k, s = int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 2]))
        p = int(rng.integers(0, (k - 1) // 2 + 1))
        if kind == "conv":
            out = int(rng.choice([2, 4]))
            layers += [nn.Conv2d(c, out, k, stride=s, padding=p, dilation=int(rng.choice([1, 2]))), nn.ReLU()]
            c = out
        elif kind == "max":
            layers.append(nn.MaxPool2d(max(k, 2), stride=s, padding=min(p, max(k, 2) // 2)))
        else:
            layers.append(nn.AvgPool2d(max(k, 2), stride=s, padding=min(p, max(k, 2) // 2)))
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("trial", range(10))
def test_random_cnn_positions_off_the_trf_change_nothing(trial):
    rng = np.random.default_rng(trial)
    torch.manual_seed(trial)
    while True:
        model, H, W = _random_cnn(rng), int(rng.integers(18, 30)), int(rng.integers(18, 30))
        with torch.no_grad():
            out = model(torch.zeros(1, 3, H, W))
        if out.shape[-1] >= 1 and out.shape[-2] >= 1:
            break
    layer = str(len(model) - 1)
    C, h, w = out.shape[1:]
    neuron = (int(rng.integers(C)), int(rng.integers(h)), int(rng.integers(w)))
    images = torch.randn(2, 3, H, W)
    patch, stride = 3, 2
    res = probe_occlusion(model, layer, images, patch=patch, stride=stride, neuron=neuron, skip_outside_trf=False)
    top, left, bottom, right = receptive_field(model, layer, (H, W)).box(neuron[1], neuron[2])
    pos = occluder_positions((H, W), patch, stride).numpy()
    off = ~(_overlaps(pos[:, 0], patch, top, bottom) & _overlaps(pos[:, 1], patch, left, right))
    centers = pos + 1  # odd patch: integer centres, where the image map holds the grid values exactly
    for m in res.image_maps:
        assert np.abs(m[centers[off, 0], centers[off, 1]]).max(initial=0) <= 1e-5
    # Skipping those positions is therefore exact.
    fast = probe_occlusion(model, layer, images, patch=patch, stride=stride, neuron=neuron)
    np.testing.assert_allclose(fast.image_maps, res.image_maps, atol=1e-5)


# --------------------------------------------------------------------------- invariance
@pytest.fixture(scope="module")
def small_setup():
    torch.manual_seed(0)
    return _cnn(), torch.randn(5, 3, 20, 20), [f"im{i}" for i in range(5)]


def _probe(setup, **kw):
    model, images, names = setup
    kw = {"patch": 5, "stride": 3, "top_k": 3, "names": names, **kw}
    return probe_occlusion(model, "3", kw.pop("images", images), **kw)


def test_units_mode_shapes_and_top_k(small_setup):
    res = _probe(small_setup)
    assert res.maps.shape == (4, 40, 40) and res.layer_map.shape == (40, 40)
    assert res.topk_images.shape == (4, 3) and res.topk_locations.shape == (4, 3, 2)
    # Top-K images are those with the largest channel maximum, strongest first.
    model, images, _ = small_setup
    with torch.no_grad():
        peaks = model(images).amax(dim=(2, 3))  # (N, C)
    for u in range(4):
        assert res.topk_images[u].tolist() == peaks[:, u].argsort(descending=True)[:3].tolist()
        np.testing.assert_allclose(res.topk_values[u], peaks[res.topk_images[u], u].numpy(), rtol=1e-6)
    assert 0 < res.maps.max() <= 1 + 1e-6  # averages of maps normalised to max 1
    assert res.config["positions"] == 36 and res.summary["table"]["trf_side"] == 5.0  # 3x3 then 3x3 stride 2


@pytest.mark.parametrize("batch_size", [7, 64])
def test_same_maps_for_any_batch_size(small_setup, batch_size):
    ref = _probe(small_setup, batch_size=1)
    res = _probe(small_setup, batch_size=batch_size)
    np.testing.assert_allclose(res.maps, ref.maps, rtol=1e-5, atol=1e-6)
    assert np.array_equal(res.topk_images, ref.topk_images)


def test_same_maps_for_any_image_order(small_setup):
    model, images, names = small_setup
    ref = _probe(small_setup)
    order = [3, 0, 4, 1, 2]
    res = _probe(small_setup, images=images[order], names=[names[i] for i in order])
    np.testing.assert_array_equal(res.maps, ref.maps)
    assert [[res.images[i] for i in row] for row in res.topk_images] == \
           [[ref.images[i] for i in row] for row in ref.topk_images]


def test_seed_determines_maps(small_setup):
    a, b, c = _probe(small_setup, seed=5), _probe(small_setup, seed=5), _probe(small_setup, seed=6)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert not np.array_equal(a.maps, c.maps)


def test_units_subset_equals_full_layer_rows(small_setup):
    full = _probe(small_setup)
    sub = _probe(small_setup, units=[2, 0])
    np.testing.assert_allclose(sub.maps, full.maps[[2, 0]], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- resume
class _Interrupt(Exception):
    pass


def _stop_after(k):
    def on_image(done, name):
        if done == k:
            raise _Interrupt(name)
    return on_image


@pytest.mark.parametrize("neuron", [None, (1, "center")])
def test_resume_after_interruption_equals_uninterrupted(small_setup, tmp_path, neuron):
    state = tmp_path / "state.npz"
    ref = _probe(small_setup, neuron=neuron)
    with pytest.raises(_Interrupt):
        _probe(small_setup, neuron=neuron, state_path=state, on_image=_stop_after(2))
    seen = []
    res = _probe(small_setup, neuron=neuron, state_path=state, on_image=lambda d, n: seen.append(n))
    assert seen == ["im2", "im3", "im4"]  # the first two images were not redone
    np.testing.assert_array_equal(res.maps, ref.maps)
    np.testing.assert_array_equal(res.topk_images, ref.topk_images)
    if neuron is not None:
        np.testing.assert_array_equal(res.image_maps, ref.image_maps)


def test_resume_state_from_other_settings_is_refused(small_setup, tmp_path):
    state = tmp_path / "state.npz"
    with pytest.raises(_Interrupt):
        _probe(small_setup, state_path=state, on_image=_stop_after(1))
    with pytest.raises(ValueError, match=r"written by a different probe \(patch: \[5, 5\] there, \[3, 3\] here\)"):
        _probe(small_setup, state_path=state, patch=3)


def test_unreadable_state_is_refused(small_setup, tmp_path):
    state = tmp_path / "state.npz"
    state.write_bytes(b"junk")
    with pytest.raises(ValueError, match="unreadable.*delete it"):
        _probe(small_setup, state_path=state)


# --------------------------------------------------------------------------- bad input
def test_unknown_layer_lists_close_matches(small_setup):
    model, images, _ = small_setup
    with pytest.raises(ValueError, match=r"unknown layer .* '33' \(did you mean: 3"):
        probe_occlusion(model, "33", images, top_k=1)


def test_patch_larger_than_image(small_setup):
    with pytest.raises(ValueError, match="patch 21x21 is larger than the 20x20 image"):
        _probe(small_setup, patch=21)


def test_stride_below_one(small_setup):
    with pytest.raises(ValueError, match=r"stride=0; expected an integer >= 1"):
        _probe(small_setup, stride=0)


def test_stride_past_patch(small_setup):
    with pytest.raises(ValueError, match="stride 6x6 is larger than the 5x5 patch"):
        _probe(small_setup, stride=6)


def test_top_k_larger_than_image_count(small_setup):
    with pytest.raises(ValueError, match=r"top_k=6 but there are 5 images; expected 1 <= top_k <= 5"):
        _probe(small_setup, top_k=6)


def test_nan_activations_name_the_layer(small_setup):
    model = _cnn()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '3' gives NaN or inf activations on image 'image_00000'"):
        probe_occlusion(model, "3", small_setup[1], top_k=1)


def test_unknown_noise(small_setup):
    with pytest.raises(ValueError, match=r"unknown noise kind 'gauss' \(did you mean: gaussian\?\)"):
        _probe(small_setup, noise="gauss")


def test_unknown_engine(small_setup):
    with pytest.raises(ValueError, match=r"unknown engine 'ful' \(did you mean: full\?\)"):
        _probe(small_setup, engine="ful")


def test_units_out_of_range(small_setup):
    with pytest.raises(ValueError, match=r"units \[4\] are not channels of layer '3' with 4 channels"):
        _probe(small_setup, units=[0, 4])


def test_neuron_out_of_range(small_setup):
    with pytest.raises(ValueError, match=r"neuron \(0, 9, 0\) is outside layer '3' of shape \(C, h, w\) = \(4, 8, 8\)"):
        _probe(small_setup, neuron=(0, 9, 0))


def test_neuron_malformed(small_setup):
    with pytest.raises(ValueError, match=r"neuron=\(0, 1\); expected \(c, y, x\)"):
        _probe(small_setup, neuron=(0, 1))


def test_bad_batch_size(small_setup):
    with pytest.raises(ValueError, match="batch_size=0; expected an integer >= 1"):
        _probe(small_setup, batch_size=0)


def test_images_wrong_shape(small_setup):
    with pytest.raises(ValueError, match=r"images of shape \(3, 20, 20\); expected a float tensor \(N, 3, H, W\)"):
        probe_occlusion(small_setup[0], "3", torch.zeros(3, 20, 20), top_k=1)


def test_duplicate_names(small_setup):
    with pytest.raises(ValueError, match="image name 'a' appears more than once"):
        _probe(small_setup, names=["a", "b", "a", "c", "d"])


def test_incremental_engine_gives_the_full_engine_maps(small_setup):
    full = _probe(small_setup, engine="full")
    inc = _probe(small_setup, engine="incremental")
    np.testing.assert_allclose(inc.maps, full.maps, rtol=1e-4, atol=1e-5)
    assert inc.config["engine_used"] == "incremental" and full.config["engine_used"] == "full"


def test_select_units_specs():
    from erf.occlusion import select_units

    assert select_units("all", 4) == [0, 1, 2, 3] and select_units(None, 2) == [0, 1]
    assert select_units("3, 1", 4) == [3, 1] and select_units([2], 4) == [2]
    picked = select_units("3-random", 10, seed=1)
    assert len(set(picked)) == 3 and picked == sorted(picked) and picked == select_units("3-random", 10, seed=1)
    assert select_units("10-random", 10) == list(range(10))


def test_select_units_bad_random_count():
    from erf.occlusion import select_units

    with pytest.raises(ValueError, match=r"units='11-random'; expected N-random with 1 <= N <= 10"):
        select_units("11-random", 10)


def test_select_units_bad_spec():
    from erf.occlusion import select_units

    with pytest.raises(ValueError, match=r"units='a,b'; expected 'all', a comma list"):
        select_units("a,b", 10)


_KILLED_CHILD = """
import sys, torch
from torch import nn
from erf.occlusion import probe_occlusion
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU()).eval()
images = torch.randn(5, 3, 20, 20, generator=torch.Generator().manual_seed(1))
def on_image(done, name):
    print(done, flush=True)
    if done == 2:
        sys.stdin.readline()  # wait here until the parent kills us
probe_occlusion(model, "3", images, patch=5, stride=3, top_k=3, state_path=sys.argv[1], on_image=on_image)
"""


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    state = tmp_path / "state.npz"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(state)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "1"
        assert child.stdout.readline().strip() == "2"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and state.is_file()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU()).eval()
    images = torch.randn(5, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    seen = []
    resumed = probe_occlusion(model, "3", images, patch=5, stride=3, top_k=3, state_path=state,
                              on_image=lambda d, n: seen.append(n))
    fresh = probe_occlusion(model, "3", images, patch=5, stride=3, top_k=3)
    assert seen == ["image_00002", "image_00003", "image_00004"]
    np.testing.assert_array_equal(resumed.maps, fresh.maps)
    np.testing.assert_array_equal(resumed.topk_images, fresh.topk_images)
