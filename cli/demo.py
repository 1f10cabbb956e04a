"""erf-demo: the whole ParseNet experiment on the built-in context scenes (what ``make demo`` runs)."""
from __future__ import annotations

import time

import click

from pathlib import Path

from cli._common import PATH, check_resume_flags, command, friendly_errors
from erf.runner import METHODS, ProbeSettings, check_probe_settings
from erf.util import check_field_types
from figures.report import build_report
from lab.browse import write_demo_browser
from parsenet.experiment import MODELS, DemoConfig, run_experiment, train_config

__all__ = ["main"]


@command("erf-demo")
@click.option("--out", default="runs/demo", show_default=True, type=PATH, help="Experiment folder.")
@click.option("--size", type=int, help="Scene side in pixels (default 96; 64 with --quick).")
@click.option("--steps", type=int, help="SGD updates per model (default 1000; 8 with --quick).")
@click.option("--train-images", type=int, help="Training scenes (default 2000).")
@click.option("--val-images", type=int, help="Validation scenes (default 200).")
@click.option("--probe-images", type=int, help="Validation scenes probed per model and layer (default 12).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A one-minute version for smoke tests.")
@click.option("--overwrite", is_flag=True, help="Delete an existing --out first.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out, keeping what is finished.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@friendly_errors
def main(out, size, steps, train_images, val_images, probe_images, seed, quick, overwrite, resume, no_progress):
    """Train FCN and ParseNet alike, probe both, make every figure and write report.md / report.html.

    \b
    Budget on 2 CPU cores: about 8 minutes (--quick: under a minute).
    """
    check_resume_flags(overwrite, resume)
    given = {k: v for k, v in dict(out=out, size=size, steps=steps, train_images=train_images,
                                    val_images=val_images, probe_images=probe_images, seed=seed).items()
             if v is not None}
    cfg = DemoConfig.quick(**given) if quick else DemoConfig(**given)
    _check(cfg, resume)
    start = time.perf_counter()
    exp = run_experiment(cfg, overwrite=overwrite, resume=resume, progress=not no_progress,
                         log=lambda m: click.echo(m, err=True))
    setup = (f"Built-in context scenes, {cfg.size} px, {cfg.train_images} training and {cfg.val_images} validation "
             f"images. Compact DeepLab-LargeFOV VGG16 (width 1/8, BatchNorm), {cfg.steps} SGD steps of 16 images each, seed "
             f"{cfg.seed}. Probes on {cfg.probe_images} validation scenes: occlusion with an {cfg.patch}x{cfg.patch} "
             f"uniform-noise patch on a stride-{cfg.stride} grid (top {cfg.top_k} images per unit), gradient from "
             "the centre position.")
    md, page, figs = build_report(cfg.out, exp["results"], exp["runs"], setup=setup)
    browser = write_demo_browser(cfg.out, log=lambda m: click.echo(m, err=True))
    click.echo(f"[demo] {len(figs)} figures in {md.parent / 'figures'}; {time.perf_counter() - start:.0f} s in all",
               err=True)
    click.echo(f"report: {md}")
    click.echo(f"report (html): {page}")
    click.echo(f"browser: {browser}")


def _check(cfg: DemoConfig, resume: bool) -> None:
    """Everything the demo will need, before it trains: the training runs' and the probes' settings."""
    check_field_types(DemoConfig, {k: getattr(cfg, k) for k in ("size", "train_images", "val_images", "steps",
                                                                  "probe_images", "seed")}, "erf-demo:")
    for name in ("size", "train_images", "val_images", "probe_images"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}; expected a positive number")
    if cfg.probe_images > cfg.val_images:
        raise ValueError(f"--probe-images {cfg.probe_images} is more than the {cfg.val_images} validation images; "
                         f"expected at most {cfg.val_images}")
    for name in MODELS:
        train_config(cfg, name, progress=False)  # raises on bad steps, sizes, ...
    check_probe_settings(ProbeSettings(patch=cfg.patch, stride=cfg.stride, top_k=min(cfg.top_k, cfg.probe_images),
                                       batch_size=cfg.batch_size, seed=cfg.seed), METHODS, (cfg.size, cfg.size),
                         cfg.probe_images)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {str(out)!r} is a file; expected a folder")
    if resume and not (out.is_dir() and any(out.iterdir())):
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: it is empty or missing (start without --resume)")


if __name__ == "__main__":
    main()
