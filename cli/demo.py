"""erf-demo: the whole ParseNet experiment on the built-in context scenes (what ``make demo`` runs)."""
from __future__ import annotations

import time

import click

from cli._common import friendly_errors
from lab import DemoConfig, build_report, run_experiment

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, help="Experiment folder.")
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
    given = {k: v for k, v in dict(out=out, size=size, steps=steps, train_images=train_images,
                                    val_images=val_images, probe_images=probe_images, seed=seed).items()
             if v is not None}
    cfg = DemoConfig.quick(**given) if quick else DemoConfig(**given)
    start = time.perf_counter()
    exp = run_experiment(cfg, overwrite=overwrite, resume=resume, progress=not no_progress,
                         log=lambda m: click.echo(m, err=True))
    setup = (f"Built-in context scenes, {cfg.size} px, {cfg.train_images} training and {cfg.val_images} validation "
             f"images. Compact DeepLab-LargeFOV VGG16 (width 1/8, BatchNorm), {cfg.steps} SGD steps of 16 images each, seed "
             f"{cfg.seed}. Probes on {cfg.probe_images} validation scenes: occlusion with an {cfg.patch}x{cfg.patch} "
             f"uniform-noise patch on a stride-{cfg.stride} grid (top {cfg.top_k} images per unit), gradient from "
             "the centre position.")
    md, page, figs = build_report(cfg.out, exp["results"], exp["runs"], setup=setup)
    click.echo(f"[demo] {len(figs)} figures in {md.parent / 'figures'}; {time.perf_counter() - start:.0f} s in all",
               err=True)
    click.echo(f"report: {md}")
    click.echo(f"report (html): {page}")


if __name__ == "__main__":
    main()
