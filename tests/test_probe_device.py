"""The branches that exist for CUDA, selected on the CPU: layout, the probe's private model copy, batched
gathers, the noise drawn once per probe, the top-K on the device, the state clock and the auto batch size."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from erf import _probe
from erf.graph import truncate
from erf.incremental import IncrementalOcclusion
from erf.occlusion import (FullReinference, OcclusionConfig, _batch_for_memory, _position_seed, make_patches,
                           occluder_positions, probe_occlusion)
from erf.result import ERFResult


def _net() -> nn.Module:
    """Conv, BatchNorm, max-pool, a residual add and a global-context mean: every kind of node the engine caches."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
            self.branch = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(6, 5, 3, padding=1)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.branch(x)
            return self.head(x + x.mean(dim=(2, 3), keepdim=True))

    torch.manual_seed(0)
    net = Net()
    net.stem[1].running_mean.uniform_(-1, 1)
    return net.eval()


IMAGES = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(1))
KW = dict(patch=5, stride=3, top_k=2, seed=2, batch_size=7)


def _same(a: ERFResult, b: ERFResult, exact_maps: bool = False) -> None:
    np.testing.assert_array_equal(a.topk_images, b.topk_images)
    np.testing.assert_array_equal(a.topk_locations, b.topk_locations)
    if exact_maps:
        np.testing.assert_array_equal(a.maps, b.maps)
    else:
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- layout and the model copy
@pytest.mark.parametrize("engine", ["full", "incremental"])
@pytest.mark.parametrize("neuron", [None, (1, "center")])
def test_channels_last_equals_contiguous(engine, neuron):
    model = _net()
    kw = dict(KW, engine=engine, neuron=neuron)
    plain = probe_occlusion(model, "head", IMAGES, memory_format="contiguous", **kw)
    last = probe_occlusion(model, "head", IMAGES, memory_format="channels_last", **kw)
    _same(plain, last)
    assert last.config["memory_format"] == "channels_last" and plain.config["memory_format"] == "contiguous"


def test_probe_leaves_the_callers_model_as_it_was():
    model = _net()
    model.train()
    model.branch.eval()  # a mixed state must come back mixed
    modes = {name: m.training for name, m in model.named_modules()}
    params = {name: (p.data_ptr(), p.device, p.is_contiguous()) for name, p in model.named_parameters()}
    x = IMAGES[:1]
    model.eval()
    before = model(x)
    model.train()
    model.branch.eval()
    probe_occlusion(model, "head", IMAGES, engine="incremental", memory_format="channels_last", **KW)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: (p.data_ptr(), p.device, p.is_contiguous()) for name, p in model.named_parameters()} == params
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(model.eval()(x), before, rtol=0, atol=0)  # still runs, same weights


def test_private_copy_of_the_cut_is_in_eval_mode():
    """A deep copy of an fx GraphModule comes back in training mode (the CUDA-only failure of issue 18)."""
    cut = truncate(_net(), "head")
    assert any(m.training for m in copy.deepcopy(cut).modules())  # what the old CUDA branch ran into
    body = _probe.private_body(_net(), "head", torch.device("cpu"), torch.channels_last)
    assert not any(m.training for m in body.modules())
    assert IncrementalOcclusion.supports(body) == (True, "")
    assert body.get_submodule("body.stem.0").weight.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- vectorised work
def test_noise_is_the_per_position_draw():
    """The bank drawn once per probe holds exactly the values of one generator per position."""
    image = torch.randn(1, 3, 16, 16)
    got = make_patches(image, torch.tensor([0, 5, 9]), 3, seed=7)  # (3, 3, 3, 3)
    flat = image.reshape(3, -1).double()
    lo, hi = flat.min(1).values, flat.max(1).values
    for row, i in zip(got, [0, 5, 9]):
        unit = torch.rand(3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(_position_seed(7, i)))
        want = (lo.view(3, 1, 1) + (hi - lo).view(3, 1, 1) * unit).float()
        assert torch.equal(row, want)


def test_vectorised_paste_equals_slice_paste():
    image = torch.randn(1, 3, 12, 12)
    positions = occluder_positions(12, 4, 3)  # (P, 2)
    patches = torch.randn(len(positions), 3, 4, 4)
    for fmt in (torch.contiguous_format, torch.channels_last):
        got = FullReinference(nn.Identity(), image, memory_format=fmt)(positions, patches)  # (P, 3, 12, 12)
        for p, (y, x) in enumerate(positions.tolist()):
            want = image[0].clone()
            want[:, y:y + 4, x:x + 4] = patches[p]
            assert torch.equal(got[p], want)


@pytest.mark.parametrize("layer", ["head", "stem.3", "branch.1"])
def test_batched_gathers_equal_slice_copies(layer):
    body = truncate(_net(), layer)
    image = IMAGES[:1]
    positions = occluder_positions(20, 5, 3)[::3]  # (P, 2)
    patches = torch.randn(len(positions), 3, 5, 5)
    slices = IncrementalOcclusion(body, image, gather="slices")(positions, patches)
    batched = IncrementalOcclusion(body, image, gather="batched")(positions, patches)
    torch.testing.assert_close(batched, slices, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(slices, FullReinference(body, image)(positions, patches), rtol=1e-4, atol=1e-5)


def test_incremental_cache_keeps_only_what_is_read():
    engine = IncrementalOcclusion(truncate(_net(), "head"), IMAGES[:1])
    kept = [n.name for n, v in engine._clean.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"]
    dropped = [n.name for n, v in engine._clean.items() if isinstance(v, torch.Tensor) and v.device.type == "meta"]
    assert "stem_1" in dropped and "branch_0" in dropped  # a ReLU's input and a conv's output: nobody reads them
    assert "add" in kept and "mean" in kept  # the global pool's input and output are read
    with pytest.raises(ValueError, match="gather='loop'; expected one of: auto, slices, batched"):
        IncrementalOcclusion(truncate(_net(), "head"), IMAGES[:1], gather="loop")


def test_topk_on_the_device_keeps_order_and_ties():
    from erf.occlusion import _TopK

    top = _TopK(1, 3, (1, 1))
    for value, rank in [(1.0, 4), (2.0, 3), (1.0, 1), (5.0, 2), (1.0, 0)]:
        top.push(np.array([value]), rank, np.array([[rank, 0]]), np.full((1, 1, 1), value, np.float32))
    got = top.arrays()
    assert got["values"].tolist() == [[5.0, 2.0, 1.0]] and got["ranks"].tolist() == [[2, 3, 0]]
    assert got["locations"][0, :, 0].tolist() == [2, 3, 0]


# --------------------------------------------------------------------------- configuration, batch size, state
def test_config_object_equals_keywords():
    model = _net()
    by_keywords = probe_occlusion(model, "head", IMAGES, **KW)
    by_config = probe_occlusion(model, "head", IMAGES, config=OcclusionConfig(**KW))
    _same(by_keywords, by_config, exact_maps=True)
    assert by_keywords.config == by_config.config


def test_config_names_bad_values():
    with pytest.raises(ValueError, match=r"unknown memory format 'channel_last' \(did you mean: channels_last\?\)"):
        OcclusionConfig(memory_format="channel_last")
    with pytest.raises(ValueError, match=r"batch_size='big'; expected an integer >= 1 or 'auto'"):
        OcclusionConfig(batch_size="big")


def test_batch_size_auto_equals_a_fixed_batch():
    model = _net()
    auto = probe_occlusion(model, "head", IMAGES, **dict(KW, batch_size="auto"))
    fixed = probe_occlusion(model, "head", IMAGES, **KW)
    _same(auto, fixed)  # batches hold other crops: float round-off only
    assert auto.config["batch_size"] == 36 and auto.config["batch_size_auto"] is True  # the whole 6x6 grid


def test_batch_for_memory_arithmetic():
    assert _batch_for_memory(10e9, 20e6, 4096) == 296  # 0.6 * 10 GB / 20 MB = 300, down to a multiple of 8
    assert _batch_for_memory(1e6, 20e6, 4096) == 1  # not even one fits: one at a time
    assert _batch_for_memory(1e12, 1, 64) == 64  # capped by the grid


def test_state_is_saved_on_the_clock_and_at_the_end(tmp_path):
    clock = _probe.StateClock(tmp_path / "s.npz", {"k": 1}, every=3600)
    arrays = {"a": np.zeros(2)}
    assert not clock.tick(["x"], lambda: arrays) and not (tmp_path / "s.npz").exists()  # not yet time
    assert clock.tick(["x"], lambda: arrays, force=True)
    assert not clock.tick(["x"], lambda: arrays, force=True)  # nothing new to save
    assert _probe.load_state(tmp_path / "s.npz", {"k": 1})[0] == ["x"]
    assert _probe.StateClock(tmp_path / "t.npz", {}, every=0).tick(["x"], lambda: arrays)  # 0: every image
    with pytest.raises(ValueError, match="state_every=-1; expected a number of seconds >= 0"):
        _probe.StateClock(None, {}, every=-1)
    # A probe with a long clock writes its state once, at the end, and a rerun resumes all of it.
    state = tmp_path / "probe.npz"
    first = probe_occlusion(_net(), "head", IMAGES, state_path=state, state_every=3600, **KW)
    assert _probe.load_state(state, _identity_of(state))[0] == [f"image_{i:05d}" for i in range(4)]
    seen = []
    again = probe_occlusion(_net(), "head", IMAGES, state_path=state, state_every=3600,
                            on_image=lambda d, n: seen.append(n), **KW)
    assert seen == []
    _same(first, again, exact_maps=True)


def _identity_of(path):
    import json

    with np.load(path) as z:
        return json.loads(str(z["meta"]))["identity"]
