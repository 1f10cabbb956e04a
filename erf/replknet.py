"""The ERF protocol of RepLKNet (Ding et al., CVPR 2022, "Scaling Up Your Kernels to 31x31", Sec. 5.2 / App.).

Papers on large-kernel CNNs quote ERFs measured this way:

1. resize every image to ``input_size`` x ``input_size`` (1024 in the paper; 50 ImageNet
   validation images), normalised as the model expects;
2. take the layer's output (B, C, h, w), ReLU it, and sum the channels at the centre
   unit ``(h // 2, w // 2)``;
3. back-propagate to the input and keep the positive part of the gradient, summed over
   the colour channels: the contribution score of each input pixel; average over images;
4. rescale with ``log10(x + 1)`` and divide by the maximum (so models compare);
5. the *high-contribution area ratio* at threshold t: the smallest centred square of
   side ``2i + 1`` (i = 1, 2, ...) whose scores sum to more than t of the total, as a
   fraction of the image area, for t = 0.2, 0.3, 0.5 and 0.99.

This differs from Luo et al.'s gradient ERF (:mod:`erf.gradient`): the output is ReLU'd,
the gradient's positive part is kept (not its absolute value), and the map is not
re-centred on the TRF. :func:`probe_replknet` gives an :class:`erf.result.ERFResult` like
the other probes, with the protocol's map and table in ``config["replknet"]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from erf.graph import resolve_layer, truncate
from erf.result import ERFResult, build_result, recenter

__all__ = ["REPLKNET_THRESHOLDS", "REPLKNET_INPUT_SIZE", "contribution_scores", "log_scale", "area_ratios", "probe_replknet",
           "format_area_ratios"]

REPLKNET_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)  # RepLKNet's table of high-contribution area ratios
REPLKNET_INPUT_SIZE = 1024  # the paper's resize target


def contribution_scores(body: nn.Module, images: torch.Tensor, batch_size: int = 1) -> tuple[np.ndarray, int]:
    """Mean over images of ``relu(d relu(out[:, :, h//2, w//2]).sum() / d input).sum(colour)``.

    Args:
        body: the model cut at the layer (:func:`erf.graph.truncate`), on its device.
        images: (N, 3, S, S) normalised images on the same device.
        batch_size: images per backward pass (samples are independent, so the sum splits).

    Returns:
        ``(scores (S, S) float64, images used)``; images whose gradient is not finite are skipped
        (the protocol drops them).
    """
    total, used = None, 0
    for b0 in range(0, len(images), batch_size):
        x = images[b0:b0 + batch_size].clone().requires_grad_(True)  # (B, 3, S, S)
        out = body(x)  # (B, C, h, w)
        _, _, h, w = out.shape
        centre = F.relu(out[:, :, h // 2, w // 2]).sum()  # ReLU'd centre unit, all channels, all images
        (grad,) = torch.autograd.grad(centre, x)
        per_image = F.relu(grad).sum(1).double().cpu()  # (B, S, S): positive part, summed over colour
        finite = torch.isfinite(per_image).flatten(1).all(1)  # (B,)
        total = per_image[finite].sum(0) if total is None else total + per_image[finite].sum(0)
        used += int(finite.sum())
    if used == 0:
        raise ValueError("every image gave a non-finite input gradient; expected at least one finite one")
    return (total / used).numpy(), used


def log_scale(scores: np.ndarray) -> np.ndarray:
    """RepLKNet's display and table scale: ``log10(x + 1)`` divided by its maximum (zeros stay zeros)."""
    data = np.log10(np.asarray(scores, dtype=np.float64) + 1.0)
    peak = data.max()
    return data / peak if peak > 0 else data


def area_ratios(scores: np.ndarray, thresholds: Sequence[float] = REPLKNET_THRESHOLDS) -> list[dict]:
    """High-contribution area ratio of a (S, S) score map at each threshold, on :func:`log_scale`.

    For each t: the smallest centred square of odd side ``2i + 1`` (i >= 1, centre ``(S//2, S//2)``)
    whose scaled scores sum to more than t of the total; None where no square smaller than the
    image does (then the ERF covers more than t of the mass only with the whole image).

    Returns:
        ``[{"threshold": t, "side": 2i + 1 or None, "area_ratio": side**2 / (H*W) or None}, ...]``

    Example:
        >>> m = np.zeros((9, 9)); m[3:6, 3:6] = 1.0; m[4, 4] = 9.0
        >>> [(r["side"], round(r["area_ratio"], 3)) for r in area_ratios(m, (0.5,))]
        [(3, 0.111)]
    """
    data = log_scale(scores)
    H, W = data.shape
    total = data.sum()
    cy, cx = H // 2, W // 2
    rows = []
    for t in thresholds:
        if not 0 < t < 1:
            raise ValueError(f"threshold {t!r}; expected a fraction in (0, 1)")
        side = None
        for i in range(1, min(H, W) // 2):
            if total > 0 and data[cy - i:cy + i + 1, cx - i:cx + i + 1].sum() / total > t:
                side = 2 * i + 1
                break
        rows.append({"threshold": float(t), "side": side,
                     "area_ratio": None if side is None else side * side / (H * W)})
    return rows


def format_area_ratios(rows: list[dict]) -> str:
    """The protocol's table: one line per threshold (side in pixels, area ratio)."""
    lines = [f"{'t':>5} {'side':>6} {'area ratio':>11}"]
    for r in rows:
        side = "-" if r["side"] is None else str(r["side"])
        ratio = "> all" if r["area_ratio"] is None else f"{r['area_ratio']:.4f}"
        lines.append(f"{r['threshold']:>5g} {side:>6} {ratio:>11}")
    return "\n".join(lines)


def probe_replknet(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    input_size: int = REPLKNET_INPUT_SIZE,
    thresholds: Sequence[float] = REPLKNET_THRESHOLDS,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    rf=None,
    model_name: str | None = None,
) -> ERFResult:
    """RepLKNet's ERF of ``layer``'s centre unit (see the module docstring) as an :class:`ERFResult`.

    Args:
        model: the model (left as it was: the cut is a private copy).
        layer: module path or fx node name.
        images: (N, 3, H, W) normalised images or an ``erf.images.ImageSet``; resized (bicubic)
            to ``input_size`` square.
        names: image names (default the ImageSet's, else ``image_00000``, ...).
        input_size: side of the square the images are resized to (the paper: 1024).
        thresholds: area-ratio thresholds (the paper: 0.2, 0.3, 0.5, 0.99).
        batch_size: images per backward pass.
        device: where to run; default the model's device.
        rf: the layer's ``LayerRF`` at ``input_size`` (default computed; a model that cannot be
            traced needs it given).
        model_name: a label for the result.

    Returns:
        ``ERFResult`` with ``method="gradient"``; ``maps`` (1, 2S, 2S) the mean contribution
        scores re-centred on the centre unit (``log_scale(maps[0])`` is the paper's display);
        ``config["replknet"]["area_ratios"]`` the table (:func:`area_ratios`).

    Example:
        >>> res = probe_replknet(torchvision.models.resnet18(), "layer4", images, input_size=256)
        >>> [r["threshold"] for r in res.config["replknet"]["area_ratios"]]
        [0.2, 0.3, 0.5, 0.99]
    """
    if names is None and hasattr(images, "names"):
        names = list(images.names)
    images = getattr(images, "images", images)  # an erf.images.ImageSet
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 8:
        raise ValueError(f"input_size={input_size!r}; expected an integer side of at least 8 pixels (paper: 1024)")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images of shape {shape}; expected a non-empty float tensor (N, 3, H, W)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
    area_ratios(np.ones((3, 3)), thresholds)  # checks the thresholds before any work
    layer = resolve_layer(model, layer)
    S = input_size
    if rf is None:
        from erf.rf import receptive_field

        rf = receptive_field(model, layer, (S, S))
    names = [f"image_{i:05d}" for i in range(len(images))] if names is None else [str(n) for n in names]
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    body = truncate(model, layer).to(device)
    x = images.float()
    if tuple(x.shape[-2:]) != (S, S):
        x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False)  # (N, 3, S, S)
    scores, used = contribution_scores(body, x.to(device), batch_size)  # (S, S)
    h, w = rf.size
    cy, cx = h // 2, w // 2
    center = rf.center(cy, cx)
    top, left, bottom, right = rf.box(cy, cx, clip=True)
    table = area_ratios(scores, thresholds)
    config = {
        "method": "gradient", "protocol": "replknet", "position": [cy, cx], "input_size": S,
        "batch_size": int(batch_size), "device": str(device), "real_images": len(images), "images_used": used,
        "replknet": {"area_ratios": table, "thresholds": [float(t) for t in thresholds]},
    }
    return build_result(
        method="gradient", mode="position", layer=layer, image_size=(S, S), config=config,
        model={"name": model_name or type(model).__name__}, images=names, trf=rf,
        units=np.array([-1]), maps=recenter(scores.astype(np.float32), center)[None],
        trf_areas=np.array([float((bottom - top) * (right - left))]),
        topk_images=np.arange(len(images))[None], topk_locations=np.tile(np.array([cy, cx])[None, None],
                                                                         (1, len(images), 1)),
        topk_values=np.zeros((1, len(images))), threshold=0.5,
    )



def replknet_from_gradient_args(protocol: str, model, layer: str, images, *, names=None, input_size=None,
                                batch_size: int = 1, device=None, rf=None, model_name=None,
                                world_size: int = 1) -> ERFResult:
    """``probe_gradient(..., protocol=...)``'s hook: check the protocol name and the arguments it takes."""
    if protocol != "replknet":
        raise ValueError(f"unknown gradient protocol {protocol!r}; expected 'luo' (Luo et al. 2016) or 'replknet'")
    if world_size > 1:
        raise ValueError("protocol='replknet' runs in one process; expected world_size=1")
    if not isinstance(model, nn.Module):
        raise TypeError(f"protocol='replknet' takes one model (nn.Module), got {type(model).__name__}")
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2 or input_size[0] != input_size[1]:
            raise ValueError(f"input_size={input_size!r}; the RepLKNet protocol resizes to a square, expected S or (S, S)")
        input_size = input_size[0]
    if rf is not None and tuple(rf.input_size) != (input_size or REPLKNET_INPUT_SIZE,) * 2:
        rf = None  # a TRF for another input size: recompute at the protocol's size
    return probe_replknet(model, layer, images, names=names, input_size=input_size or REPLKNET_INPUT_SIZE,
                          batch_size=batch_size, device=device, rf=rf, model_name=model_name)
