import math

import pytest
import torch
import torch.nn.functional as F

from parsenet.layers import L2Norm, SumFusion, Unpool, Upsample, bilinear_kernel


def _pixels(*vectors):
    """(1, C, 1, P): one pixel per given channel vector."""
    return torch.tensor(vectors, dtype=torch.float64).T[None, :, None, :]


# --- L2Norm -----------------------------------------------------------------


def test_l2norm_hand_computed():
    # Pixels (3, 4) and (0, 5): norms 5 and 5; times the initial scale 10.
    norm = L2Norm(2).double()
    y = norm(_pixels([3.0, 4.0], [0.0, 5.0]))
    assert torch.allclose(y[0, :, 0, :].T, torch.tensor([[6.0, 8.0], [0.0, 10.0]], dtype=torch.float64))


def test_l2norm_per_channel_scale():
    norm = L2Norm(2, scale_init=1.0).double()
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([2.0, -1.0]))
    y = norm(_pixels([3.0, 4.0]))
    assert torch.allclose(y.flatten(), torch.tensor([1.2, -0.8], dtype=torch.float64))


def test_l2norm_eps_inside_the_square_root():
    # x / sqrt(sum x^2 + 1e-10): for x = (1e-5, 0) the sum equals eps, so the result is
    # 1e-5 / sqrt(2e-10) = 1/sqrt(2) per unit scale. F.normalize's max(norm, eps) would give 1.
    norm = L2Norm(2, scale_init=1.0).double()
    y = norm(_pixels([1e-5, 0.0], [0.0, 0.0]))
    assert y[0, 0, 0, 0].item() == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert y[0, :, 0, 1].tolist() == [0.0, 0.0]  # an all-zero pixel stays zero, no NaN


def test_l2norm_gradient_at_zero_is_finite():
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    L2Norm(3)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_l2norm_scale_receives_its_gradient():
    # d/d scale_c of sum(y) = x_c / ||x||, summed over pixels: (3/5 + 0, 4/5 + 1).
    norm = L2Norm(2).double()
    norm(_pixels([3.0, 4.0], [0.0, 2.0])).sum().backward()
    assert torch.allclose(norm.scale.grad, torch.tensor([0.6, 1.8], dtype=torch.float64))


def test_l2norm_fixed_scale_is_a_buffer_with_the_same_key():
    fixed, learned = L2Norm(4, learn_scale=False), L2Norm(4)
    assert list(fixed.parameters()) == []
    assert list(fixed.state_dict()) == list(learned.state_dict()) == ["scale"]
    x = torch.randn(2, 4, 3, 5)
    assert torch.allclose(fixed(x), learned(x))


def test_l2norm_output_norm_is_the_scale():
    x = torch.randn(2, 6, 4, 5) * 100
    y = L2Norm(6, scale_init=3.0)(x)
    assert torch.allclose(y.norm(dim=1), torch.full((2, 4, 5), 3.0), rtol=1e-5)


def test_l2norm_rejects_no_channels():
    with pytest.raises(ValueError, match="at least 1 channel, got 0"):
        L2Norm(0)


def test_l2norm_rejects_non_positive_eps():
    with pytest.raises(ValueError, match="eps must be > 0, got 0"):
        L2Norm(3, eps=0)


# --- Unpool and SumFusion ---------------------------------------------------


def test_unpool_tiles_and_sums_gradients():
    g = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).requires_grad_()
    y = Unpool()(g, torch.zeros(1, 2, 3, 4))
    assert y.shape == (1, 2, 3, 4)
    assert torch.equal(y[0, 1], torch.full((3, 4), -2.0))
    y.sum().backward()
    assert g.grad.flatten().tolist() == [12.0, 12.0]  # one unit per tiled cell


def test_sum_fusion_hand_computed():
    a, b, c = (torch.full((1, 2, 1, 1), v) for v in (1.0, 2.0, 4.0))
    assert SumFusion()(a, b, c).flatten().tolist() == [7.0, 7.0]
    assert SumFusion()(a) is a


# --- Upsample ---------------------------------------------------------------


def test_bilinear_kernel_hand_computed():
    # stride 2: taps 1 - |k - 1.5| / 2 = (1/4, 3/4, 3/4, 1/4).
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear_kernel(2), taps[:, None] * taps[None, :])


def test_upsample_hand_computed_row():
    # Cells (0, 4) at stride 2 are centred on pixels 0.5 and 2.5; pixels 0..3 sit at
    # source coordinates -0.25, 0.25, 0.75, 1.25 -> clamped interpolation 0, 1, 3, 4.
    x = torch.tensor([0.0, 4.0]).view(1, 1, 1, 2)
    y = Upsample(1, stride=2)(x, torch.zeros(1, 3, 2, 4))
    assert torch.allclose(y[0, 0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))
    assert torch.allclose(y[0, 0, 1], y[0, 0, 0])


@pytest.mark.parametrize("stride", [2, 8, 32])
@pytest.mark.parametrize("learnable", [False, True])
def test_upsample_equals_interpolate_on_whole_cells(stride, learnable):
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    up = Upsample(3, stride=stride, learnable=learnable).double()
    ref = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    assert torch.allclose(up(x, ref), ref, atol=1e-12)


@pytest.mark.parametrize("extra", [(1, 7), (7, 3)])
def test_upsample_odd_sizes_clamp_beyond_the_last_cell(extra):
    s = 8
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    ref = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)  # (1, 2, 24, 32)
    H, W = 24 + extra[0], 32 + extra[1]
    y = Upsample(2, stride=s).double()(x, torch.zeros(1, 3, H, W))
    assert y.shape == (1, 2, H, W)
    assert torch.allclose(y[..., :24, :32], ref, atol=1e-12)
    assert torch.allclose(y[..., 24:, :32], ref[..., -1:, :].expand(-1, -1, extra[0], -1), atol=1e-12)
    assert torch.allclose(y[..., :24, 32:], ref[..., :, -1:].expand(-1, -1, -1, extra[1]), atol=1e-12)


def test_upsample_learnable_has_weights_and_fixed_has_none():
    assert [p.shape for p in Upsample(5, stride=8, learnable=True).parameters()] == [(5, 5, 16, 16)]
    assert list(Upsample(5, stride=8).parameters()) == []
    assert list(Upsample(5, stride=8).state_dict()) == []  # the fixed kernel is rebuilt, not stored


def test_upsample_learnable_receives_gradient():
    up = Upsample(2, stride=4, learnable=True)
    up(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 13, 12)).square().sum().backward()
    assert up.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [1, 3])
def test_upsample_rejects_odd_stride(stride):
    with pytest.raises(ValueError, match=f"even number >= 2, got {stride}"):
        Upsample(2, stride=stride)


def test_bilinear_kernel_rejects_zero_stride():
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        bilinear_kernel(0)
