"""Naming and cutting layers of a model: the names users pass as ``--layer``.

A layer is named by its module path (``features.30``, ``layer4``, ``fc7``) or,
for functional ops, by its ``torch.fx`` node name (``layer1.0.add``). Cutting a
model at a layer gives a module that runs only what that layer needs and
returns its activation, so probes never run the rest of the network.
"""
from __future__ import annotations

import copy
import warnings

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


class _Stop(Exception):
    def __init__(self, value: torch.Tensor):
        self.value = value


class TruncatedModel(nn.Module):
    """``model`` cut at ``layer``: ``forward(x)`` returns that layer's activation, shape (B, C, h, w).

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
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 2:
            out = out[:, :, None, None]
        if out.dim() != 4:
            raise ValueError(f"layer {self.layer!r} gives a {out.dim()}-D output; expected (B, C, h, w) or (B, C)")
        return out


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
