"""Naming and cutting layers of a model: the names users pass as ``--layer``.

A layer is named by its module path (``features.30``, ``layer4``, ``fc7``) or,
for functional ops, by its ``torch.fx`` node name (``layer1.0.add``). Cutting a
model at a layer gives a module that runs only what that layer needs and
returns its activation, so probes never run the rest of the network.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from erf.util import unknown_name

__all__ = ["layer_names", "resolve_layer", "truncate", "TruncatedModel", "layer_channels"]


def _graph_node_names(model: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        _, eval_nodes = get_graph_node_names(model)
    except Exception:  # not fx-traceable: module paths only
        return []
    return [n for n in eval_nodes if n not in ("x", "input", "output")]


def layer_names(model: nn.Module) -> list[str]:
    """All names :func:`truncate` accepts: module paths first, then fx node names.

    Example:
        >>> "features.30" in layer_names(torchvision.models.vgg16())
        True
    """
    names = [name for name, _ in model.named_modules() if name]
    seen = set(names)
    names += [n for n in _graph_node_names(model) if n not in seen]
    return names


def resolve_layer(model: nn.Module, layer: str) -> str:
    """Return ``layer`` if the model has it, else raise ValueError listing close matches."""
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return layer
    names = layer_names(model)
    if layer in names:
        return layer
    raise unknown_name(f"layer in {type(model).__name__}", layer, names)


_MAX_PREFIX_TOKENS = 16  # class + distillation + register tokens ahead of the patch tokens


def _channels_last(shape: torch.Size, size: tuple[int, int]) -> bool:
    """Is a 4-D activation (B, h, w, C) rather than (B, C, h, w)? Whichever pair of axes has the input's
    aspect ratio is spatial; a tie (a 7x7 map with 7 channels) reads as (B, C, h, w)."""
    _, a, b, c = shape
    H, W = size
    return abs(a * W - b * H) < abs(b * W - c * H)


class _Stop(Exception):
    def __init__(self, value: torch.Tensor):
        self.value = value


class TruncatedModel(nn.Module):
    """``model`` cut at ``layer``: ``forward(x)`` returns that layer's activation, shape (B, C, h, w).

    Token layers (B, K + h*w, D) of Vision Transformers come back as (B, D, h, w) with the
    K leading class, distillation or register tokens dropped and (h, w) the patch grid of
    the patch embedding; channels-last layers (B, h, w, C) of ConvNeXt and Swin blocks are
    permuted. The probes, statistics and figures then work unchanged.

    Traced with ``torch.fx`` (dead code after the layer is removed). Models that
    cannot be traced fall back to a forward hook that stops the pass as soon as
    the layer has run. 2-D outputs (B, C) of Linear layers come back as (B, C, 1, 1).

    The cut works on a private copy of ``model``: moving it (``.to(device)``),
    switching its mode or hooking it leaves the caller's model exactly as it was.
    """

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.layer = resolve_layer(model, layer)
        model = copy.deepcopy(model)  # the cut's .to()/.eval() and the fallback hook must not touch the caller's model
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self._patch = None if conv is None or isinstance(conv.padding, str) else (
            conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        self.traced = True
        try:
            from torchvision.models.feature_extraction import create_feature_extractor

            self.body = create_feature_extractor(model, return_nodes={self.layer: "out"})
        except Exception as exc:  # tracing failed: stop the eager model with a hook
            modules = dict(model.named_modules())
            if self.layer not in modules:
                raise ValueError(
                    f"layer {layer!r} is an fx node but {type(model).__name__} cannot be traced "
                    f"({type(exc).__name__}); pass a module path instead"
                ) from None
            warnings.warn(f"{type(model).__name__} is not fx-traceable; stopping at {layer!r} with a hook")
            self.traced = False
            self.body = model
            modules[self.layer].register_forward_hook(self._hook)

    @staticmethod
    def _hook(module, inputs, output):
        raise _Stop(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.traced:
            out = self.body(x)["out"]
        else:
            try:
                self.body(x)
            except _Stop as stop:
                out = stop.value
            else:  # pragma: no cover - the hook always fires when the layer is on the path
                raise RuntimeError(f"layer {self.layer!r} was not reached by the forward pass")
        return self.as_map(out, tuple(x.shape[-2:]))

    def as_map(self, out: Any, size: tuple[int, int]) -> torch.Tensor:
        """The layer's raw output as :meth:`forward` returns it, (B, C, h, w), for an input of ``size`` (H, W)."""
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 2:
            out = out[:, :, None, None]
        elif out.dim() == 3:
            out = self._tokens_to_map(out, size)
        elif out.dim() == 4 and _channels_last(out.shape, size):
            out = out.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        if out.dim() != 4:
            raise ValueError(f"layer {self.layer!r} gives a {out.dim()}-D output; expected (B, C, h, w), "
                             f"(B, h, w, C), tokens (B, N, D) or (B, C)")
        return out

    def _tokens_to_map(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K + h*w, D) tokens -> (B, D, h, w): the K leading class/distillation/register tokens dropped,
        (h, w) the patch grid of the patch embedding (the model's first convolution) or a coarser stage of it."""
        B, N, D = tokens.shape
        h, w = self.patch_grid(size)
        for _ in range(6):  # the patch grid, then each 2x coarser stage (hierarchical token models)
            k = N - h * w
            if 0 <= k <= _MAX_PREFIX_TOKENS:
                return tokens[:, k:].transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)
            h, w = (h + 1) // 2, (w + 1) // 2
        raise ValueError(f"layer {self.layer!r} gives {N} tokens, which is not the patch grid "
                         f"{self.patch_grid(size)} (or a coarser stage) plus at most {_MAX_PREFIX_TOKENS} "
                         f"class/register tokens; expected (B, K + h*w, D) tokens")

    def patch_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the patch embedding's output for an input of ``size``: the model's first Conv2d."""
        if self._patch is None:
            raise ValueError(f"layer {self.layer!r} gives tokens but the model has no Conv2d patch embedding "
                             f"to read the token grid from")
        k, s, p, d = self._patch
        return tuple((n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(size))


def truncate(model: nn.Module, layer: str) -> TruncatedModel:
    """Cut ``model`` at ``layer`` (see :class:`TruncatedModel`). The result is in eval mode.

    Example:
        >>> body = truncate(torchvision.models.vgg16(), "features.29")  # conv5_3 after ReLU
        >>> body(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 512, 14, 14])
    """
    return TruncatedModel(model, layer).eval()


def layer_channels(model: nn.Module, layer: str, image: torch.Tensor) -> int:
    """Number of channels of ``layer``'s output on ``image`` (1, 3, H, W): one clean forward pass up to it."""
    with torch.inference_mode():
        return int(truncate(model, layer)(image).shape[1])
