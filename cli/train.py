"""``erf-train`` and ``erf-eval``: train ParseNet / FCN, and evaluate a checkpoint.

Options are merged as: defaults < ``--preset`` < ``--config FILE.toml`` < options
on the command line. ``--resume`` starts from the run's own saved settings, so
``erf-train --resume --out DIR`` is enough to continue a run.

Several processes: ``torchrun --nproc-per-node 2 $(which erf-train) --preset demo --out runs/ddp``
(or ``python -m torch.distributed.run --nproc-per-node 2 -m cli.train ...``).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import click

from cli._common import FILE, PATH, command, friendly_errors
from parsenet.config import ParseNetConfig
from parsenet.metrics import metrics_table
from parsenet.presets import PRESETS, preset
from parsenet.trainer import evaluate_checkpoint, load_run_config, read_train_options, resolve_train_config, train
from erf.util import format_percent

__all__ = ["train_command", "eval_command"]

# command-line options that are ParseNetConfig fields (the rest are TrainConfig fields); num_classes comes from the data
_MODEL_OPTIONS = tuple(f.name for f in fields(ParseNetConfig) if f.name != "num_classes")


def _parse_value(text: str):
    """``KEY=VALUE`` values: TOML literals (``96``, ``0.5``, ``true``, ``"x"``), else the plain string."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _crop(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a positive integer or 'none'") from None


def _dataset_options(items) -> dict:
    """``--dataset-option KEY=VALUE`` pairs as a dict, each value parsed as a TOML value when it is one."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--dataset-option")
        options[key.strip()] = _parse_value(value.strip())
    return options


@command("erf-train", show_default=True)
@click.option("--preset", "preset_name", help=f"start from a named preset: {', '.join(PRESETS)}")
@click.option("--config", "config_file", type=FILE,
              help="TOML file of TrainConfig options ([model] and [dataset_options] tables)")
@click.option("--dataset", help="dataset spec: scenes, camvid:PATH, voc:PATH, siftflow:PATH, pascal-context:PATH, folder:PATH")
@click.option("--dataset-option", "dataset_option", multiple=True, metavar="KEY=VALUE",
              help="dataset keyword option, repeatable (scenes: size=96, num_images=1200)")
@click.option("--train-split", help="training split name")
@click.option("--val-split", help="validation split name")
@click.option("--backbone", help="vgg16-largefov or vgg16-fcn32s")
@click.option("--width", type=float, help="channel width multiplier (1.0 paper, 0.125 compact)")
@click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm after every conv")
@click.option("--context", help="global (ParseNet) or none (FCN baseline)")
@click.option("--fusion", help="late or early fusion of the global feature")
@click.option("--normalize/--no-normalize", default=None, help="L2-normalise fused features")
@click.option("--scale-init", type=float, help="initial L2-norm scale (ParseNet: 10)")
@click.option("--learn-scale/--fixed-scale", default=None, help="learn the L2-norm scale")
@click.option("--context-dropout", type=float, help="dropout on the global feature (ParseNet: 0.3)")
@click.option("--extra-layers", help="comma list of lower layers to fuse, e.g. conv4_3,conv5_3")
@click.option("--upsample", help="bilinear or deconv")
@click.option("--branch-loss/--no-branch-loss", default=None, help="a loss on each late-fusion branch too")
@click.option("--pretrained", help="ImageNet VGG16 init: local state-dict file or torchvision weights name")
@click.option("--steps", type=int, help="optimizer updates")
@click.option("--batch-size", type=int, help="images per forward pass and process")
@click.option("--accumulate", type=int, help="forward passes per update")
@click.option("--lr", type=float, help="base learning rate (head: x head-lr-mult)")
@click.option("--momentum", type=float, help="SGD momentum")
@click.option("--weight-decay", type=float, help="SGD weight decay")
@click.option("--poly-power", type=float, help="poly schedule exponent")
@click.option("--head-lr-mult", type=float, help="learning-rate factor of new layers")
@click.option("--crop-size", help="square training crop side, or 'none'")
@click.option("--scale-range", type=float, nargs=2, default=None, help="random scale range LOW HIGH")
@click.option("--eval-every", type=int, help="evaluate and checkpoint every N steps")
@click.option("--eval-batch-size", type=int, help="images per forward pass in evaluation")
@click.option("--seed", type=int, help="seed of initialisation, data order, augmentation and dropout")
@click.option("--workers", type=int, help="DataLoader worker processes")
@click.option("--device", help="cpu, cuda, cuda:N or auto")
@click.option("--amp/--no-amp", default=None, help="mixed precision on CUDA (ignored on CPU)")
@click.option("--out", type=PATH, help="run folder")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last.pt")
@click.option("--log-every", type=int, help="training-loss line in log.jsonl every N steps")
@click.option("--progress/--no-progress", default=None, help="progress bar")
@friendly_errors
def train_command(preset_name, config_file, dataset_option, resume, **options):
    """Train ParseNet (or the FCN baseline with --context none) and write a run folder.

    The run folder gets last.pt, best.pt, log.jsonl and summary.json.
    Several processes: torchrun --nproc-per-node N $(which erf-train) ...
    """
    explicit = {k: v for k, v in options.items() if v is not None}
    if "crop_size" in explicit:
        explicit["crop_size"] = _crop(explicit["crop_size"])
    if "extra_layers" in explicit:
        explicit["extra_layers"] = [s.strip() for s in explicit["extra_layers"].split(",") if s.strip()]
    model = {k: explicit.pop(k) for k in _MODEL_OPTIONS if k in explicit}
    if model:
        explicit["model"] = model
    if dataset_option:
        explicit["dataset_options"] = _dataset_options(dataset_option)

    if resume and "out" not in explicit:
        raise click.UsageError("--resume needs --out DIR, the run to continue")
    cfg = resolve_train_config(load_run_config(explicit["out"]).to_dict() if resume else {},
                               preset(preset_name) if preset_name else {},
                               read_train_options(config_file) if config_file else {}, explicit, resume=resume)
    summary = train(cfg)
    best, last = summary.get("best"), summary.get("last")
    out = Path(cfg.out)
    if best and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one report
        click.echo(f"best mean IoU {format_percent(best['metrics']['mean_iou'])} at step {best['step']}; "
                   f"last {format_percent(last['metrics']['mean_iou']) if last else 'n/a'}; run folder {out}")


@command("erf-eval", show_default=True)
@click.argument("checkpoint", type=FILE)
@click.option("--dataset", help="dataset spec (default: the one the checkpoint was trained on)")
@click.option("--dataset-option", "dataset_option", multiple=True, metavar="KEY=VALUE", help="dataset keyword option")
@click.option("--split", default="val", help="split to evaluate")
@click.option("--batch-size", type=int, default=8, help="images per forward pass")
@click.option("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
@click.option("--workers", type=int, default=0, help="DataLoader worker processes")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@click.option("--ignore-class-names", is_flag=True,
              help="evaluate on a dataset whose class names differ from the checkpoint's (prints both lists)")
@friendly_errors
def eval_command(checkpoint, dataset, dataset_option, split, batch_size, device, workers, as_json, ignore_class_names):
    """Evaluate CHECKPOINT on a dataset split and print the metric table."""
    options = _dataset_options(dataset_option) if dataset_option else None
    metrics, classes = evaluate_checkpoint(checkpoint, dataset, split, dataset_options=options,
                                           batch_size=batch_size, device=device, workers=workers,
                                           progress=sys.stderr.isatty(), ignore_class_names=ignore_class_names,
                                           log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(checkpoint), "split": split, "classes": list(classes),
                               **metrics.to_dict()}, indent=2))
    else:
        click.echo(metrics_table({Path(checkpoint).name: metrics}, classes))


if __name__ == "__main__":
    train_command()
