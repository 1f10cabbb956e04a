"""Training checkpoints: one self-describing file per snapshot, written atomically.

A checkpoint is a ``torch.save`` dict that holds everything needed to rebuild
the model from the file alone and to continue training bit for bit:

==================  ==========================================================
``format``          ``"erf-toolkit/parsenet-checkpoint"``, ``version``: 1
``model_config``    ``ParseNetConfig.to_dict()``
``model``           the weights (``state_dict`` of the unwrapped model)
``optimizer``       optimizer, scheduler and AMP grad-scaler state (or None)
``scheduler``
``scaler``
``step``            optimizer steps done
``rng``             python, numpy, torch and CUDA generator states
``metrics``         the evaluation at this step (``SegmentationMetrics.to_dict()``)
``best``            ``{"step", "metrics"}`` of the best evaluation so far
``classes``         class names and RGB colours, ``ignore_index``
``colors``
``mean``, ``std``   the input normalisation the model was trained with
``train_config``    ``TrainConfig.to_dict()``
==================  ==========================================================

Files load with ``torch.load(weights_only=True)``: no pickled code, so opening a
checkpoint from elsewhere cannot run anything.
"""
from __future__ import annotations

import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from erf.util import atomic_torch_save, state_dict_mismatch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "TrainedModel",
    "load_trained_model",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "erf-toolkit/parsenet-checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("model_config", "model", "step", "classes", "mean", "std")


def rng_state() -> dict:
    """The state of every random generator training touches, in a ``weights_only``-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators saved by :func:`rng_state` (CUDA only where the device count matches)."""
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    step: int,
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    colors: Sequence[Sequence[int]] | None = None,
    ignore_index: int = 255,
    model_config: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    metrics: dict | None = None,
    best: dict | None = None,
    train_config: dict | None = None,
) -> None:
    """Write a checkpoint atomically: a crash or a full disk leaves any previous file at ``path`` intact.

    Args:
        path: destination, conventionally ``RUN/last.pt`` or ``RUN/best.pt``.
        model: the model; a ``DistributedDataParallel`` wrapper is unwrapped.
        step: optimizer steps done.
        classes: K class names; ``colors``: K RGB triples for figures.
        mean, std: per-channel input normalisation (3 floats each).
        ignore_index: the void label of the training data.
        model_config: a ``ParseNetConfig`` (default: ``model.config``).
        optimizer, scheduler, scaler: training state to continue from (optional).
        metrics: this step's evaluation (``SegmentationMetrics.to_dict()``); ``best``: the best so far.
        train_config: ``TrainConfig.to_dict()``.

    Example:
        >>> save_checkpoint("run/last.pt", model=model, step=100, classes=info.classes,
        ...                 mean=info.mean, std=info.std, optimizer=opt)  # doctest: +SKIP
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    cfg = model_config if model_config is not None else getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"no model_config given and {type(model).__name__} has no .config to save")
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": cfg_dict,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "metrics": metrics,
        "best": best,
        "classes": [str(c) for c in classes],
        "colors": [[int(v) for v in c] for c in colors] if colors is not None else None,
        "ignore_index": int(ignore_index),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "train_config": train_config,
        "torch_version": str(torch.__version__),
    }
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or corrupt, is not one of ours (the
            message says what it looks like), comes from a newer format version,
            or holds NaN or inf weights.

    Example:
        >>> ckpt = load_checkpoint("runs/demo/parsenet/best.pt")  # doctest: +SKIP
        >>> ckpt["step"], ckpt["model_config"]["context"]  # doctest: +SKIP
        (1500, 'global')
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a folder; expected a .pt file (e.g. {path / 'last.pt'})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        raise ValueError(f"cannot read checkpoint {str(path)!r}: it looks like {_describe_file(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an erf-toolkit checkpoint: it holds {_describe_object(ckpt)}; "
                         f"expected a file written by erf-train (format {CHECKPOINT_FORMAT!r})")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format version {version!r}; this erf-toolkit reads "
                         f"versions up to {CHECKPOINT_VERSION} (upgrade erf-toolkit)")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: missing {missing}")
    weights = ckpt["model"] if isinstance(ckpt["model"], dict) else {}
    bad = next((k for k, t in weights.items()
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"checkpoint {str(path)!r} holds NaN or inf weights (first in {bad!r}); expected finite "
                         "weights (a diverged run? use an earlier checkpoint)")
    return ckpt


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what goes with it.

    Attributes:
        model: the network; config: its ``ParseNetConfig``.
        classes, colors, ignore_index: the label set it was trained on (colors may be None).
        mean, std: the input normalisation it was trained with.
        step: optimizer steps done; metrics: the evaluation at that step; best: ``{"step", "metrics"}``.
        train_config: ``TrainConfig.to_dict()`` of the run (None for checkpoints written outside ``train``).
        path: the file.
    """

    model: nn.Module
    config: Any
    classes: list[str]
    colors: list[list[int]] | None
    ignore_index: int
    mean: list[float]
    std: list[float]
    step: int
    metrics: dict | None
    best: dict | None
    train_config: dict | None
    path: str


def load_trained_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model stored in a checkpoint, in eval mode on ``device``.

    Raises:
        ValueError: what :func:`load_checkpoint` refuses, an invalid model config, or weights that do not
            fit the model the config builds (the first missing, unexpected and mismatched keys).

    Example:
        >>> trained = load_trained_model("runs/demo/parsenet/best.pt")  # doctest: +SKIP
        >>> trained.model(torch.zeros(1, 3, 96, 96))["out"].shape, len(trained.classes)  # doctest: +SKIP
        (torch.Size([1, 11, 96, 96]), 11)
    """
    from parsenet.config import ParseNetConfig
    from parsenet.model import build_model

    ckpt = load_checkpoint(path)
    try:
        cfg = ParseNetConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} holds an invalid model config: {exc}") from None
    model = build_model(cfg)
    mismatch = state_dict_mismatch(model.state_dict(), ckpt["model"])
    if mismatch:
        raise ValueError(f"checkpoint {str(path)!r}: its weights do not fit the model its config builds ({mismatch})")
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return TrainedModel(model=model, config=cfg, classes=list(ckpt["classes"]), colors=ckpt.get("colors"),
                        ignore_index=int(ckpt.get("ignore_index", 255)), mean=list(ckpt["mean"]),
                        std=list(ckpt["std"]), step=int(ckpt["step"]), metrics=ckpt.get("metrics"),
                        best=ckpt.get("best"), train_config=ckpt.get("train_config"), path=str(path))


def _describe_file(path: Path, exc: BaseException) -> str:
    """Say what an unreadable file looks like, from its first bytes and the loader's complaint."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return f"a truncated or corrupt torch.save archive ({size} bytes; the zip directory is missing)"
        if any(n.endswith("data.pkl") for n in names):
            if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
                return ("a torch.save file holding arbitrary Python objects (a whole pickled model?), "
                        "not an erf-toolkit checkpoint")
            return f"a damaged torch.save archive ({size} bytes: {type(exc).__name__})"
        return f"a zip archive of {len(names)} files, not a torch checkpoint"
    if head[:1] == b"\x80":
        return "a raw pickle (an old torch.save format or another tool's file), not an erf-toolkit checkpoint"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "an image file, not a checkpoint"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras weights?), not a torch checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:8].hex(' ')} ({size} bytes), not a torch checkpoint"
    return f"a text file starting with {text[:30]!r}, not a torch checkpoint"


def _describe_object(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a bare state_dict of {len(keys)} tensors (first keys: {', '.join(map(str, keys[:3]))})"
        shown = ", ".join(map(repr, keys[:6])) + (", ..." if len(keys) > 6 else "")
        return f"a dict with keys [{shown}]"
    return f"a {type(obj).__name__}"
