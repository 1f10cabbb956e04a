"""Named training presets: partial ``TrainConfig`` dicts that ``erf-train --preset NAME`` starts from.

Precedence when building a run: ``TrainConfig`` defaults < preset < ``--config
FILE.toml`` < options given on the command line (see :func:`merge_options`).

Sources of the settings (ParseNet = Liu, Rabinovich & Berg, "ParseNet: Looking
Wider to See Better", arXiv:1506.04579; DeepLab = Chen et al., ICLR 2015):

* SGD momentum 0.9, weight decay 5e-4, poly power 0.9, new layers at 10x the
  base rate, gradient accumulation over 8 single images per update
  (ParseNet Sec. 4, the training practice it adopts from DeepLab).
* Backbones: DeepLab-LargeFOV for PASCAL VOC; FCN-32s for SiftFlow and
  PASCAL-Context (ParseNet Sec. 4, one subsection per dataset).
* L2 normalisation with a learned scale initialised at 10 and dropout 0.3 on the
  global feature (ParseNet Sec. 3); these are ``ParseNetConfig`` defaults.
* Crop 321 and random scale 0.5-2.0 on VOC: DeepLab's input pipeline.

Step counts and base rates for the paper-scale presets are our reading of those
recipes for a pixel-averaged loss, not numbers the paper prints; the ``demo``
and ``camvid`` budgets were chosen on this project's 2-core CPU machine.
"""
from __future__ import annotations

import copy

from erf.util import unknown_name

__all__ = ["PRESETS", "preset", "merge_options"]

_PAPER_RECIPE = {"momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10.0,
                 "batch_size": 1, "accumulate": 8}

PRESETS: dict[str, dict] = {
    # PASCAL VOC 2012 (train_aug when SBD is present): ParseNet on DeepLab-LargeFOV.
    "voc": {
        **_PAPER_RECIPE,
        "dataset_options": {},
        "train_split": "train",
        "val_split": "val",
        "model": {"backbone": "vgg16-largefov", "context": "global", "fusion": "late"},
        "lr": 1e-3, "steps": 20000, "crop_size": 321, "scale_range": [0.5, 2.0],
        "eval_every": 2000, "eval_batch_size": 1, "device": "auto",
    },
    # PASCAL-Context, 59 classes + background: ParseNet on FCN-32s.
    "pascal-context": {
        **_PAPER_RECIPE,
        "train_split": "train", "val_split": "val",
        "model": {"backbone": "vgg16-fcn32s", "context": "global", "fusion": "late"},
        "lr": 1e-3, "steps": 40000, "crop_size": 500, "scale_range": [1.0, 1.0],
        "eval_every": 4000, "eval_batch_size": 1, "device": "auto",
    },
    # SiftFlow, 33 classes, 2488 / 200 split, 256x256 images: ParseNet on FCN-32s.
    "siftflow": {
        **_PAPER_RECIPE,
        "train_split": "train", "val_split": "test",
        "model": {"backbone": "vgg16-fcn32s", "context": "global", "fusion": "late"},
        "lr": 1e-3, "steps": 20000, "crop_size": None, "scale_range": [1.0, 1.0],
        "eval_every": 2000, "eval_batch_size": 8, "device": "auto",
    },
    # Built-in context scenes, compact LargeFOV with BatchNorm: a few minutes on 2 CPU cores.
    "demo": {
        "dataset": "scenes",
        # 2000 training and 200 validation scenes. Objects of 17-29 px: with the default 10-19 px,
        # 1500 steps at batch 8 learned only discs in either model (measured on this machine).
        "dataset_options": {"size": 96, "object_size": [0.18, 0.30]},
        "train_split": "train", "val_split": "val",
        "model": {"backbone": "vgg16-largefov", "width": 0.125, "batch_norm": True, "context": "global"},
        "steps": 1000, "batch_size": 16, "accumulate": 1, "lr": 0.02,
        "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10.0,
        "crop_size": None, "scale_range": [1.0, 1.0],
        "eval_every": 500, "eval_batch_size": 16, "device": "cpu",
    },
    # CamVid (11 classes, SegNet layout, ../shared/data/camvid): compact LargeFOV with BatchNorm on CPU.
    "camvid": {
        "dataset": "camvid:../shared/data/camvid",
        "train_split": "train", "val_split": "val",
        "model": {"backbone": "vgg16-largefov", "width": 0.125, "batch_norm": True, "context": "global"},
        "steps": 2000, "batch_size": 8, "accumulate": 1, "lr": 0.01,
        "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9, "head_lr_mult": 10.0,
        "crop_size": 160, "scale_range": [0.75, 1.25],
        "eval_every": 500, "eval_batch_size": 8, "device": "cpu",
    },
}


def preset(name: str) -> dict:
    """A copy of the named preset's options.

    Example:
        >>> preset("demo")["model"]["width"]
        0.125
        >>> preset("dmeo")
        Traceback (most recent call last):
        ValueError: unknown preset 'dmeo' (did you mean: demo?); expected one of: voc, pascal-context, siftflow, demo, camvid
    """
    if name not in PRESETS:
        raise unknown_name("preset", name, PRESETS, show_all=True)
    return copy.deepcopy(PRESETS[name])


def merge_options(base: dict, *overrides: dict) -> dict:
    """Merge option dicts left to right; the nested ``model`` and ``dataset_options`` tables merge key by key.

    Example:
        >>> merge_options({"steps": 10, "model": {"width": 0.125}}, {"model": {"context": "none"}})
        {'steps': 10, 'model': {'width': 0.125, 'context': 'none'}}
    """
    merged = copy.deepcopy(base)
    for over in overrides:
        for key, value in over.items():
            if key in ("model", "dataset_options") and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = copy.deepcopy(value)
    return merged
