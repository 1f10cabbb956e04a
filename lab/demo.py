"""What ``erf-demo`` runs: the experiment, then its report and its ERF browser, after checking every setting."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from erf.runner import METHODS, check_probe_settings
from erf.util import check_field_types
from lab.browse import DEMO_BROWSER, write_demo_browser
from lab.experiment import MODELS, DemoConfig, probe_settings, run_experiment, train_config
from lab.report import build_report

__all__ = ["check_demo", "run_demo"]


def check_demo(cfg: DemoConfig, resume: bool) -> None:
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
    check_probe_settings(probe_settings(cfg, cfg.probe_images), METHODS, (cfg.size, cfg.size), cfg.probe_images)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {str(out)!r} is a file; expected a folder")
    if resume and not (out.is_dir() and any(out.iterdir())):
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: it is empty or missing (start without --resume)")


def _setup(cfg: DemoConfig) -> str:
    """The report's description of what was run, from the config."""
    return (f"Built-in context scenes, {cfg.size} px, {cfg.train_images} training and {cfg.val_images} validation "
            f"images. Compact DeepLab-LargeFOV VGG16 (width 1/8, BatchNorm), {cfg.steps} SGD steps of 16 images "
            f"each, seed {cfg.seed}. Probes on {cfg.probe_images} validation scenes: occlusion with an "
            f"{cfg.patch}x{cfg.patch} uniform-noise patch on a stride-{cfg.stride} grid (top {cfg.top_k} images per "
            "unit), gradient from the centre position.")


def run_demo(cfg: DemoConfig, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Path]:
    """Check, train both models, probe both, then write the ERF browser and the report that links it.

    Returns:
        ``{"report": report.md, "html": report.html, "browser": browser/index.html, "figures": folder}``.
    """
    check_demo(cfg, resume)
    start = time.perf_counter()
    exp = run_experiment(cfg, overwrite=overwrite, resume=resume, progress=progress, log=log)
    browser = write_demo_browser(cfg.out, log=log)
    md, page, figs = build_report(cfg.out, exp["results"], exp["runs"], setup=_setup(cfg),
                                  links={"every unit in the ERF browser": DEMO_BROWSER})
    log(f"[demo] {len(figs)} figures in {md.parent / 'figures'}; {time.perf_counter() - start:.0f} s in all")
    return {"report": md, "html": page, "browser": browser, "figures": md.parent / "figures"}
