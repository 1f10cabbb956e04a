"""Resolve a MODEL spec (what ``erf-rf`` and ``erf-probe`` take) to an eval-mode model.

A spec is one of:

* a torchvision classification model name (``"vgg16"``, ``"resnet50"``), randomly
  initialised (seeded, so deterministic) or with weights: a torchvision weights name
  (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ``"VGG16_Weights.IMAGENET1K_V1"``, loaded through
  torchvision's weights API, which downloads once into ``$TORCH_HOME/hub/checkpoints``)
  or a local state-dict file;
* ``"timm:NAME"``: a timm model (the optional extra ``erf-toolkit[timm]``), randomly
  initialised (seeded), with a local state-dict file, or ``weights="pretrained"`` for
  timm's own download (needs the internet; never used by the tests);
* ``"module.path:function"``: ``function()`` is called and must return an ``nn.Module``;
* anything a registered loader claims (:func:`register_model_loader`): ``import parsenet``
  registers the loader of our training checkpoints (``runs/x/best.pt``), so ``erf``
  itself imports nothing of the packages built on it.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from erf.images import IMAGENET_MEAN, IMAGENET_STD
from erf.util import did_you_mean, state_dict_mismatch, unknown_name

__all__ = ["LoadedModel", "load_model", "register_model_loader", "ModelLoader", "IMAGENET_MEAN", "IMAGENET_STD"]

_SEED = 0  # random init of torchvision models without weights
_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to probe, with the input normalisation it expects.

    Attributes:
        model: the model, in eval mode.
        name: the spec it came from (``"vgg16"``, ``"parsenet:runs/x/best.pt"``, ``"mypkg.nets:build"``).
        mean, std: per-channel input normalisation (ImageNet's for torchvision models).
        input_size: natural (H, W) input size if known (224 for most torchvision classifiers).
        meta: anything else: weights name and categories, checkpoint classes and config, ...
    """

    model: nn.Module
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] | None
    meta: dict = field(default_factory=dict)


ModelLoader = Callable[[str, "str | None"], "LoadedModel"]
"""``loader(spec, weights) -> LoadedModel``: builds the model on the CPU; :func:`load_model` moves it."""

_LOADERS: list[tuple[str, Callable[[str], bool], ModelLoader]] = []  # (name, claims(spec), loader), in order


def register_model_loader(match: str | Callable[[str], bool], loader: ModelLoader, *, name: str) -> None:
    """Teach :func:`load_model` a new kind of spec, without ``erf`` importing the package that knows it.

    Args:
        match: a prefix (``"timm:"``) or a predicate ``spec -> bool`` (``Path(spec).is_file``).
        loader: ``loader(spec, weights) -> LoadedModel``, raising ValueError on bad input.
        name: what the loader loads, for messages (``"parsenet checkpoint"``). Registering a
            name again replaces the earlier loader (re-imports stay harmless).

    Example:
        >>> register_model_loader("toy:", lambda spec, weights: LoadedModel(nn.Conv2d(3, 4, 3), spec,
        ...                       IMAGENET_MEAN, IMAGENET_STD, None), name="toy")
        >>> load_model("toy:any").model.out_channels
        4
    """
    claims = (lambda spec, prefix=match: spec.startswith(prefix)) if isinstance(match, str) else match
    if not callable(claims) or not callable(loader):
        raise TypeError(f"register_model_loader({match!r}, {loader!r}): expected a prefix or predicate and a callable")
    _LOADERS[:] = [entry for entry in _LOADERS if entry[0] != name] + [(name, claims, loader)]


def load_model(spec: str, *, weights: str | None = None, device: str | torch.device | None = None) -> LoadedModel:
    """Resolve ``spec`` to a model in eval mode (see the module docstring for the forms).

    Args:
        spec: torchvision model name, ``"timm:NAME"``, ``"module.path:function"``, or a
            spec a registered loader claims (a checkpoint path once ``parsenet`` is imported).
        weights: for torchvision and timm names and builders: None (random init, seeded),
            a local state-dict file, or a torchvision weights name / ``"pretrained"`` for timm.
        device: where to put the model (default: CPU). ``"meta"`` without weights builds
            a torchvision model in milliseconds with no memory: enough for shapes and
            receptive fields (``erf-rf`` uses it); a timm model, built for real anyway, stays
            on the CPU (buffers such as Swin's shift mask hold values the TRF reads).

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ValueError: unknown model or weights name (with close matches), a state dict
            that does not fit (first mismatched keys and shapes), a file that is not one
            of our checkpoints (what it looks like), a builder that cannot be imported.

    Example:
        >>> lm = load_model("resnet18")
        >>> lm.input_size, lm.mean, lm.model.training
        ((224, 224), (0.485, 0.456, 0.406), False)
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    path = Path(spec)
    if path.is_dir():
        raise IsADirectoryError(f"model {spec!r} is a folder; expected a checkpoint file (e.g. {path / 'best.pt'}), "
                                "a torchvision model name or module.path:function")
    loader = next((fn for _, claims, fn in _LOADERS if claims(spec)), None)
    if loader is not None:
        lm = loader(spec, weights)
        lm.model.eval()
    elif _BUILDER.match(spec):
        lm = _from_builder(spec, weights)
    elif Path(spec).is_file():
        raise ValueError(f"{spec!r} is a file, but no loader for model files is registered; `import parsenet` "
                         f"registers the one for erf-train checkpoints (the erf-* commands do)")
    elif os.sep in spec or spec.endswith((".pt", ".pth")):
        raise FileNotFoundError(f"checkpoint {spec!r} does not exist")
    else:
        lm = _from_torchvision(spec, weights, device)
    if device is not None and not (str(device) == "meta" and lm.meta.get("source") == "timm"):
        lm.model.to(device)  # timm builds for real: on meta, Swin's shift mask would lose the values erf.rf reads
    return lm


# --------------------------------------------------------------------------- torchvision


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _from_torchvision(name: str, weights: str | None, device: str | torch.device | None = None) -> LoadedModel:
    from torchvision.models import get_model, get_model_weights

    names = _torchvision_names()
    if name not in names:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, names)}; expected a torchvision classification "
                         f"model name (e.g. vgg16, resnet50), 'module.path:function', or a checkpoint file")
    enum = get_model_weights(name)
    default = getattr(enum, "DEFAULT", None)
    meta: dict[str, Any] = {"source": "torchvision"}
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, _crop_size(default) or 224
    if weights is None:
        try:
            with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
                torch.manual_seed(_SEED)
                model = get_model(name, weights=None)
        except NotImplementedError:  # an init that reads tensor data cannot run on meta: build for real on the CPU
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_SEED)
                model = get_model(name, weights=None)
        meta["weights"] = None
        size = getattr(model, "image_size", size)  # a ViT built without weights takes its own size (vit_h_14: 224)
    elif Path(weights).is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            model = get_model(name, weights=None)
        _load_state_dict(model, Path(weights), name)
        meta["weights"] = str(weights)
    else:
        w = _weights_enum(name, enum, weights)
        try:
            model = get_model(name, weights=w)
        except OSError as exc:  # URLError and friends: no network, no cached file
            cache = Path(torch.hub.get_dir()) / "checkpoints" / w.url.rsplit("/", 1)[-1]
            raise OSError(f"cannot fetch {w} from {w.url} ({exc}); put the file at {cache} "
                          f"or pass a local state-dict path as weights") from None
        meta.update(weights=str(w), categories=list(w.meta.get("categories", [])))
        t = w.transforms()
        mean, std = tuple(t.mean), tuple(t.std)
        size = _crop_size(w) or size
    return LoadedModel(model.eval(), name, tuple(mean), tuple(std), (size, size), meta)


def _crop_size(w: Any) -> int | None:
    try:
        crop = w.transforms().crop_size
    except Exception:  # models without weights, or transforms without a crop
        return None
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def _weights_enum(name: str, enum: Any, weights: str) -> Any:
    """``IMAGENET1K_V1``, ``DEFAULT`` or ``VGG16_Weights.IMAGENET1K_V1`` -> the enum member."""
    choices = ["DEFAULT"] + [m.name for m in enum]
    short = weights
    if "." in weights:
        cls, short = weights.split(".", 1)
        if cls != enum.__name__:
            raise ValueError(f"weights {weights!r} are not for {name}; expected {enum.__name__}.<name> "
                             f"with one of: {', '.join(choices)}")
    if short == "DEFAULT":
        return enum.DEFAULT
    if short not in enum.__members__:
        raise ValueError(f"unknown weights {weights!r} for {name}{did_you_mean(short, choices)}; expected a local "
                         f"state-dict file or one of: {', '.join(choices)}")
    return enum[short]


def _load_state_dict(model: nn.Module, path: Path, name: str) -> None:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights file {str(path)!r} ({type(exc).__name__}); expected a state dict "
                         f"saved with torch.save(model.state_dict(), path)") from None
    if isinstance(sd, dict) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in ("state_dict", "model"):  # common wrappers
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {str(path)!r} holds a {type(sd).__name__}, not a state dict of tensors")
    mismatch = state_dict_mismatch(model.state_dict(), sd)
    if mismatch:
        raise ValueError(f"weights file {str(path)!r} does not fit {name}: {mismatch}")
    model.load_state_dict(sd)


# --------------------------------------------------------------------------- builders


def _from_builder(spec: str, weights: str | None) -> LoadedModel:
    module_name, fn_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name(f"function in {module_name}", fn_name, public)
    try:
        model = fn()
    except Exception as exc:  # the user's code: its error, in one line, is the answer
        raise ValueError(f"model builder {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(model, LoadedModel):
        lm = model
    elif isinstance(model, nn.Module):
        lm = LoadedModel(model, spec, IMAGENET_MEAN, IMAGENET_STD, None, {"source": "builder", "normalization": "assumed ImageNet"})
    else:
        raise TypeError(f"{spec}() returned a {type(model).__name__}; expected an nn.Module")
    if weights is not None:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights!r} does not exist (builders take a local state-dict file)")
        _load_state_dict(lm.model, Path(weights), spec)
        lm = LoadedModel(lm.model, lm.name, lm.mean, lm.std, lm.input_size, {**lm.meta, "weights": str(weights)})
    lm.model.eval()
    return lm


# --------------------------------------------------------------------------- timm


def _from_timm(spec: str, weights: str | None) -> LoadedModel:
    """``timm:NAME``: random init (seeded) by default, a local state dict, or ``"pretrained"`` (downloads)."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"model {spec!r} needs timm, which is not installed; "
                         f"pip install 'erf-toolkit[timm]' (or pip install timm)") from None
    name = spec[len("timm:"):]
    names = timm.list_models()
    if name not in names:
        raise ValueError(f"unknown timm model {name!r}{did_you_mean(name, names)}; expected a name from "
                         f"timm.list_models(), e.g. timm:vit_tiny_patch16_224")
    pretrained = weights == "pretrained"
    if weights is not None and not pretrained and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights!r} does not exist; for timm models pass a local "
                                f"state-dict file or 'pretrained' (timm's download, needs the internet)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        try:
            model = timm.create_model(name, pretrained=pretrained)
        except OSError as exc:  # no network, no cached file
            raise OSError(f"cannot fetch timm's pretrained weights for {name} ({' '.join(str(exc).split())[:200]}); "
                          f"pass a local state-dict file as weights") from None
    if weights is not None and not pretrained:
        _load_state_dict(model, Path(weights), spec)
    cfg = model.pretrained_cfg or {}
    size = tuple(int(s) for s in cfg.get("input_size", (3, 224, 224))[-2:])
    meta = {"source": "timm", "weights": weights, "timm_name": name}
    return LoadedModel(model.eval(), spec, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                       size, meta)


register_model_loader("timm:", _from_timm, name="timm")
