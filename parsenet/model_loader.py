"""Our training checkpoints as ``erf`` model specs: ``import parsenet`` registers this loader.

``erf.models.load_model`` knows nothing of ParseNet; this module teaches it, so
``erf-probe runs/x/best.pt ...`` works while ``erf`` imports nothing of ours.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from erf.images import IMAGENET_MEAN, IMAGENET_STD
from erf.models import LoadedModel, register_model_loader

__all__ = ["load_checkpoint_model", "is_checkpoint_file"]


def is_checkpoint_file(spec: str) -> bool:
    """A spec names a checkpoint when it is an existing file (foreign files are refused by the loader)."""
    return Path(spec).is_file()


def load_checkpoint_model(spec: str, weights: str | None = None) -> LoadedModel:
    """Rebuild the model of checkpoint ``spec`` in eval mode, with its normalisation and classes in ``meta``.

    ``meta`` holds the fields of :class:`parsenet.checkpoint.TrainedModel` but the model, plus
    ``"model_config"`` (the config as a dict).
    """
    from parsenet.checkpoint import load_trained_model

    if weights is not None:
        raise ValueError(f"--weights does not apply to checkpoint {spec!r}: it holds its own weights")
    trained = load_trained_model(Path(spec))  # raises ValueError saying what a foreign file looks like
    meta = {f.name: getattr(trained, f.name) for f in fields(trained) if f.name != "model"}
    meta["model_config"] = trained.config.to_dict()
    return LoadedModel(trained.model.eval(), f"parsenet:{spec}", tuple(trained.mean or IMAGENET_MEAN),
                       tuple(trained.std or IMAGENET_STD), None, meta)


register_model_loader(is_checkpoint_file, load_checkpoint_model, name="parsenet checkpoint")
