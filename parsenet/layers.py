"""ParseNet's layers: L2 normalisation with a learned scale, unpooling, score fusion, upsampling.

Each is fx-traceable (no data-dependent Python control flow), so ``erf.graph``
can cut a model at any of them and ``erf.rf`` can trace them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["L2Norm", "Unpool", "SumFusion", "Upsample", "bilinear_kernel"]


class L2Norm(nn.Module):
    """Per-pixel L2 normalisation across channels, times a per-channel scale (ParseNet Sec. 3.2).

    ``y[:, c] = scale[c] * x[:, c] / sqrt(sum_c' x[:, c']^2 + eps)``. Features of
    different layers differ in magnitude by orders (ParseNet Fig. 3), so without it
    the largest swamps the others when they are fused; the scale, initialised to 10,
    lets the network restore a useful magnitude.

    Args:
        channels: C, the number of channels (and of scale entries).
        scale_init: initial value of every scale entry (ParseNet: 10).
        learn_scale: a learned ``nn.Parameter`` (default) or a fixed buffer, for the
            paper's ablation; both are saved under the key ``scale``.
        eps: added to the squared norm inside the square root, so an all-zero
            pixel (common after ReLU) maps to zero instead of NaN.

    Shape:
        (B, C, H, W) -> (B, C, H, W).

    Example:
        >>> norm = L2Norm(2)
        >>> norm(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)).flatten()
        tensor([6., 8.], grad_fn=<ViewBackward0>)
    """

    def __init__(self, channels: int, *, scale_init: float = 10.0, learn_scale: bool = True, eps: float = 1e-10):
        super().__init__()
        if channels < 1:
            raise ValueError(f"L2Norm needs at least 1 channel, got {channels}")
        if not eps > 0:
            raise ValueError(f"L2Norm eps must be > 0, got {eps}")
        scale = torch.full((channels,), float(scale_init))
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).add(self.eps).sqrt()  # (B, 1, H, W): one norm per pixel
        return self.scale.view(1, -1, 1, 1) * (x / norm)  # (B, C, H, W)

    def extra_repr(self) -> str:
        learned = isinstance(self.scale, nn.Parameter)
        return f"{self.scale.numel()}, learn_scale={learned}, eps={self.eps}"


class Unpool(nn.Module):
    """Tile a (B, C, 1, 1) global feature over a feature map's grid (ParseNet Sec. 3.1 "unpool").

    Uses ``expand_as``: no copy, and the gradient of every tiled cell flows back to
    the one global value.

    Shape:
        x (B, C, 1, 1), like (B, C, H, W) -> (B, C, H, W).

    Example:
        >>> Unpool()(torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 5, 7)).shape
        torch.Size([2, 4, 5, 7])
    """

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.expand_as(like)  # (B, C, H, W), stride 0 over H and W


class SumFusion(nn.Module):
    """Late fusion: the sum of per-feature score maps (the ParseNet authors' model).

    With one 1x1 classifier per feature, summing their scores equals one classifier
    on the concatenated features whose weight is the classifiers' weights side by side
    and whose bias is the sum of their biases.

    Shape:
        any number of (B, K, H, W) -> (B, K, H, W).
    """

    def forward(self, *scores: torch.Tensor) -> torch.Tensor:
        fused = scores[0]
        for s in scores[1:]:
            fused = fused + s  # (B, K, H, W)
        return fused


def bilinear_kernel(stride: int) -> torch.Tensor:
    """The (2s, 2s) kernel with which a stride-``s`` transposed conv does bilinear interpolation.

    1-D taps ``1 - |k - (s - 0.5)| / s`` for ``k = 0 .. 2s-1`` (FCN's ``upsample_filt``), outer product.

    Example:
        >>> bilinear_kernel(2)[0]
        tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    if stride < 1:
        raise ValueError(f"upsampling stride must be >= 1, got {stride}")
    k = torch.arange(2 * stride, dtype=torch.float64)
    taps = 1 - (k - (stride - 0.5)).abs() / stride  # (2s,)
    return (taps[:, None] * taps[None, :]).float()  # (2s, 2s)


class Upsample(nn.Module):
    """Score maps at stride ``s`` to the input's size: fixed bilinear, or a learnable transposed conv.

    Cell ``i`` of a stride-``s`` map is centred on pixel ``s * i + (s - 1) / 2`` (see
    :mod:`parsenet.backbones`). The map is padded by replicating its border cells (1
    before, 2 after), upsampled by a transposed conv with kernel ``2s`` and stride ``s``
    initialised to :func:`bilinear_kernel`, and cropped so that cell ``i`` lands on that
    pixel. The result equals ``F.interpolate(x, scale_factor=s, mode="bilinear")``
    (``align_corners=False``) wherever both are defined, and extends it by clamping to
    any size, odd ones included, where ``F.interpolate(x, size=...)`` would instead
    stretch the grid when ``H`` is not a multiple of ``s``.

    Args:
        channels: K, the number of score maps.
        stride: s, the maps' output stride; even, so the crop offset ``1.5 s`` is whole.
        learnable: ``False`` for fixed per-channel bilinear interpolation (a buffer);
            ``True`` for FCN's learnable K->K transposed conv, initialised bilinear on
            the diagonal and 0 elsewhere.

    Shape:
        x (B, K, h, w) and like (B, *, H, W), the tensor whose size to reach (the input
        images), with ``h == H // s`` and ``w == W // s`` -> (B, K, H, W).

    Example:
        >>> up = Upsample(21, stride=8)
        >>> up(torch.zeros(1, 21, 12, 12), torch.zeros(1, 3, 97, 100)).shape
        torch.Size([1, 21, 97, 100])
    """

    def __init__(self, channels: int, *, stride: int, learnable: bool = False):
        super().__init__()
        if stride < 2 or stride % 2:
            raise ValueError(f"upsampling stride must be an even number >= 2, got {stride}")
        kernel = bilinear_kernel(stride)  # (2s, 2s)
        self.stride = stride
        self.learnable = learnable
        if learnable:
            weight = torch.zeros(channels, channels, 2 * stride, 2 * stride)
            weight[torch.arange(channels), torch.arange(channels)] = kernel
            self.weight = nn.Parameter(weight)  # (K, K, 2s, 2s)
            self.groups = 1
        else:
            self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).clone(), persistent=False)
            self.groups = channels  # (K, 1, 2s, 2s): each map on its own

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = F.pad(x, (1, 2, 1, 2), mode="replicate")  # (B, K, h+3, w+3): borders clamp
        up = F.conv_transpose2d(x, self.weight, stride=s, groups=self.groups)  # (B, K, (h+4)s, (w+4)s)
        # Padded cell j is centred on s*j + s - 0.5, i.e. original cell i on s*i + 2s - 0.5;
        # shift by 1.5 s so that it lands on s*i + s/2 - 0.5.
        off = 3 * s // 2
        return up[:, :, off : off + like.shape[-2], off : off + like.shape[-1]]  # (B, K, H, W)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, learnable={self.learnable}"
