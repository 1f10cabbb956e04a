"""Training and evaluation of ParseNet / FCN with the ParseNet (DeepLab) recipe.

Recipe (ParseNet Sec. 4; DeepLab-LargeFOV): SGD with momentum 0.9 and weight
decay 5e-4, the "poly" learning rate ``lr * (1 - step / steps) ** 0.9``, new
layers (classifiers, L2-norm scales) at 10x the base rate, pixel-averaged
cross-entropy that skips the void label, and gradient accumulation (the
authors trained at batch 1 with 8 images per update).

Determinism. Everything random is a function of ``(seed, step)`` rather than of
how the run got there, so an interrupted run that resumes from ``last.pt`` ends
with the same weights as an uninterrupted one (on CPU):

* data order: each epoch is a ``DistributedSampler`` permutation seeded by
  ``(seed, epoch)``; a resumed run skips the samples already consumed;
* augmentation: every item is drawn with all global generators seeded from
  ``(seed, epoch, index)`` (the transforms draw from torch's global RNG), so
  it does not matter which process or worker loads it;
* dropout: the global generator is re-seeded from ``(seed, step, rank)`` at
  every step.

Run folder (``cfg.out``): ``last.pt`` (every evaluation), ``best.pt`` (best
mean IoU), ``log.jsonl`` (one line per evaluation and every ``log_every``
steps a training line), ``summary.json`` (best and last metrics).

Multi-process: launched by ``torchrun --nproc-per-node N $(which erf-train) ...``
the trainer reads torchrun's environment, wraps the model in
``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA), gives each rank its
share of every batch, all-reduces the confusion matrix, and writes only on rank 0.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from erf.distributed import ProcessShard, join_process_group
from erf.util import atomic_write, check_field_types, check_path, did_you_mean, format_percent, parse_device
from parsenet.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from parsenet.config import ParseNetConfig
from parsenet.metrics import ConfusionMatrix, SegmentationMetrics

__all__ = ["TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_run_config", "read_train_options",
           "resolve_train_config"]

# Options that may change when a run resumes: they do not change what is computed.
_FREE_ON_RESUME = ("out", "resume", "device", "workers", "eval_every", "eval_batch_size", "log_every", "progress",
                   "pretrained")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Args:
        dataset: dataset spec for ``parsenet.data.build_dataset``: ``"scenes"``, ``"camvid:PATH"``,
            ``"voc:PATH"``, ``"siftflow:PATH"``, ``"pascal-context:PATH"``, ``"folder:PATH"``.
        dataset_options: extra keyword options of the dataset (scenes: ``size``, ``num_images``, ...).
        train_split, val_split: split names.
        model: the model; ``num_classes`` is always taken from the dataset.
        pretrained: initialise conv1_1 ... fc7 from ImageNet VGG16 (full width only), as the paper
            does: a local state-dict file in torchvision's layout, or a torchvision weights name
            such as ``"IMAGENET1K_V1"`` (torchvision downloads it once into ``$TORCH_HOME``).
            ``None`` trains from scratch. Ignored on resume (the checkpoint has the weights).
        steps: optimizer updates.
        batch_size: images per forward pass and process.
        accumulate: forward passes per update (effective batch ``batch_size * accumulate * processes``).
        lr: base learning rate; the head gets ``lr * head_lr_mult``.
        momentum, weight_decay: SGD (0.9 and 5e-4 in ParseNet / DeepLab). Biases, BatchNorm and
            L2-norm scales (every 1-D parameter) get no weight decay, as Caffe's ``decay_mult: 0``.
        poly_power: exponent of the poly schedule (0.9).
        head_lr_mult: learning-rate factor of new layers (10).
        crop_size: square training crop side, or None to keep each image's size.
        scale_range: random scale augmentation range (DeepLab: 0.5 to 2.0).
        eval_every: evaluate and checkpoint every this many steps, and at the end.
        eval_batch_size: images per forward pass in evaluation.
        seed: fixes initialisation, data order, augmentation and dropout.
        workers: DataLoader worker processes (results do not depend on it).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; under torchrun each rank uses
            its ``LOCAL_RANK`` GPU.
        amp: float16 autocast with gradient scaling on CUDA; ignored on CPU (always float32).
        out: run folder.
        resume: continue the run in ``out`` from ``last.pt``.
        log_every: write a training-loss line to ``log.jsonl`` every this many steps.
        progress: show a tqdm progress bar (rank 0 only).

    Example:
        >>> cfg = TrainConfig(dataset="scenes", model=ParseNetConfig(width=1 / 8, batch_norm=True),
        ...                   steps=200, out="runs/try")
        >>> summary = train(cfg)  # doctest: +SKIP
        >>> summary["best"]["metrics"]["mean_iou"]  # doctest: +SKIP
        0.71
    """

    dataset: str = "scenes"
    dataset_options: dict = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    model: ParseNetConfig = field(default_factory=ParseNetConfig)
    pretrained: str | None = None
    steps: int = 1000
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0
    crop_size: int | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    eval_every: int = 500
    eval_batch_size: int = 8
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    amp: bool = True
    out: str = "runs/train"
    resume: bool = False
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        check_path(self.out, "TrainConfig: out")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ParseNetConfig.from_dict(self.model))
        if not isinstance(self.model, ParseNetConfig):
            raise TypeError(f"model must be a ParseNetConfig or a dict of its fields, got {type(self.model).__name__}")
        object.__setattr__(self, "dataset_options", dict(self.dataset_options or {}))
        object.__setattr__(self, "out", str(self.out))
        try:
            lo, hi = (float(v) for v in self.scale_range)
        except (TypeError, ValueError):
            raise ValueError(f"scale_range {self.scale_range!r} must be two numbers (low, high)") from None
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range {self.scale_range!r} must satisfy 0 < low <= high, e.g. (0.5, 2.0)")
        object.__setattr__(self, "scale_range", (lo, hi))
        for name in ("steps", "batch_size", "accumulate", "eval_every", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size < 1):
            raise ValueError(f"crop_size must be a positive integer or None (no crop), got {self.crop_size!r}")
        # every other field's type (a string for lr, say) and finite numbers, before the comparisons below
        check_field_types(TrainConfig, {f.name: getattr(self, f.name) for f in fields(self)}, "TrainConfig:")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.poly_power >= 0:
            raise ValueError(f"poly_power must be >= 0, got {self.poly_power!r}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {self.head_lr_mult!r}")
        parse_device(self.device, present=False)  # the spelling; train() checks the machine

    def to_dict(self) -> dict:
        """Plain dict for checkpoints, JSON and TOML (the model as a nested dict)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict()
        d["scale_range"] = list(self.scale_range)
        d["dataset_options"] = dict(self.dataset_options)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; an unknown key is an error with close matches."""
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"unknown training option {key!r}{did_you_mean(key, known)}; "
                                 f"expected one of: {', '.join(known)}")
        return cls(**d)


def load_run_config(out: str | os.PathLike) -> TrainConfig:
    """The training config stored in ``out/last.pt``, to resume a run without repeating its options."""
    path = Path(out) / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: no last.pt there (start the run without --resume)")
    saved = load_checkpoint(path).get("train_config")
    if not saved:
        raise ValueError(f"{str(path)!r} holds no training config to resume from")
    return TrainConfig.from_dict(saved)


def read_train_options(path: str | os.PathLike) -> dict:
    """The options in a TOML file, each checked against :class:`TrainConfig` (and ``[model]`` against
    :class:`ParseNetConfig`); errors name the file and the field: ``run.toml: width = "wide"; expected a number``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = check_path(path, "config file")
    if path.is_dir():
        raise IsADirectoryError(f"config file {str(path)!r} is a folder; expected a TOML file")
    try:
        with open(path, "rb") as f:
            options = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: it is not UTF-8 text") from None
    known = [f.name for f in fields(TrainConfig)]
    for key in options:
        if key not in known:
            raise ValueError(f"{path}: unknown training option {key!r}{did_you_mean(key, known)}; "
                             f"expected one of: {', '.join(known)}")
    check_field_types(TrainConfig, {k: v for k, v in options.items() if k != "model"}, f"{path}:")
    if "model" in options:
        check_field_types(ParseNetConfig, options["model"], f"{path}: [model]")
    return options


def resolve_train_config(*layers: dict, resume: bool = False) -> TrainConfig:
    """Merge option dicts left to right (defaults < preset < TOML < command line) into a :class:`TrainConfig`.

    The nested ``model`` and ``dataset_options`` tables merge key by key, except that a layer naming a dataset
    of another kind (``folder:`` after the preset's ``scenes``) drops the dataset options set before it: they
    belong to the other dataset.
    """
    from parsenet.presets import merge_options

    merged: dict = {}
    for layer in layers:
        kind = str(layer.get("dataset", "")).split(":", 1)[0]
        if kind and kind != str(merged.get("dataset", "scenes")).split(":", 1)[0]:
            merged.pop("dataset_options", None)
        merged = merge_options(merged, layer)
    return TrainConfig.from_dict({**merged, "resume": resume})


# ---------------------------------------------------------------------------------------------------------------------
# Data: a resumable stream of (epoch, index) keys and items drawn with per-item seeds
# ---------------------------------------------------------------------------------------------------------------------

def _seed_of(*key: int) -> int:
    """A well-mixed 63-bit seed from integer parts (numpy's SeedSequence hashing)."""
    a, b = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return (int(a) << 31) ^ int(b)


class _ResumableSampler(Sampler):
    """Endless stream of ``(epoch, index)`` for one rank, starting ``start`` samples in.

    Each epoch is the ``DistributedSampler`` permutation for ``(seed, epoch)``
    (so ranks see disjoint shares of the data); the stream position after
    ``k`` samples is ``divmod(k, samples_per_epoch)``, which lets a resumed
    run skip exactly what the interrupted one had consumed.
    """

    def __init__(self, n: int, *, seed: int, rank: int, world: int, start: int):
        self.base = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = divmod(self.start, len(self.base))
        while True:
            self.base.set_epoch(epoch)
            for k, index in enumerate(self.base):
                if k >= skip:
                    yield epoch, index
            epoch, skip = epoch + 1, 0


class _SeededItems(torch.utils.data.Dataset):
    """``dataset[index]`` drawn with torch, numpy and python generators seeded from ``(seed, epoch, index)``.

    The generators of the calling process are restored afterwards, so loading in
    the main process does not disturb the training RNG.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = _seed_of(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------

def _collate_list(batch):
    return batch


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    amp: bool = False,
    progress: bool = False,
) -> SegmentationMetrics:
    """Segmentation metrics of ``model`` on every item of ``dataset`` (no random transform).

    Under ``torch.distributed`` each rank evaluates every ``world``-th image and
    the confusion matrices are summed, so the result equals a single-process
    evaluation. Images of different sizes are never padded into one batch
    (padding would change ParseNet's global average); they run in separate passes.

    Args:
        model: returns ``{"out": (B, K, H, W) scores}``; a DDP wrapper is unwrapped.
        dataset: items ``(image (3, H, W) float, labels (H, W) int64)``, with ``.info``.
        batch_size: images per forward pass.
        device: where to run.
        workers: DataLoader worker processes.
        amp: float16 autocast (CUDA only).
        progress: show a progress bar.

    Returns:
        SegmentationMetrics over the whole dataset (void pixels ignored).

    Example:
        >>> evaluate(model, build_dataset("scenes", "val", num_images=20)).mean_iou  # doctest: +SKIP
        0.74
    """
    model = getattr(model, "module", model)
    info = dataset.info
    device = torch.device(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    indices = list(range(rank, len(dataset), world))  # no padding: every image counted exactly once
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate_list)
    cm = ConfusionMatrix(info.num_classes, ignore_index=info.ignore_index, device=device)
    was_training = model.training
    model.eval()
    if progress and rank == 0:
        from tqdm import tqdm

        loader = tqdm(loader, desc="evaluating", unit="batch", leave=False)
    try:
        for batch in loader:
            by_size: dict[tuple[int, int], list] = {}
            for image, labels in batch:
                by_size.setdefault(tuple(labels.shape[-2:]), []).append((image, labels))
            for items in by_size.values():
                images = torch.stack([im for im, _ in items]).to(device)  # (B, 3, H, W)
                labels = torch.stack([lab for _, lab in items]).to(device)  # (B, H, W)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                    scores = model(images)["out"]  # (B, K, H, W)
                cm.update(scores.argmax(1), labels)
    finally:
        model.train(was_training)
    cm.all_reduce()
    return cm.compute()


def evaluate_checkpoint(
    path: str | os.PathLike,
    dataset: str | None = None,
    split: str = "val",
    *,
    dataset_options: dict | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = False,
    ignore_class_names: bool = False,
    log=print,
) -> tuple[SegmentationMetrics, tuple[str, ...]]:
    """Evaluate a checkpoint written by :func:`train` on a dataset split.

    Args:
        path: the checkpoint.
        dataset: dataset spec; default the one the checkpoint was trained on.
        split: split name.
        dataset_options: dataset keyword options; default the training run's when ``dataset`` is
            the training dataset, else none.
        batch_size, device, workers, progress: as in :func:`evaluate`.
        ignore_class_names: evaluate even when the dataset's class names differ from the checkpoint's
            (same number of classes); both lists then go to ``log``. Default: refuse.
        log: where that note goes.

    Returns:
        ``(metrics, class names)``.

    Example:
        >>> metrics, classes = evaluate_checkpoint("runs/demo/parsenet/best.pt", split="val")  # doctest: +SKIP
    """
    from parsenet.checkpoint import load_trained_model
    from parsenet.data import build_dataset

    dev = parse_device(device)
    loaded = load_trained_model(path, device=dev)
    trained = loaded.train_config or {}
    if dataset is None:
        if not trained.get("dataset"):
            raise ValueError(f"checkpoint {str(path)!r} does not say which dataset it was trained on; pass --dataset")
        dataset = trained["dataset"]
    if dataset_options is None:
        dataset_options = dict(trained.get("dataset_options") or {}) if dataset == trained.get("dataset") else {}
    ds = build_dataset(dataset, split, train=False, seed=int(trained.get("seed", 0)), **dataset_options)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of dataset {dataset!r} is empty; expected at least one image")
    if len(ds.info.classes) != loaded.config.num_classes:
        raise ValueError(f"dataset {dataset!r} has {len(ds.info.classes)} classes but the checkpoint's model predicts "
                         f"{loaded.config.num_classes} ({', '.join(loaded.classes)})")
    theirs, ours = list(loaded.classes), list(ds.info.classes)
    if theirs != ours:
        both = f"checkpoint: {', '.join(theirs)}; dataset {dataset!r}: {', '.join(ours)}"
        if not ignore_class_names:
            raise ValueError(f"dataset {dataset!r} names its classes differently from the checkpoint ({both}); "
                             "pass --ignore-class-names to evaluate anyway")
        log(f"class names differ ({both}); evaluating anyway as asked")
    metrics = evaluate(loaded.model, ds, batch_size=batch_size, device=dev, workers=workers, progress=progress)
    return metrics, ds.info.classes


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------

def _setup_distributed(device: torch.device) -> tuple[ProcessShard, torch.device]:
    """Join torchrun's process group when its environment is there (NCCL on CUDA, gloo on CPU); else one process."""
    shard = join_process_group("nccl" if device.type == "cuda" else "gloo")
    if shard.world > 1 and device.type == "cuda":
        device = torch.device("cuda", shard.local_rank)
        torch.cuda.set_device(device)
    return shard, device


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """SGD groups: backbone at ``lr``, head at ``lr * head_lr_mult``; 1-D parameters without weight decay."""
    from parsenet.model import parameter_groups

    groups = []
    for part, params in parameter_groups(model).items():
        lr = cfg.lr * (cfg.head_lr_mult if part == "head" else 1.0)
        decay = [p for p in params if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in params if p.requires_grad and p.dim() <= 1]
        for name, ps, wd in ((f"{part}", decay, cfg.weight_decay), (f"{part}/no_decay", no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": name})
    return groups


def _segmentation_loss(outputs: dict, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixel-averaged cross-entropy of the fused scores plus, with ``branch_loss``, each branch's own."""
    scores = outputs["out"]  # (B, K, H, W)
    if not (labels != ignore_index).any():  # an all-void crop: a zero loss that still reaches every parameter
        return scores.sum() * 0.0
    loss = F.cross_entropy(scores, labels, ignore_index=ignore_index)
    for aux in (outputs.get("aux") or {}).values():  # (B, K, h, w) per branch
        if aux.shape[-2:] != labels.shape[-2:]:
            aux = F.interpolate(aux, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + F.cross_entropy(aux, labels, ignore_index=ignore_index)
    return loss


def _check_resumable(ckpt: dict, model_cfg: ParseNetConfig, cfg: TrainConfig, path: Path) -> None:
    saved_model = ckpt["model_config"]
    now_model = model_cfg.to_dict()
    diffs = [f"{k}: {saved_model.get(k)!r} in the checkpoint, {now_model.get(k)!r} now"
             for k in sorted(set(saved_model) | set(now_model)) if saved_model.get(k) != now_model.get(k)]
    if diffs:
        raise ValueError(f"cannot resume from {str(path)!r}: it holds another model config ({'; '.join(diffs)}); "
                         "resume with the same model options, or start a new run with another --out")
    saved = ckpt.get("train_config") or {}
    now = cfg.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in now
             if k not in _FREE_ON_RESUME and k != "model" and k in saved and saved[k] != now[k]]
    if diffs:
        raise ValueError(f"cannot resume from {str(path)!r}: it was trained with other settings ({'; '.join(diffs)}); "
                         "a resumed run must repeat them (or leave them out to reuse the saved ones)")


def _next_batch(batches: Iterator):
    """The next training batch; a data error raised in a worker keeps its own one-line message."""
    try:
        return next(batches)
    except (ValueError, OSError) as exc:
        text = str(exc)
        if "DataLoader worker" not in text:
            raise
        last = text.strip().splitlines()[-1]  # "ValueError: mask x.png has label value(s) ..."
        raise type(exc)(last.split(": ", 1)[-1]) from None


def _json_line(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (and any half-written last line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


def train(cfg: TrainConfig) -> dict:
    """Train a ParseNet / FCN as ``cfg`` says, evaluating and checkpointing into ``cfg.out``.

    Args:
        cfg: the run (see :class:`TrainConfig`).

    Returns:
        The summary also written to ``summary.json``: ``best`` and ``last`` (``{"step", "metrics"}``),
        ``classes``, ``model_config``, ``train_config``, ``seconds``, ``images_per_second``.

    Raises:
        FileExistsError: ``cfg.out`` already holds a run and ``cfg.resume`` is false.
        FileNotFoundError: ``cfg.resume`` but there is no ``last.pt`` to resume from.
        ValueError: bad data (the dataset names the file), an empty split, or a checkpoint of
            another model config or other settings to resume from.
    """
    from parsenet.data import build_dataset
    from parsenet.model import build_model

    device = parse_device(cfg.device)
    ddp, device = _setup_distributed(device)
    try:
        return _train(cfg, device, ddp, build_dataset, build_model)
    finally:
        ddp.leave()


def _train(cfg: TrainConfig, device: torch.device, ddp: ProcessShard, build_dataset, build_model) -> dict:
    out = Path(cfg.out)
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "log.jsonl"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"run folder {str(out)!r} is a file; expected a folder")
    if cfg.resume and not last_path.exists():
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: no last.pt there (start the run without --resume)")
    if not cfg.resume and last_path.exists():
        raise FileExistsError(f"{str(out)!r} already holds a run (last.pt); pass --resume to continue it "
                              "or choose another --out")

    train_set = build_dataset(cfg.dataset, cfg.train_split, train=True, crop_size=cfg.crop_size,
                              scale_range=cfg.scale_range, seed=cfg.seed, **cfg.dataset_options)
    val_set = build_dataset(cfg.dataset, cfg.val_split, train=False, seed=cfg.seed, **cfg.dataset_options)
    for split, ds in ((cfg.train_split, train_set), (cfg.val_split, val_set)):
        if len(ds) == 0:
            raise ValueError(f"split {split!r} of dataset {cfg.dataset!r} is empty; expected at least one image")
    info = train_set.info
    if val_set.info.classes != info.classes:
        raise ValueError(f"splits {cfg.train_split!r} and {cfg.val_split!r} have different classes")
    model_cfg = replace(cfg.model, num_classes=info.num_classes)

    torch.manual_seed(cfg.seed)  # initialisation: the same on every rank
    model = build_model(model_cfg)
    if cfg.pretrained and not cfg.resume:
        from parsenet.pretrained import load_vgg16_backbone

        load_vgg16_backbone(model, cfg.pretrained, progress=ddp.main and cfg.progress)
    model.to(device)
    optimizer = torch.optim.SGD(_param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.steps, power=cfg.poly_power)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, best = 0, None
    if cfg.resume:
        ckpt = load_checkpoint(last_path)
        _check_resumable(ckpt, model_cfg, cfg, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and use_amp:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start, best = int(ckpt["step"]), ckpt.get("best")
        if ddp.main:
            _truncate_log(log_path, start)
    elif ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    ddp.barrier()

    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    per_step = cfg.batch_size * cfg.accumulate  # samples of this rank per update
    sampler = _ResumableSampler(len(train_set), seed=cfg.seed, rank=ddp.rank, world=ddp.world, start=start * per_step)
    loader = DataLoader(_SeededItems(train_set, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and ddp.main), dynamic_ncols=True,
               desc=out.name or "train", unit="step")
    t0, images_done, last_metrics, history_time = time.perf_counter(), 0, None, time.perf_counter()
    summary: dict = {}
    try:
        for step in range(start, cfg.steps):
            net.train()
            torch.manual_seed(_seed_of(cfg.seed, 1, step, ddp.rank))  # dropout depends on (seed, step) only
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.accumulate):
                images, labels = _next_batch(batches)  # (B, 3, H, W), (B, H, W)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                sync = micro == cfg.accumulate - 1 or ddp.world == 1
                with contextlib.nullcontext() if sync else net.no_sync():
                    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        loss = _segmentation_loss(net(images), labels, info.ignore_index) / cfg.accumulate
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            if not math.isfinite(step_loss):
                raise ValueError(f"training diverged at step {step + 1}: loss {step_loss}; lower the learning "
                                 f"rate (now {cfg.lr}); last.pt keeps the last good step")
            scaler.step(optimizer)
            scaler.update()
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            done = step + 1
            images_done += per_step * ddp.world
            rate = images_done / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr_now:.2e}", img_s=f"{rate:.1f}")
            if ddp.main and (done % cfg.log_every == 0 or done == cfg.steps):
                _json_line(log_path, {"type": "train", "step": done, "loss": step_loss, "lr": lr_now,
                                      "images_per_second": rate})

            if done % cfg.eval_every == 0 or done == cfg.steps:
                if ddp.world > 1:  # BatchNorm statistics drift apart per rank: evaluate rank 0's, the saved model
                    for buffer in model.buffers():
                        dist.broadcast(buffer, 0)
                metrics = evaluate(model, val_set, batch_size=cfg.eval_batch_size, device=device,
                                   workers=cfg.workers, amp=use_amp)
                last_metrics = {"step": done, "metrics": metrics.to_dict()}
                is_best = best is None or _better(metrics.mean_iou, best["metrics"]["mean_iou"])
                if is_best:
                    best = last_metrics
                if ddp.main:
                    common = dict(model=model, step=done, classes=info.classes, colors=info.colors,
                                  ignore_index=info.ignore_index, mean=info.mean, std=info.std,
                                  model_config=model_cfg, optimizer=optimizer, scheduler=scheduler,
                                  scaler=scaler if use_amp else None, train_config=cfg.to_dict())
                    save_checkpoint(last_path, metrics=last_metrics["metrics"], best=best, **common)
                    if is_best:
                        save_checkpoint(best_path, metrics=last_metrics["metrics"], best=best, **common)
                    _json_line(log_path, {"type": "eval", "step": done, "split": cfg.val_split,
                                          "metrics": last_metrics["metrics"], "best": is_best})
                    summary = {
                        "finished": done == cfg.steps, "best": best, "last": last_metrics,
                        "classes": list(info.classes), "dataset": cfg.dataset,
                        "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
                        "processes": ddp.world, "seconds_this_session": time.perf_counter() - history_time,
                        "images_per_second": rate,
                    }
                    _write_json(out / "summary.json", summary)
                    bar.write(f"step {done}: mIoU {format_percent(metrics.mean_iou)}, pixel acc {format_percent(metrics.pixel_acc)}"
                              + (" (best)" if is_best else ""))
                ddp.barrier()
    finally:
        bar.close()
    if not summary:  # nothing left to do (a finished run resumed) or a non-writing rank
        summary = {"finished": True, "best": best, "last": last_metrics, "classes": list(info.classes),
                   "dataset": cfg.dataset, "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
                   "processes": ddp.world}
        if ddp.main and (out / "summary.json").exists():
            summary = json.loads((out / "summary.json").read_text())
    return summary


def _better(new: float, old: float | None) -> bool:
    if old is None or (isinstance(old, float) and math.isnan(old)):
        return not math.isnan(new)
    return not math.isnan(new) and new > old


