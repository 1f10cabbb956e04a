"""From saved results to figure files: what ``erf-figures`` and ``erf-demo`` run.

The plotting functions of :mod:`figures` take plain arrays; this module finds ERF result folders
(``result.npz`` + ``summary.json``) and training run folders (``best.pt`` +
``log.jsonl``), gathers the arrays each figure needs, and saves every figure the
inputs allow, atomically:

========================  =====================================================
figure                    made from
========================  =====================================================
``unit_panels``           neuron results (one fc7 neuron on every image)
``trf_vs_erf_<model>``    a model's occlusion results over several layers
``context_<layer>``       the same layer probed the same way in several models
``methods_<model>_<l>``   occlusion and gradient results of one model and layer
``reach_<method>``        the reach measures of several models, layer by layer
``feature_scale_<run>``   a ParseNet run's checkpoint, on its validation images
``segmentation``          the runs' checkpoints, on their validation images
``training_curves``       the runs' ``log.jsonl``
========================  =====================================================
"""
from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from erf.result import ERFResult
from erf.util import atomic_write
from figures.context import fig_context_comparison
from figures.curves import fig_training_curves
from figures.feature_scale import fig_feature_scale
from figures.layers import fig_trf_vs_erf
from figures.methods import fig_methods
from figures.reach import fig_reach_comparison
from figures.segmentation import fig_segmentation
from figures.unit_panels import UnitPanel, fig_unit_panels

__all__ = ["FORMATS", "find_inputs", "model_label", "make_figures", "save_figures", "render"]

FORMATS = ("png", "pdf", "svg")


def _is_result(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "result.npz").is_file()


def _is_run(path: Path) -> bool:
    return (path / "log.jsonl").is_file() and (path / "best.pt").is_file()


def find_inputs(paths: Iterable[str | Path]) -> tuple[dict[str, ERFResult], dict[str, Path]]:
    """ERF results and training runs in ``paths``: each a result folder, a run folder, or a folder holding them.

    Returns:
        ``(results, runs)``: folder path -> loaded :class:`erf.result.ERFResult`, and run name (its folder
        name, with its parent's where two collide) -> run folder.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a path holds neither results nor runs, or a result folder is partial or of another format.
    """
    results: dict[str, ERFResult] = {}
    runs: dict[str, Path] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist; expected an ERF result folder (erf-probe --out) "
                                    "or a training run folder (erf-train --out)")
        candidates = [p] + sorted(d for d in p.rglob("*") if d.is_dir()) if p.is_dir() else [p]
        found = False
        for d in candidates:
            if _is_result(d):
                results[str(d)] = ERFResult.load(d)
                found = True
            elif _is_run(d):
                runs[str(d)] = d
                found = True
            elif d == p and (d / "summary.json").is_file() and not (d / "result.npz").exists() and "format_version" in (d / "summary.json").read_text():
                ERFResult.load(d)  # raises the clear "partial folder" error
        if not found:
            raise ValueError(f"{str(p)!r} holds no ERF result (result.npz + summary.json) and no training run "
                             "(best.pt + log.jsonl)")
    names = [Path(r).name for r in runs]
    return results, {(d.name if names.count(d.name) == 1 else f"{d.parent.name}/{d.name}"): d for d in runs.values()}


def model_label(result: ERFResult) -> str:
    """Short model name of a result: its ``model["name"]`` up to any parenthesised detail."""
    return str(result.model.get("name", "model")).split(" (")[0]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _side(stats: Mapping) -> float:
    side = stats.get("side")
    return float("nan") if side is None else float(side)


def _canvas_trf_box(result: ERFResult) -> tuple[float, float, float, float] | None:
    """The TRF outline on a result's 2H x 2W canvas (the unit's TRF centre sits at (H, W)); None when global."""
    if result.trf.is_global:
        return None
    H, W = result.image_size
    rh, rw = result.trf.rf
    return (H - (rh - 1) / 2, W - (rw - 1) / 2, H + (rh + 1) / 2, W + (rw + 1) / 2)


def _crop_to_image(m: np.ndarray, result: ERFResult) -> np.ndarray:
    """The central H x W window of a 2H x 2W canvas: offsets up to half an image each way."""
    H, W = result.image_size
    if m.shape[-2:] == (2 * H, 2 * W):
        return m[..., H // 2:H // 2 + H, W // 2:W // 2 + W]
    return m


def _shift_box(box, result: ERFResult):
    if box is None:
        return None
    H, W = result.image_size
    return (box[0] - H // 2, box[1] - W // 2, box[2] - H // 2, box[3] - W // 2)


def _main_map(result: ERFResult) -> np.ndarray:
    """The map that represents a result: the layer map of a units probe, else its single map."""
    return result.layer_map if result.mode == "units" else result.maps[0]


def _main_stats(result: ERFResult) -> Mapping:
    return result.layer_stats if result.mode == "units" else result.unit_stats[0]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _reach(result: ERFResult) -> Mapping:
    """The main map's reach measures (``summary["reach"]``); empty for results saved before they existed."""
    return result.summary.get("reach") or {}


def _px(v: float, note: str = "") -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3g} px{note}"


def _method_stats(result: ERFResult) -> dict[str, str]:
    """Peak (half-max) side, 90%-mass side and spread: the fit's sigma only where the fit holds (R^2 >= 0.5)."""
    s, reach = _main_stats(result), _reach(result)
    source = " (σ of fit)" if reach.get("spread_from") == "fit" else " (2nd moment)"
    return {"peak": _px(_side(s)), "90% mass": _px(_num(reach.get("mass_side@0.9"))),
            "spread": _px(_num(reach.get("spread")), source)}


def _mass_box(result: ERFResult, level: str = "mass_side@0.9") -> tuple[float, float, float, float] | None:
    """The centred square holding 90% of the contribution, on the cropped H x W window (unit at (H//2, W//2))."""
    side = _reach(result).get(level)
    if side is None:
        return None
    H, W = result.image_size
    cy, cx = H - H // 2, W - W // 2  # the canvas centre (H, W) after the crop
    half = (float(side) - 1) / 2
    return (cy - half, cx - half, cy + half + 1, cx + half + 1)


REACH_PANELS = {"mass_side@0.5": "50% mass side (px)", "mass_side@0.9": "90% mass side (px)",
                "mass_side@0.99": "99% mass side (px)", "far_share": "far-field share"}


def _reach_measures(models: Mapping[str, Mapping[str, ERFResult]], layers: list[str]) -> dict[str, dict]:
    """Panel label -> model -> (L, 3) value, CI low, CI high from each result's ``summary["reach"]``."""
    out: dict[str, dict] = {label: {} for label in REACH_PANELS.values()}
    for model, per_layer in models.items():
        for key, label in REACH_PANELS.items():
            rows = []
            for layer in layers:
                reach = _reach(per_layer[layer]) if layer in per_layer else {}
                ci = (reach.get("ci") or {}).get(key) or [None, None]
                rows.append([_num(reach.get(key)), _num(ci[0]), _num(ci[1])])
            out[label][model] = np.array(rows)
    return out


def _read_log(run: Path) -> dict[str, list[float]]:
    curve: dict[str, list[float]] = {"step": [], "loss": [], "eval_step": [], "miou": []}
    for line in (run / "log.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("type") == "train":
            curve["step"].append(rec["step"])
            curve["loss"].append(float("nan") if rec["loss"] is None else rec["loss"])
        elif rec.get("type") == "eval":
            miou = rec["metrics"].get("mean_iou")
            curve["eval_step"].append(rec["step"])
            curve["miou"].append(float("nan") if miou is None else miou)
    return curve


def _unit_panel_rows(results: Mapping[str, ERFResult], per_model: int) -> list[UnitPanel]:
    rows = []
    for result in results.values():
        if result.mode != "neuron" or result.display_images is None or result.activations is None:
            continue
        c, y, x = result.neuron
        rf = result.trf
        for i in range(min(per_model, len(result.images))):
            rows.append(UnitPanel(image=result.display_images[i], activation=result.activations[i],
                                  theoretical_rf=rf.box(y, x), erf_map=result.image_maps[i],
                                  label=f"{model_label(result)} {result.layer} ({c},{y},{x})"))
    return rows


def make_figures(results: Mapping[str, ERFResult], runs: Mapping[str, Path], *,
                 images_per_model: int = 2, segmentation_images: int = 4) -> dict[str, Figure]:
    """Every figure the inputs allow, by file stem (see the module docstring)."""
    figs: dict[str, Figure] = {}

    rows = _unit_panel_rows(results, images_per_model)
    if rows:
        figs["unit_panels"] = fig_unit_panels(rows)

    by_model: dict[str, list[ERFResult]] = defaultdict(list)
    by_layer: dict[tuple[str, str], dict[str, ERFResult]] = defaultdict(dict)
    for r in results.values():
        if r.mode == "neuron":
            continue
        by_layer[r.layer, r.method][model_label(r)] = r
        if r.method == "occlusion" and r.mode == "units":
            by_model[model_label(r)].append(r)

    for model, rs in by_model.items():
        fig = fig_trf_vs_erf(
            [r.layer for r in rs], [r.table_row()["trf_side"] for r in rs],
            [[_side(s) for s in r.unit_stats] for r in rs],
            image_size=float(np.sqrt(np.prod(rs[0].image_size))),
            title=f"{model}: theoretical vs empirical RF")
        fig.set_label(f"{model}: theoretical RF against the peak of the occlusion ERF (half-max side per unit), "
                      "layer by layer")
        figs[f"trf_vs_erf_{_slug(model)}"] = fig

    for (layer, method), models in by_layer.items():
        if len(models) < 2:
            continue
        first = next(iter(models.values()))
        if any(tuple(r.image_size) != tuple(first.image_size) for r in models.values()):
            continue
        reach_known = all(_reach(r) for r in models.values())
        fig = fig_context_comparison(
            {m: _crop_to_image(_main_map(r), r) for m, r in models.items()},
            {m: _num(_reach(r).get("mass_side@0.9")) if reach_known else _side(_main_stats(r))
             for m, r in models.items()},
            size_label="90% mass" if reach_known else "ERF",
            extent_boxes={m: _mass_box(r) for m, r in models.items()} if reach_known else None,
            trf_box=None if any(r.trf.is_global for r in models.values())
            else _shift_box(_canvas_trf_box(first), first),
            threshold=float(first.config.get("threshold", 0.5)),
            colorbar_label=("|d out / d input|, linear" if method == "gradient"
                            else "discrepancy |Δ| (shared scale)"),
            log_decades=3 if method == "gradient" else None,
            title=f"{layer}, {method} ERF")
        fig.set_label(f"{layer}: {method} ERF with and without global context (shared colour scale"
                      + ("; below, the same maps on a log scale" if method == "gradient" else "") + ")")
        figs[f"context_{_slug(layer)}_{method}"] = fig

    for (layer, method), models in by_layer.items():
        if method != "occlusion":
            continue
        for model, occ in models.items():
            grad = by_layer.get((layer, "gradient"), {}).get(model)
            if grad is None or tuple(grad.image_size) != tuple(occ.image_size):
                continue

            fig = fig_methods(
                _crop_to_image(_main_map(occ), occ), _crop_to_image(_main_map(grad), grad),
                _method_stats(occ), _method_stats(grad),
                trf_box=_shift_box(_canvas_trf_box(occ), occ), title=f"{model} {layer}: occlusion vs gradient ERF")
            fig.set_label(f"{model}, {layer}: occlusion ERF against gradient ERF, each as a fraction of its maximum")
            figs[f"methods_{_slug(model)}_{_slug(layer)}"] = fig

    for method in dict.fromkeys(m for _, m in by_layer):
        layers = [layer for (layer, m) in by_layer if m == method]
        per_model: dict[str, dict[str, ERFResult]] = defaultdict(dict)
        for layer in layers:
            for model, r in by_layer[layer, method].items():
                if _reach(r):
                    per_model[model][layer] = r
        if len(per_model) < 2:
            continue
        fig = fig_reach_comparison(layers, _reach_measures(per_model, layers),
                                   title=f"How far the {method} ERF reaches, with and without global context")
        fig.set_label(f"Reach of the {method} ERF layer by layer: sides of the centred squares holding 50%, 90% and "
                      "99% of the contribution, and the share beyond a quarter of the image side from the unit "
                      f"(error bars: {int(100 * _reach(r)['ci_level'])}% bootstrap interval over "
                      f"{'units' if method == 'occlusion' else 'images'})")
        figs[f"reach_{_slug(method)}"] = fig

    for r in results.values():  # RepLKNet's protocol: its log-scale map and area-ratio table
        if r.config.get("protocol") == "replknet":
            from erf.replknet import log_scale
            from figures.replknet import fig_replknet_erf

            figs[f"replknet_{_slug(model_label(r))}_{_slug(r.layer)}"] = fig_replknet_erf(
                log_scale(_crop_to_image(_main_map(r), r)), r.config["replknet"]["area_ratios"],
                title=f"{model_label(r)} {r.layer}: RepLKNet ERF at {r.config['input_size']} px")

    if runs:
        figs.update(_run_figures(runs, segmentation_images))
    return figs


def _run_figures(runs: Mapping[str, Path], n_images: int) -> dict[str, Figure]:
    """Training curves, segmentation grid and feature scales, from run folders (loads their best checkpoints)."""
    import torch

    from lab.analysis import feature_norms, predict
    from parsenet.checkpoint import load_trained_model
    from parsenet.data import build_dataset

    figs: dict[str, Figure] = {}
    named = {name: Path(run) for name, run in runs.items()}
    figs["training_curves"] = fig_training_curves({n: _read_log(r) for n, r in named.items()})

    by_data: dict[str, dict[str, tuple]] = defaultdict(dict)
    for name, run in named.items():
        trained = load_trained_model(run / "best.pt")
        tcfg = trained.train_config or {}
        key = json.dumps([tcfg.get("dataset"), tcfg.get("dataset_options"), tcfg.get("val_split")], sort_keys=True)
        by_data[key][name] = (trained.model, tcfg)

    for i, (key, models) in enumerate(by_data.items()):
        _, tcfg = next(iter(models.values()))
        val = build_dataset(tcfg["dataset"], tcfg.get("val_split", "val"), seed=tcfg.get("seed", 0),
                            **(tcfg.get("dataset_options") or {}))
        idx = list(range(min(n_images, len(val))))
        images = torch.stack([val[j][0] for j in idx])
        raw = [val.raw(j) for j in idx]
        preds = {name: list(predict(m, images)) for name, (m, _) in models.items()}
        suffix = "" if len(by_data) == 1 else f"_{i}"
        figs[f"segmentation{suffix}"] = fig_segmentation(
            [r[0] for r in raw], [np.asarray(r[1]) for r in raw], preds, list(val.info.classes),
            colors=np.asarray(val.info.colors), ignore_index=val.info.ignore_index)
        for name, (m, _) in models.items():
            if "pool6" in dict(m.named_modules()):
                before, after = feature_norms(m, images)
                figs[f"feature_scale_{_slug(name)}"] = fig_feature_scale(
                    before, after, title=f"{name}: feature scale before and after L2 norm")
    return figs


def save_figures(figs: Mapping[str, Figure], out: str | Path, fmt: str = "png") -> list[Path]:
    """Save each figure as ``out/<stem>.<fmt>`` atomically; returns the paths."""
    if fmt not in FORMATS:
        from erf.util import unknown_name

        raise unknown_name("figure format", fmt, FORMATS, show_all=True)
    out = Path(out)
    paths = []
    for stem, fig in figs.items():
        path = out / f"{stem}.{fmt}"
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        with atomic_write(path) as f:
            f.write(buf.getvalue())
        paths.append(path)
    return paths


def render(paths: Iterable[str | Path], out: str | Path, fmt: str = "png") -> list[Path]:
    """Find results and runs in ``paths``, make every figure they allow, and save them in ``out``."""
    results, runs = find_inputs(paths)
    return save_figures(make_figures(results, runs), out, fmt)
