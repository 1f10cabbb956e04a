"""erf-demo: the whole ParseNet experiment on the built-in context scenes (what ``make demo`` runs)."""
from __future__ import annotations

import click

from cli._common import PATH, check_resume_flags, command, friendly_errors
from lab import DemoConfig, run_demo

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
    Budget on 2 CPU cores: about 11 minutes (--quick: under a minute).
    """
    check_resume_flags(overwrite, resume)
    given = {k: v for k, v in dict(out=out, size=size, steps=steps, train_images=train_images,
                                    val_images=val_images, probe_images=probe_images, seed=seed).items()
             if v is not None}
    cfg = DemoConfig.quick(**given) if quick else DemoConfig(**given)
    paths = run_demo(cfg, overwrite=overwrite, resume=resume, progress=not no_progress,
                     log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {paths['report']}")
    click.echo(f"report (html): {paths['html']}")
    click.echo(f"browser: {paths['browser']}")


if __name__ == "__main__":
    main()
