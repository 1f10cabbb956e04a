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
reused, an interrupted one continues from its own state file. The probes run
through :func:`erf.runner.run_probe`, as in ``erf-probe``: each result folder
gets ``provenance.json``, and a resumed run refuses a result made from another
model, other images or other settings.

Folder layout under ``out``::

    train/fcn/, train/parsenet/                   erf-train run folders (best.pt, log.jsonl, summary.json)
    probe/<model>/<layer>/<method>/               erf.ERFResult folders (result.npz, summary.json, provenance.json)
"""
from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from erf.graph import truncate
from erf.images import ImageSet
from erf.result import ERFResult
from erf.runner import METHODS, ProbeSettings, run_probe
from parsenet.checkpoint import load_trained_model
from parsenet.data import build_dataset
from parsenet.presets import merge_options, preset
from parsenet.trainer import TrainConfig, train

__all__ = ["DemoConfig", "MODELS", "run_experiment", "probe_images", "probe_settings", "result_dir"]

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
    return Path(out) / "probe" / model.lower() / layer / method  # run_experiment writes there


def probe_images(cfg: DemoConfig) -> tuple[ImageSet, list]:
    """The validation scenes that are probed, with the dataset's normalisation, and their raw (image, labels) pairs."""
    val = build_dataset("scenes", "val", seed=cfg.seed, **cfg.dataset_options())
    n = min(cfg.probe_images, len(val))
    images = torch.stack([val[i][0] for i in range(n)])  # (N, 3, H, W), normalised with val.info's mean and std
    return ImageSet(images, tuple(val.name(i) for i in range(n)), val.info.mean, val.info.std), \
        [val.raw(i) for i in range(n)]


def _strongest_center_channel(model, layer: str, images: torch.Tensor) -> int:
    """The channel of ``layer`` whose centre unit responds most on average: the neuron shown in Fig. 2."""
    with torch.inference_mode():
        act = truncate(model, layer)(images)  # (N, C, h, w)
    h, w = act.shape[-2:]
    return int(act[:, :, h // 2, w // 2].mean(0).argmax())


def probe_settings(cfg: DemoConfig, n_images: int, neuron=None) -> ProbeSettings:
    """The demo's probe options: its occluder, top-K and seed; every other option at erf-probe's default."""
    return ProbeSettings(patch=cfg.patch, stride=cfg.stride, top_k=min(cfg.top_k, n_images), neuron=neuron,
                         batch_size=cfg.batch_size, seed=cfg.seed)


def _add_display(path: Path, model, images: ImageSet, raw: list) -> ERFResult:
    """Store what the Fig. 2 panels show next to a neuron's ERF: the images and the channel's activation."""
    result = ERFResult.load(path)
    if result.activations is None:  # not yet added (a result kept from a resumed run has them)
        with torch.inference_mode():
            act = truncate(model, result.layer)(images.images)[:, result.neuron[0]]  # (N, h, w)
        result.activations = act.numpy().astype("float32")
        result.display_images = np.stack([r[0] for r in raw])  # (N, H, W, 3) uint8
        result.save(path)
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

    images, raw = probe_images(cfg)
    results: dict[tuple[str, str, str], ERFResult] = {}
    for name, run in runs.items():
        model = load_trained_model(run / "best.pt").model
        probe_dir = out / "probe" / name.lower()
        label = f"{name} ({run / 'best.pt'})"
        probe = functools.partial(run_probe, model, images, out=probe_dir, model_name=label, progress=progress,
                                  log=lambda m: log(f"[demo] {name} {m}"), table=None)
        log(f"[demo] probing {name} {', '.join(cfg.layers)}: occlusion over {len(images)} images, then gradient")
        probe(cfg.layers, methods=METHODS, settings=probe_settings(cfg, len(images)), resume=_has_files(probe_dir),
              folder="{layer}/{method}".format)
        for layer in cfg.layers:
            for method in METHODS:
                results[name, layer, method] = ERFResult.load(result_dir(out, name, layer, method))
        channel = _strongest_center_channel(model, "fc7", images.images)
        log(f"[demo] probing {name} fc7 neuron (channel {channel}, centre unit) on every image")
        probe(["fc7"], settings=probe_settings(cfg, len(images), neuron=(channel, "center")), resume=True,
              folder="{layer}/neuron".format)
        results[name, "fc7", "neuron"] = _add_display(result_dir(out, name, "fc7", "neuron"), model, images, raw)
    return {"runs": runs, "results": results, "images": list(images.names)}


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())
