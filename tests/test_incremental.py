"""Incremental occlusion inference equals full re-inference (erf.incremental)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from erf.graph import truncate
from erf.incremental import IncrementalOcclusion, MacCount, _Axis, _project


def occlude(image: torch.Tensor, positions: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """(P, 3, H, W) copies of the image with patch p pasted at positions[p]: the full re-inference input."""
    ph, pw = patches.shape[-2:]
    batch = image.repeat(len(positions), 1, 1, 1)
    for p, (y, x) in enumerate(positions.tolist()):
        batch[p, :, y:y + ph, x:x + pw] = patches[p]
    return batch


def border_positions(h: int, w: int, ph: int, pw: int, extra: int = 3, seed: int = 0) -> torch.Tensor:
    """The four corners, the four edge midpoints, and a few random interior positions."""
    ys, xs = [0, (h - ph) // 2, h - ph], [0, (w - pw) // 2, w - pw]
    pos = [(y, x) for y in ys for x in xs]
    g = torch.Generator().manual_seed(seed)
    pos += [(int(torch.randint(0, h - ph + 1, (), generator=g)), int(torch.randint(0, w - pw + 1, (), generator=g)))
            for _ in range(extra)]
    return torch.tensor(pos)


def assert_exact(body, image, positions, patches, **kw) -> torch.Tensor:
    engine = IncrementalOcclusion(body, image, **kw)
    got = engine(positions, patches)
    with torch.inference_mode():
        want = body(occlude(image, positions, patches))
    assert got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-12)
    err = ((got - want).abs().max() / scale).item()
    assert err < 1e-4, f"max error {err:.2e} relative to the activation scale"
    return got


# ----------------------------------------------------------------------------- geometry by hand

@pytest.mark.parametrize(
    "axis, lo, hi, want",
    [
        (_Axis(3, 1, 1, 1, 8, 8), 5, 6, (4, 7)),  # 3x3 "same": one pixel spreads one each side
        (_Axis(3, 1, 1, 1, 8, 8), 0, 2, (0, 3)),  # clipped at the top border
        (_Axis(2, 2, 0, 1, 8, 4), 5, 6, (2, 3)),  # 2x2 pool stride 2
        (_Axis(3, 2, 1, 1, 8, 4), 2, 3, (1, 2)),  # stride 2: rows 2 feeds outputs 1 (reads 1..3) only
        (_Axis(3, 2, 1, 1, 8, 4), 3, 4, (1, 3)),  # row 3 feeds outputs 1 (1..3) and 2 (3..5)
        (_Axis(3, 1, 2, 2, 8, 8), 4, 5, (2, 7)),  # dilation 2, pad 2: taps at o-2, o, o+2
        (_Axis(1, 2, 0, 1, 8, 4), 1, 2, (0, 0)),  # 1x1 stride 2: odd rows are never read -> empty
        (_Axis(2, 2, 0, 1, 7, 4), 6, 7, (3, 4)),  # ceil_mode: the last window overhangs the border
    ],
)
def test_project_hand_cases(axis, lo, hi, want):
    o_lo, o_hi = _project(torch.tensor([lo]), torch.tensor([hi]), axis)
    got = (int(o_lo), int(o_hi))
    if want[1] == want[0]:
        assert got[1] == got[0]
    else:
        assert got == want


def test_macs_single_conv_by_hand():
    # 3x3 conv, 3 -> 5 channels, 8x8 "same": 180 MACs per output pixel.
    body = truncate(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)), "0")
    engine = IncrementalOcclusion(body, torch.rand(1, 3, 8, 8))
    macs = engine.macs(torch.tensor([[3, 3], [0, 0]]), (1, 1))
    per_pixel = 5 * 3 * 9
    assert macs.full == 2 * 64 * per_pixel
    assert macs.incremental == (9 + 4) * per_pixel  # 3x3 in the middle, 2x2 at the corner
    assert macs.ratio == pytest.approx(128 / 13)


def test_single_conv_changes_only_the_projective_field():
    body = truncate(nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)), "0")
    image = torch.rand(1, 3, 10, 10)
    engine = IncrementalOcclusion(body, image)
    out = engine(torch.tensor([[4, 2]]), torch.rand(1, 3, 2, 2) + 5)  # patch rows 4-5, cols 2-3
    changed = (out - engine.clean).abs().amax(1)[0] > 0  # (10, 10)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[3:7, 1:5] = True
    assert torch.equal(changed, want)


# ----------------------------------------------------------------------------- random CNNs

class _Net(nn.Module):
    """A small CNN drawn from a seed: strides, padding, dilation, groups, ceil-mode pools, add, cat."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pick = lambda *xs: xs[int(torch.randint(len(xs), (), generator=g))]  # noqa: E731
        self.stem = nn.Conv2d(3, 8, pick(3, 5), stride=pick(1, 2), padding=pick(0, 1, 2), dilation=pick(1, 2))
        self.bn = nn.BatchNorm2d(8)
        self.pool = pick(
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
            nn.AvgPool2d(2),
        )
        dilation = pick(1, 2)
        self.a = nn.Conv2d(8, 8, 3, padding=dilation, dilation=dilation, groups=pick(1, 2))  # keeps the size
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)
        self.down = nn.Conv2d(8, 6, 3, stride=2, padding=pick(0, 1))
        self.act = pick(nn.ReLU(inplace=True), nn.LeakyReLU(0.1), nn.GELU())
        with torch.no_grad():  # non-trivial BN statistics
            self.bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            self.bn.running_var.uniform_(0.5, 2.0, generator=g)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.stem(x))))
        x = self.act(self.a(x)) + x  # residual add
        x = torch.cat([self.b(x), F.relu(self.c(x))], dim=1)  # concat over channels
        return self.down(x * 0.5)


@pytest.mark.parametrize("seed", range(8))
def test_random_cnns_match_full_reinference(seed):
    torch.manual_seed(seed)
    body = truncate(_Net(seed), "down")
    image = torch.randn(1, 3, 37, 41)  # odd sizes exercise ceil_mode and border windows
    positions = border_positions(37, 41, 5, 7, extra=4, seed=seed)
    assert_exact(body, image, positions, torch.rand(len(positions), 3, 5, 7) * 4 - 2)


# ----------------------------------------------------------------------------- torchvision models

@pytest.mark.parametrize(
    "builder, layer, size",
    [
        (torchvision.models.vgg16, "features.29", 64),  # conv5_3 after ReLU
        (torchvision.models.resnet18, "layer4", 64),
        (torchvision.models.resnet18, "fc", 64),  # avgpool -> flatten -> Linear: the full fallback
        (torchvision.models.resnet50, "layer3", 64),
    ],
)
def test_torchvision_models_match_full_reinference(builder, layer, size):
    body = truncate(builder(), layer)
    image = torch.randn(1, 3, size, size)
    positions = border_positions(size, size, 11, 11, extra=2)
    assert_exact(body, image, positions, torch.rand(len(positions), 3, 11, 11))


def test_vgg16_incremental_needs_far_fewer_macs():
    # Zhou protocol at 224 px: the projective fields make conv5_3 about 11x cheaper in MACs.
    body = truncate(torchvision.models.vgg16(), "features.29")
    engine = IncrementalOcclusion(body, torch.zeros(1, 3, 224, 224))
    grid = torch.arange(0, 224 - 11 + 1, 3)
    positions = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)  # (5184, 2)
    macs = engine.macs(positions, (11, 11))
    convs = [(3, 64, 224), (64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56), (256, 256, 56),
             (256, 256, 56), (256, 512, 28), (512, 512, 28), (512, 512, 28)] + [(512, 512, 14)] * 3
    assert macs.full == 5184 * sum(cin * cout * 9 * size * size for cin, cout, size in convs)
    assert 8 < macs.ratio < 14


# ----------------------------------------------------------------------------- ParseNet


@pytest.mark.parametrize("context", ["global", "none"])
@pytest.mark.parametrize("layer", ["fc7", "score"])  # score: fc7 fused with pool6 (global) or alone (none)
def test_parsenet_matches_full_reinference(context, layer):
    model_mod = pytest.importorskip("parsenet.model", reason="parsenet/model.py is not written yet")
    from parsenet.config import ParseNetConfig

    model = model_mod.build_model(ParseNetConfig(width=1 / 8, batch_norm=True, context=context)).eval()
    body = truncate(model, layer)
    image = torch.randn(1, 3, 64, 64)
    positions = border_positions(64, 64, 11, 11, extra=2)
    assert_exact(body, image, positions, torch.rand(len(positions), 3, 11, 11))


# ----------------------------------------------------------------------------- other node kinds

class _Heads(nn.Module):
    """Global average pooling three ways, an SE-style gate, and a channel-wise L2 norm with a scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.scale = nn.Parameter(torch.full((6,), 10.0))

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.gap(x))  # (B, 6, 1, 1): changes everywhere -> full fallback
        normed = self.scale.view(1, -1, 1, 1) * F.normalize(x, dim=1)  # ParseNet's L2 norm
        pooled = x.mean((2, 3), keepdim=True) + F.adaptive_avg_pool2d(normed, 1)
        return torch.cat([normed, x * gate, pooled.expand_as(x)], dim=1)


def test_global_pooling_gates_and_l2norm_match_full():
    body = truncate(_Heads(), "cat")
    image = torch.randn(1, 3, 20, 24)
    positions = border_positions(20, 24, 4, 4)
    assert_exact(body, image, positions, torch.rand(len(positions), 3, 4, 4))


def test_global_average_pool_is_updated_by_the_change_in_sum():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1)), "1")
    image = torch.randn(1, 3, 16, 16)
    positions = border_positions(16, 16, 5, 5)
    got = assert_exact(body, image, positions, torch.rand(len(positions), 3, 5, 5))
    assert got.shape == (len(positions), 4, 1, 1)


def test_change_that_falls_between_strided_taps_leaves_the_output_clean():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 1, stride=2)), "0")
    engine = IncrementalOcclusion(body, torch.rand(1, 3, 8, 8))
    out = engine(torch.tensor([[1, 3]]), torch.rand(1, 3, 1, 1))  # odd row and column: never read
    assert torch.equal(out, engine.clean)


# ----------------------------------------------------------------------------- invariance

def test_same_result_for_any_batch_split_and_fallback_threshold():
    body = truncate(torchvision.models.resnet18(), "layer3")
    image = torch.randn(1, 3, 64, 64)
    positions = border_positions(64, 64, 11, 11, extra=5)
    patches = torch.rand(len(positions), 3, 11, 11)
    engine = IncrementalOcclusion(body, image)
    whole = engine(positions, patches)
    chunks = torch.cat([engine(positions[i:i + 3], patches[i:i + 3]) for i in range(0, len(positions), 3)])
    single = torch.cat([engine(positions[i:i + 1], patches[i:i + 1]) for i in range(len(positions))])
    always_full = IncrementalOcclusion(body, image, full_above=1e-9)(positions, patches)
    torch.testing.assert_close(chunks, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(always_full, whole, rtol=1e-5, atol=1e-5)


def test_inputs_and_cache_are_not_modified():
    body = truncate(nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)), "2")
    image = torch.randn(1, 3, 12, 12)
    patches = torch.randn(2, 3, 3, 3)
    image0, patches0 = image.clone(), patches.clone()
    engine = IncrementalOcclusion(body, image)
    positions = torch.tensor([[0, 0], [9, 9]])
    first = engine(positions, patches)
    second = engine(positions, patches)
    assert torch.equal(image, image0) and torch.equal(patches, patches0)
    assert torch.equal(first, second)
    assert_exact(body, image, positions, patches)


def test_no_positions_gives_an_empty_batch():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 3)), "0")
    engine = IncrementalOcclusion(body, torch.rand(1, 3, 8, 8))
    out = engine(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 3, 2, 2))
    assert out.shape == (0, 4, 6, 6)


# ----------------------------------------------------------------------------- supports and bad input

class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.conv(x)


def test_supports_says_no_for_an_untraceable_model():
    with pytest.warns(UserWarning, match="not fx-traceable"):
        body = truncate(_Untraceable(), "conv")
    ok, why = IncrementalOcclusion.supports(body)
    assert not ok and "not fx-traceable" in why
    with pytest.raises(ValueError, match="not fx-traceable"):
        IncrementalOcclusion(body, torch.rand(1, 3, 8, 8))


def test_supports_says_no_for_a_plain_module():
    ok, why = IncrementalOcclusion.supports(nn.Conv2d(3, 4, 3))
    assert not ok and "erf.graph.truncate" in why


def test_supports_says_no_in_training_mode():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout()), "1").train()
    ok, why = IncrementalOcclusion.supports(body)
    assert not ok and "training mode" in why


def test_supports_says_yes_for_resnet():
    assert IncrementalOcclusion.supports(truncate(torchvision.models.resnet18(), "layer2")) == (True, "")


@pytest.fixture
def small_engine():
    return IncrementalOcclusion(truncate(nn.Sequential(nn.Conv2d(3, 4, 3)), "0"), torch.rand(1, 3, 8, 8))


def test_position_outside_the_image_is_refused(small_engine):
    with pytest.raises(ValueError, match=r"position \(6, 0\) puts the 3x3 patch outside the 8x8 image"):
        small_engine(torch.tensor([[6, 0]]), torch.rand(1, 3, 3, 3))


def test_negative_position_is_refused(small_engine):
    with pytest.raises(ValueError, match=r"position \(0, -1\)"):
        small_engine(torch.tensor([[0, -1]]), torch.rand(1, 3, 3, 3))


def test_positions_of_wrong_shape_are_refused(small_engine):
    with pytest.raises(ValueError, match=r"positions must have shape \(P, 2\), got \(2, 3\)"):
        small_engine(torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3, 3, 3))


def test_float_positions_are_refused(small_engine):
    with pytest.raises(TypeError, match="positions must be integers, got torch.float32"):
        small_engine(torch.zeros(1, 2), torch.rand(1, 3, 3, 3))


def test_patches_of_wrong_shape_are_refused(small_engine):
    with pytest.raises(ValueError, match=r"patches must have shape \(2, 3, ph, pw\), got \(1, 3, 3, 3\)"):
        small_engine(torch.zeros(2, 2, dtype=torch.long), torch.rand(1, 3, 3, 3))


def test_patch_larger_than_the_image_is_refused(small_engine):
    with pytest.raises(ValueError, match="patch 9x9 is larger than the 8x8 image"):
        small_engine(torch.zeros(1, 2, dtype=torch.long), torch.rand(1, 3, 9, 9))


def test_image_of_wrong_shape_is_refused():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 3)), "0")
    with pytest.raises(ValueError, match=r"image must have shape \(1, C, H, W\), got \(2, 3, 8, 8\)"):
        IncrementalOcclusion(body, torch.rand(2, 3, 8, 8))


def test_fallback_fraction_out_of_range_is_refused():
    body = truncate(nn.Sequential(nn.Conv2d(3, 4, 3)), "0")
    with pytest.raises(ValueError, match=r"full_above must be in \(0, 1\], got 1.5"):
        IncrementalOcclusion(body, torch.rand(1, 3, 8, 8), full_above=1.5)


def test_mac_count_ratio():
    assert MacCount(full=100, incremental=8).ratio == 12.5
