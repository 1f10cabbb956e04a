"""ImageNet VGG16 weights into a ParseNet / FCN backbone, the classifier cast to convolutions.

Sources: torchvision's weights API (``VGG16_Weights.IMAGENET1K_V1``, or
``VGG16_BN_Weights`` for a BatchNorm model; downloaded once into
``$TORCH_HOME/hub/checkpoints`` like any torchvision model) or a local state-dict
file in torchvision's VGG16 layout (``features.N.*``, ``classifier.N.*``).

Conversions of the classifier (ImageNet's fc8, ``classifier.6``, is dropped):

* FCN-32s (Long et al. 2015, Sec. 3.1): fc6 (4096 x 25088) is reshaped to a
  4096 x 512 x 7 x 7 convolution, fc7 (4096 x 4096) to 4096 x 4096 x 1 x 1. On a
  7x7 pool5 window the conv computes exactly the Linear layer on the flattened window.
* DeepLab-LargeFOV (Chen et al. 2015, Sec. 4.1): the same conv subsampled by
  decimation: every 4th output unit (4096 -> 1024) and every 3rd spatial tap
  (7x7 -> 3x3, taps 0, 3, 6); fc7 keeps every 4th unit in both dimensions.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from erf.util import did_you_mean
from parsenet.backbones import VGG16_STAGES, backbone_spec, conv_layer_names

__all__ = [
    "load_vgg16_backbone",
    "convert_vgg16_state_dict",
    "fc6_to_conv",
    "decimate_fc6",
    "decimate_fc7",
    "vgg16_key_map",
    "vgg16_expected_shapes",
]

_FC6_IN = (512, 7, 7)  # VGG16's pool5 on a 224 px image, flattened into fc6
_DECIMATE_UNITS = 4  # DeepLab-LargeFOV: 4096 -> 1024 units
_DECIMATE_TAPS = 3  # DeepLab-LargeFOV: 7x7 -> 3x3 taps


def fc6_to_conv(weight: torch.Tensor, bias: torch.Tensor, in_shape: tuple[int, int, int] = _FC6_IN) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast a Linear layer over a flattened (C, k, k) window to a k x k convolution.

    torchvision flattens pool5 in (C, H, W) order, so the reshape is exact: the conv
    at a window equals the Linear layer on that window flattened.

    Args:
        weight: (N, C * k * k) Linear weight.
        bias: (N,) Linear bias.
        in_shape: (C, k, k) of the flattened input (VGG16: (512, 7, 7)).

    Returns:
        (weight (N, C, k, k), bias (N,)).

    Example:
        >>> w, b = fc6_to_conv(torch.zeros(4096, 25088), torch.zeros(4096))
        >>> w.shape
        torch.Size([4096, 512, 7, 7])
    """
    N = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != in_shape[0] * in_shape[1] * in_shape[2]:
        raise ValueError(f"fc6 weight of shape {tuple(weight.shape)} does not flatten a {in_shape} input; expected (N, {in_shape[0] * in_shape[1] * in_shape[2]})")
    return weight.reshape(N, *in_shape), bias


def decimate_fc6(weight: torch.Tensor, bias: torch.Tensor, *, units: int = _DECIMATE_UNITS, taps: int = _DECIMATE_TAPS) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepLab-LargeFOV's fc6: keep every ``units``-th output unit and every ``taps``-th spatial tap.

    With taps at spacing ``taps`` the decimated kernel, applied with dilation ``taps``
    to a 7x7 window, computes the kept units of the original Linear layer on that window
    with all other positions zeroed. (LargeFOV then uses dilation 12 at stride 8.)

    Args:
        weight: (N, C, k, k) conv weight from :func:`fc6_to_conv`.
        bias: (N,).

    Returns:
        (weight (ceil(N / units), C, ceil(k / taps), ceil(k / taps)), bias); VGG16:
        (1024, 512, 3, 3) and (1024,).
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a 4-D fc6 conv weight (N, C, k, k), got shape {tuple(weight.shape)}")
    return weight[::units, :, ::taps, ::taps].contiguous(), bias[::units].contiguous()


def decimate_fc7(weight: torch.Tensor, bias: torch.Tensor, *, units: int = _DECIMATE_UNITS) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepLab-LargeFOV's fc7: keep every ``units``-th unit on both sides, as a 1x1 conv.

    Args:
        weight: (N, N) Linear weight; bias: (N,).

    Returns:
        (weight (N / units, N / units, 1, 1), bias (N / units,)); VGG16: 1024 x 1024.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D fc7 Linear weight, got shape {tuple(weight.shape)}")
    return weight[::units, ::units, None, None].contiguous(), bias[::units].contiguous()


def vgg16_key_map(batch_norm: bool) -> dict[str, str]:
    """Our module path of each torchvision VGG16 module: ``{"features.0": "conv1_1.0", ...}``.

    Walks torchvision's layout (conv[, bn], relu per conv, a pool per stage), so the
    indices of ``vgg16`` (conv1_1 at 0, ..., conv5_3 at 28) and ``vgg16_bn`` (0 ... 40)
    both come out. The classifier's Linears map to ``fc6.0`` (index 0) and ``fc7.0`` (3).

    Example:
        >>> vgg16_key_map(False)["features.28"], vgg16_key_map(True)["features.41"]
        ('conv5_3.0', 'conv5_3.1')
    """
    mapping: dict[str, str] = {}
    names = iter(conv_layer_names())
    i = 0
    for stage in VGG16_STAGES:
        for _ in stage:
            name = next(names)
            mapping[f"features.{i}"] = f"{name}.0"
            if batch_norm:
                mapping[f"features.{i + 1}"] = f"{name}.1"
            i += 3 if batch_norm else 2
        i += 1  # max pool
    mapping["classifier.0"] = "fc6.0"
    mapping["classifier.3"] = "fc7.0"
    return mapping


def vgg16_expected_shapes(batch_norm: bool) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's ``vgg16`` (or ``vgg16_bn``) state dict, fc8 excepted."""
    shapes: dict[str, tuple[int, ...]] = {}
    keys = iter(k for k in vgg16_key_map(batch_norm) if k.startswith("features."))
    c_in = 3
    for stage in VGG16_STAGES:
        for c in stage:
            conv = next(keys)
            shapes[f"{conv}.weight"] = (c, c_in, 3, 3)
            shapes[f"{conv}.bias"] = (c,)
            if batch_norm:
                bn = next(keys)
                for p in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{bn}.{p}"] = (c,)
            c_in = c
    n_in = _FC6_IN[0] * _FC6_IN[1] * _FC6_IN[2]
    shapes.update({"classifier.0.weight": (4096, n_in), "classifier.0.bias": (4096,),
                   "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)})
    return shapes


def _check_layout(sd: dict, batch_norm: bool, source: str) -> None:
    """Raise a ValueError listing the first missing, unexpected and mis-shaped entries."""
    expected = vgg16_expected_shapes(batch_norm)
    ignorable = ("classifier.6.", )  # ImageNet's fc8
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not k.startswith(ignorable) and not k.endswith("num_batches_tracked")]
    wrong = [f"{k}: got {tuple(sd[k].shape)}, expected {expected[k]}" for k in expected
             if k in sd and tuple(getattr(sd[k], "shape", ())) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    layout = "vgg16_bn" if batch_norm else "vgg16"
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    hint = ""
    if missing and unexpected:
        other = vgg16_expected_shapes(not batch_norm)
        if set(other) <= set(sd):
            hint = f"; it looks like a {'vgg16' if batch_norm else 'vgg16_bn'} state dict but the model has batch_norm={batch_norm}"
    raise ValueError(f"state dict from {source} does not match torchvision's {layout} layout; " + "; ".join(parts) + hint)


def convert_vgg16_state_dict(sd: dict, *, backbone: str, batch_norm: bool = False, include_fc: bool = True) -> dict[str, torch.Tensor]:
    """torchvision VGG16 state dict -> this package's backbone state dict (conv1_1 ... fc7).

    Args:
        sd: torchvision ``vgg16`` (or, with ``batch_norm``, ``vgg16_bn``) state dict.
        backbone: ``"vgg16-fcn32s"`` (fc6 reshaped to 7x7) or ``"vgg16-largefov"`` (fc6/fc7 decimated).
        batch_norm: whether ``sd`` and the target model have BatchNorm.
        include_fc: also convert fc6/fc7 (False for conv-only weights).

    Returns:
        ``{"conv1_1.0.weight": ..., "fc6.0.weight": ..., ...}``, full width; loads into a
        width-1 model with ``load_state_dict(..., strict=False)`` (the head stays as built).
    """
    spec = backbone_spec(backbone)
    _check_layout(sd, batch_norm, "the given dict")
    out: dict[str, torch.Tensor] = {}
    for src, dst in vgg16_key_map(batch_norm).items():
        if src.startswith("classifier."):
            continue
        for p in ("weight", "bias", "running_mean", "running_var"):
            if f"{src}.{p}" in sd:
                out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
    if include_fc:
        w6, b6 = fc6_to_conv(sd["classifier.0.weight"], sd["classifier.0.bias"])
        w7, b7 = sd["classifier.3.weight"], sd["classifier.3.bias"]
        if spec.name == "vgg16-largefov":
            w6, b6 = decimate_fc6(w6, b6)
            w7, b7 = decimate_fc7(w7, b7)
        else:
            w7 = w7[:, :, None, None]
        out.update({"fc6.0.weight": w6, "fc6.0.bias": b6, "fc7.0.weight": w7, "fc7.0.bias": b7})
    return out


def _weights_enum(batch_norm: bool):
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights

    return VGG16_BN_Weights if batch_norm else VGG16_Weights


def _read_state_dict(weights, batch_norm: bool, progress: bool) -> tuple[dict, str]:
    """Resolve ``weights`` (enum, enum name or file path) to (state dict, description)."""
    from torchvision.models import WeightsEnum

    enum = _weights_enum(batch_norm)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(f"weights {weights} do not fit a model with batch_norm={batch_norm}; expected {enum.__name__}")
        return weights.get_state_dict(progress=progress, check_hash=True), str(weights)
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a {enum.__name__} name or a path to a state-dict file, got {type(weights).__name__}")
    path = Path(weights)
    if path.is_file():
        # Memory-map zip-format files (torch.save's default) so only what is copied is read;
        # legacy-format files, such as torchvision's 2017 VGG16 checkpoint, load whole.
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        if not isinstance(sd, dict):
            raise ValueError(f"{path} holds a {type(sd).__name__}, expected a state dict (a dict of tensors)")
        return sd, str(path)
    name = str(weights).removeprefix(f"{enum.__name__}.")
    if name in enum.__members__:
        w = enum[name]
        return w.get_state_dict(progress=progress, check_hash=True), str(w)
    if os.sep in str(weights) or path.suffix in (".pth", ".pt", ".bin"):
        raise FileNotFoundError(f"no state-dict file at {path}")
    raise ValueError(
        f"unknown weights {str(weights)!r}{did_you_mean(name, enum.__members__)}; expected one of "
        f"{', '.join(enum.__members__)} ({enum.__name__}) or the path of a state-dict file"
    )


def load_vgg16_backbone(model: nn.Module, weights="IMAGENET1K_V1", *, progress: bool = True) -> nn.Module:
    """Initialise ``model``'s conv1_1 ... fc7 from ImageNet VGG16 weights; the head is untouched.

    Args:
        model: a full-width ParseNet (``width=1``); a BatchNorm model takes ``vgg16_bn``
            weights (their conv, BN and Linear layers; the BN of fc6/fc7 stays as built).
        weights: a name of torchvision's ``VGG16_Weights`` (``VGG16_BN_Weights`` for a
            BatchNorm model), e.g. ``"IMAGENET1K_V1"`` or ``"DEFAULT"``, that enum itself,
            or the path of a state-dict file in torchvision's layout. Names go through
            ``WeightsEnum.get_state_dict``, the call ``torchvision.models.vgg16(weights=...)``
            makes: it downloads once into ``$TORCH_HOME/hub/checkpoints``. For
            ``IMAGENET1K_FEATURES`` (Caffe weights whose classifier is not usable)
            only the convs are loaded.
        progress: show a download progress bar.

    Returns:
        ``model``, loaded in place.

    Example:
        >>> model = build_model(ParseNetConfig(backbone="vgg16-fcn32s"))
        >>> load_vgg16_backbone(model, "IMAGENET1K_V1").fc6[0].weight.shape  # doctest: +SKIP
        torch.Size([4096, 512, 7, 7])
    """
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "backbone"):
        raise TypeError(f"load_vgg16_backbone expects a ParseNet, got {type(model).__name__}")
    if cfg.width != 1.0:
        raise ValueError(f"ImageNet VGG16 weights need a full-width model (width=1.0), got width={cfg.width}")
    sd, source = _read_state_dict(weights, cfg.batch_norm, progress)
    _check_layout(sd, cfg.batch_norm, source)
    include_fc = all(torch.isfinite(sd[k]).all() for k in ("classifier.0.weight", "classifier.3.weight"))
    if not include_fc:
        warnings.warn(f"{source}: the classifier has non-finite values (features-only weights); fc6/fc7 keep their initialisation")
    converted = convert_vgg16_state_dict(sd, backbone=cfg.backbone, batch_norm=cfg.batch_norm, include_fc=include_fc)
    ours = model.state_dict()
    wrong = [f"{k}: converted {tuple(v.shape)}, model {tuple(ours[k].shape)}" for k, v in converted.items() if k in ours and ours[k].shape != v.shape]
    absent = [k for k in converted if k not in ours]
    if wrong or absent:  # only when the model is not built by this package
        raise ValueError(f"converted weights do not fit the model: {', '.join((wrong + absent)[:5])}")
    model.load_state_dict(converted, strict=False)
    return model
