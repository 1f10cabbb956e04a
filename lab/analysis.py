"""Run a trained model on images for the figures: predictions and feature scales.

These are the only figure inputs that need a model rather than a saved result;
they run it here, in the application layer, and return plain numpy arrays.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["predict", "feature_norms", "FEATURE_SCALE_LAYERS"]

# ParseNet Sec. 3.2 / Fig. 3 compares the scale of these features.
FEATURE_SCALE_LAYERS = ("conv4_3", "conv5_3", "fc7", "pool6")


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 16) -> np.ndarray:
    """Per-pixel arg-max labels.

    Args:
        model: a segmentation model returning ``{"out": logits}`` (put in eval mode here).
        images: (N, 3, H, W) normalised images.
        batch_size: images per forward pass.

    Returns:
        (N, H, W) int64 labels.
    """
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device))["out"].argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.inference_mode()
def feature_norms(model: nn.Module, images: torch.Tensor,
                  layers: Sequence[str] = FEATURE_SCALE_LAYERS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-position L2 norms across channels of features, before and after the model's L2 normalisation.

    ParseNet's argument for normalising (Sec. 3.2): features of different layers
    differ in scale by orders of magnitude, so the larger swamps the smaller when
    they are fused. "Before" is the layer's output (``pool6``: the global average
    of fc7); "after" is the output of the model's ``<layer>_norm`` module (L2 norm
    times the learned scale), present only for the features the model fuses.

    Args:
        model: a ParseNet (eval mode is set here).
        images: (N, 3, H, W) normalised images.
        layers: layer names to measure; those the model lacks are skipped.

    Returns:
        ``(before, after)``: dicts layer -> 1-D array with one norm per position and image.
    """
    model.eval()
    modules = dict(model.named_modules())
    wanted = [l for l in layers if l in modules]
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = []

    def keep(key: str):
        def hook(module, inputs, output):
            captured.setdefault(key, []).append(output.detach().float().norm(dim=1).flatten().cpu())  # (B*h*w,)
        return hook

    for layer in wanted:
        hooks.append(modules[layer].register_forward_hook(keep(f"before:{layer}")))
        norm = modules.get(f"{layer}_norm")
        if norm is not None and not isinstance(norm, nn.Identity):
            hooks.append(norm.register_forward_hook(keep(f"after:{layer}")))
    try:
        device = next(model.parameters()).device
        model(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    before = {l: torch.cat(captured[f"before:{l}"]).numpy() for l in wanted if f"before:{l}" in captured}
    after = {l: torch.cat(captured[f"after:{l}"]).numpy() for l in wanted if f"after:{l}" in captured}
    return before, after
