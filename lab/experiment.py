"""The ParseNet experiment end to end: train FCN and ParseNet alike, then probe both.

This is what ``erf-demo`` (and ``make demo``) runs on the built-in context
scenes, where the class of an object depends on a cue far away from it:

1. train the FCN baseline (``context="none"``) and ParseNet (``context="global"``)
   with the same compact backbone, data, seed and budget;
2. probe the same layers of both best checkpoints on the same validation images,
   by occlusion (Zhou et al. 2015: every unit of the layer, top-K images) and by
   gradient (Luo et al. 2016: the centre position), plus one fc7 neuron on every
   image for the ParseNet Fig. 2 panels.

Every step is resumable: a finished training run or probe result is kept and
reused, an interrupted one continues from its own state file.

Folder layout under ``out``::

    train/fcn/, train/parsenet/                   erf-train run folders (best.pt, log.jsonl, summary.json)
    probe/<model>/<layer>/<method>/               erf.ERFResult folders (result.npz, summary.json)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from erf.gradient import probe_gradient
from erf.graph import truncate
from erf.occlusion import probe_occlusion
from erf.result import ERFResult
from parsenet.checkpoint import load_model_from_checkpoint
from parsenet.data import build_dataset
from parsenet.presets import merge_options, preset
from parsenet.trainer import TrainConfig, train

__all__ = ["DemoConfig", "MODELS", "run_experiment", "probe_images", "result_dir"]

# Display name -> context setting: the two models differ only in the context branch.
MODELS = {"FCN": "none", "ParseNet": "global"}


@dataclass(frozen=True)
class DemoConfig:
    """Size and budget of the demo experiment.

    Args:
        out: the experiment folder.
        size: scene side in pixels.
        train_images, val_images: scenes per split.
        steps: SGD updates per model (the ``demo`` preset's batch size and schedule).
        probe_images: validation scenes probed per model and layer.
        layers: layers probed in both models (paper names).
        top_k: images per unit in the occlusion probe.
        patch, stride: occluder side and grid step (Zhou et al. 2015: 11 and 3).
        batch_size: occluded copies per forward pass.
        seed: one seed for data, initialisation, noise.
    """

    out: str = "runs/demo"
    size: int = 96
    train_images: int = 2000
    val_images: int = 200
    steps: int = 1000
    probe_images: int = 12
    layers: tuple[str, ...] = ("conv5_3", "fc7", "score")
    top_k: int = 5
    patch: int = 11
    stride: int = 3
    batch_size: int = 128
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kwargs) -> "DemoConfig":
        """A one-minute version for smoke tests: few images, few steps, a coarser occluder grid."""
        base = dict(size=64, train_images=32, val_images=4, steps=8, probe_images=2, top_k=2, stride=8)
        return cls(**{**base, **kwargs})

    def dataset_options(self) -> dict:
        """The ``demo`` preset's scene options at this config's size and image counts."""
        return {**preset("demo")["dataset_options"], "size": self.size,
                "num_images": {"train": self.train_images, "val": self.val_images}}


def train_config(cfg: DemoConfig, name: str, *, progress: bool = True) -> TrainConfig:
    """The ``demo`` preset for model ``name`` (a key of :data:`MODELS`) at ``cfg``'s size and budget."""
    run = Path(cfg.out) / "train" / name.lower()
    options = merge_options(preset("demo"), {
        "dataset_options": cfg.dataset_options(),
        "model": {"context": MODELS[name]},
        "steps": cfg.steps,
        "eval_every": max(1, cfg.steps // 3),
        "seed": cfg.seed,
        "out": str(run),
        "resume": (run / "last.pt").exists(),
        "progress": progress,
    }, cfg.extra)
    return TrainConfig.from_dict(options)


def _finished(run: Path) -> bool:
    """A training run that reached its last step (``summary.json`` is also written at every evaluation)."""
    try:
        return bool(json.loads((run / "summary.json").read_text()).get("finished")) and (run / "best.pt").exists()
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def result_dir(out: str | Path, model: str, layer: str, method: str) -> Path:
    """Where the probe result of ``model`` / ``layer`` / ``method`` lives (method: occlusion, gradient, neuron)."""
    return Path(out) / "probe" / model.lower() / layer / method


def probe_images(cfg: DemoConfig) -> tuple[torch.Tensor, list[str], list]:
    """The validation scenes that are probed: (N, 3, H, W) normalised, their names, and raw (image, labels) pairs."""
    val = build_dataset("scenes", "val", seed=cfg.seed, **cfg.dataset_options())
    n = min(cfg.probe_images, len(val))
    images = torch.stack([val[i][0] for i in range(n)])
    return images, [val.name(i) for i in range(n)], [val.raw(i) for i in range(n)]


def _strongest_center_channel(model, layer: str, images: torch.Tensor) -> int:
    """The channel of ``layer`` whose centre unit responds most on average: the neuron shown in Fig. 2."""
    with torch.inference_mode():
        act = truncate(model, layer)(images)  # (N, C, h, w)
    h, w = act.shape[-2:]
    return int(act[:, :, h // 2, w // 2].mean(0).argmax())


def _probe(path: Path, run, *, finish=None) -> ERFResult:
    """Load the finished result in ``path``, or run the probe (resumable through its state file) and save it."""
    if (path / "summary.json").exists():
        return ERFResult.load(path)
    path.mkdir(parents=True, exist_ok=True)
    result = run(path / "state.pt")
    if finish is not None:
        finish(result)
    result.save(path)
    (path / "state.pt").unlink(missing_ok=True)
    return result


def run_experiment(cfg: DemoConfig, *, overwrite: bool = False, resume: bool = False,
                   progress: bool = True, log=print) -> dict:
    """Train both models and probe both; see the module docstring for the folder layout.

    Args:
        cfg: the experiment's size and budget.
        overwrite: delete an existing ``cfg.out`` first.
        resume: continue in an existing ``cfg.out``, keeping what is finished.
        progress: show progress bars.
        log: where one-line progress messages go.

    Returns:
        ``{"runs": {name: run folder}, "results": {(name, layer, method): ERFResult}, "images": names}``.

    Raises:
        FileExistsError: ``cfg.out`` exists and holds files, and neither ``overwrite`` nor ``resume`` is set.
    """
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise FileExistsError(f"output folder {str(out)!r} exists; pass --overwrite to start again "
                                  "or --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)

    runs = {}
    for name in MODELS:
        tcfg = train_config(cfg, name, progress=progress)
        runs[name] = Path(tcfg.out)
        if _finished(runs[name]):
            log(f"[demo] {name}: training finished earlier, kept ({runs[name]})")
            continue
        log(f"[demo] training {name} (context={MODELS[name]}) for {cfg.steps} steps -> {runs[name]}")
        train(tcfg)

    images, names, raw = probe_images(cfg)

    def add_display(model, layer: str):
        """Keep what the Fig. 2 panels show next to a neuron's ERF: the images and the channel's activation."""
        def finish(result: ERFResult) -> None:
            with torch.inference_mode():
                act = truncate(model, layer)(images)[:, result.neuron[0]]  # (N, h, w)
            result.activations = act.numpy().astype("float32")
            result.display_images = np.stack([r[0] for r in raw])  # (N, H, W, 3) uint8
        return finish

    common = dict(names=names, batch_size=cfg.batch_size)
    results: dict[tuple[str, str, str], ERFResult] = {}
    for name, run in runs.items():
        model, _ = load_model_from_checkpoint(run / "best.pt")
        label = f"{name} ({run / 'best.pt'})"
        for layer in cfg.layers:
            log(f"[demo] probing {name} {layer}: occlusion over {len(images)} images, then gradient")
            results[name, layer, "occlusion"] = _probe(
                result_dir(out, name, layer, "occlusion"),
                lambda state: probe_occlusion(model, layer, images, patch=cfg.patch, stride=cfg.stride,
                                              seed=cfg.seed, top_k=min(cfg.top_k, len(images)),
                                              model_name=label, state_path=state, progress=progress, **common))
            results[name, layer, "gradient"] = _probe(
                result_dir(out, name, layer, "gradient"),
                lambda state: probe_gradient(model, layer, images, position="center", seed=cfg.seed,
                                             model_name=label, **common))
        channel = _strongest_center_channel(model, "fc7", images)
        log(f"[demo] probing {name} fc7 neuron (channel {channel}, centre unit) on every image")
        results[name, "fc7", "neuron"] = _probe(
            result_dir(out, name, "fc7", "neuron"),
            lambda state: probe_occlusion(model, "fc7", images, patch=cfg.patch, stride=cfg.stride, seed=cfg.seed,
                                          neuron=(channel, "center"), model_name=label, state_path=state,
                                          progress=progress, **common),
            finish=add_display(model, "fc7"))
    return {"runs": runs, "results": results, "images": names}
