"""Our training checkpoints as ``erf`` model specs: ``import parsenet`` registers this loader.

``erf.models.load_model`` knows nothing of ParseNet; this module teaches it, so
``erf-probe runs/x/best.pt ...`` works while ``erf`` imports nothing of ours.
"""
from __future__ import annotations

from pathlib import Path

from erf.images import IMAGENET_MEAN, IMAGENET_STD
from erf.models import LoadedModel, register_model_loader

__all__ = ["load_checkpoint_model", "is_checkpoint_file"]


def is_checkpoint_file(spec: str) -> bool:
    """A spec names a checkpoint when it is an existing file (foreign files are refused by the loader)."""
    return Path(spec).is_file()


def load_checkpoint_model(spec: str, weights: str | None = None) -> LoadedModel:
    """Rebuild the model of checkpoint ``spec`` in eval mode, with its normalisation and classes in ``meta``."""
    from parsenet.checkpoint import load_model_from_checkpoint

    if weights is not None:
        raise ValueError(f"--weights does not apply to checkpoint {spec!r}: it holds its own weights")
    model, info = load_model_from_checkpoint(Path(spec))  # raises ValueError saying what a foreign file looks like
    mean = tuple(info.get("mean") or IMAGENET_MEAN)
    std = tuple(info.get("std") or IMAGENET_STD)
    size = info.get("input_size")
    size = (int(size), int(size)) if isinstance(size, int) else (tuple(size) if size else None)
    return LoadedModel(model.eval(), f"parsenet:{spec}", mean, std, size, dict(info))


register_model_loader(is_checkpoint_file, load_checkpoint_model, name="parsenet checkpoint")
