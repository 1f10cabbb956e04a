"""Train ParseNet and its FCN baseline with the same backbone and budget, and compare their metrics.

Two comparisons, each FCN (``context="none"``) against ParseNet (``context="global"``),
both the compact LargeFOV with BatchNorm, same steps, batch, learning rate and seed:

1. the built-in context scenes (the ``demo`` preset), where an object's class is
   decided by a cue far from it, so global context should win clearly;
2. CamVid train -> val (the ``camvid`` preset), a real driving dataset, where
   ParseNet should at least not be behind. Skipped with a message when the data
   folder is absent.

Usage (2 shared CPU cores; the defaults are the budget the report quotes):

    .venv/bin/python bench/train_compare.py --out runs/compare
    .venv/bin/python bench/train_compare.py --scenes-steps 300 --camvid-steps 300 --out runs/quick

Prints, per dataset, the final metric tables side by side (pixel acc, mean acc,
mIoU, fwIoU, per-class IoU, in percent) and writes ``OUT/results.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from erf.util import atomic_write  # noqa: E402
from parsenet.metrics import SegmentationMetrics, metrics_table  # noqa: E402
from parsenet.presets import merge_options, preset  # noqa: E402
from parsenet.trainer import TrainConfig, train  # noqa: E402

DEFAULT_CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def _compare(name: str, base: dict, out: Path, resume: bool) -> dict:
    runs = {}
    for label, context in (("FCN", "none"), ("ParseNet", "global")):
        run_dir = out / name / label.lower()
        cfg = TrainConfig.from_dict(merge_options(base, {"model": {"context": context}, "out": str(run_dir)}))
        resume_this = resume and (run_dir / "last.pt").exists()
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "resume": resume_this})
        print(f"\n== {name}: {label} ({cfg.steps} steps, batch {cfg.batch_size}, lr {cfg.lr}) -> {run_dir}", flush=True)
        t0 = time.perf_counter()
        summary = train(cfg)
        summary["wall_seconds"] = time.perf_counter() - t0
        runs[label] = summary
    last = {k: SegmentationMetrics.from_dict(s["last"]["metrics"]) for k, s in runs.items()}
    best = {k: SegmentationMetrics.from_dict(s["best"]["metrics"]) for k, s in runs.items()}
    classes = runs["ParseNet"]["classes"]
    print(f"\n### {name}: final checkpoints (step {runs['ParseNet']['last']['step']}), validation split, percent")
    print(metrics_table(last, classes))
    delta = 100 * (last["ParseNet"].mean_iou - last["FCN"].mean_iou)
    print(f"ParseNet - FCN mean IoU: {delta:+.1f} points (final); best checkpoints: "
          f"FCN {100 * best['FCN'].mean_iou:.1f} at step {runs['FCN']['best']['step']}, "
          f"ParseNet {100 * best['ParseNet'].mean_iou:.1f} at step {runs['ParseNet']['best']['step']}")
    for k, s in runs.items():
        print(f"  {k}: {s.get('wall_seconds', 0):.0f} s wall, {s.get('images_per_second', 0):.1f} images/s")
    return {"classes": classes, "runs": runs, "delta_mean_iou_points": delta}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compare", help="folder for the four runs and results.json")
    p.add_argument("--scenes-steps", type=int, default=1000, help="training steps per model on the context scenes")
    p.add_argument("--scenes-size", type=int, default=96, help="scene image side in pixels")
    p.add_argument("--camvid", default=str(DEFAULT_CAMVID), help="CamVid folder (SegNet layout)")
    p.add_argument("--camvid-steps", type=int, default=1000, help="training steps per model on CamVid")
    p.add_argument("--camvid-crop", type=int, default=160, help="CamVid training crop side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-scenes", action="store_true")
    p.add_argument("--skip-camvid", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs in --out")
    args = p.parse_args(argv)

    out = Path(args.out)
    common = {"batch_size": args.batch_size, "eval_every": args.eval_every, "workers": args.workers,
              "seed": args.seed, "progress": sys.stderr.isatty()}
    results = {"args": vars(args)}
    if not args.skip_scenes:
        base = merge_options(preset("demo"), common, {"steps": args.scenes_steps,
                                                      "dataset_options": {"size": args.scenes_size}})
        results["scenes"] = _compare("scenes", base, out, args.resume)
    if not args.skip_camvid:
        camvid = Path(args.camvid)
        if not (camvid / "train").is_dir():
            print(f"\nCamVid skipped: {camvid} has no train/ folder (pass --camvid PATH)")
        else:
            base = merge_options(preset("camvid"), common, {"steps": args.camvid_steps, "dataset": f"camvid:{camvid}",
                                                            "crop_size": args.camvid_crop})
            results["camvid"] = _compare("camvid", base, out, args.resume)
    with atomic_write(out / "results.json", "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
