"""The demo's report: the question, the metric table, the ERF table, the figures (``report.md`` and ``report.html``)."""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from erf.util import atomic_write

__all__ = ["metric_rows", "erf_rows", "write_report"]

QUESTION = (
    "Does global context widen what a segmentation network sees, and does it help? "
    "ParseNet (Liu, Rabinovich & Berg, 2015) found with the sliding-noise probe of Zhou et al. (2015) "
    "that the empirical receptive field (ERF) of an FCN's fc7 is far smaller than its theoretical one (TRF), "
    "and added a globally pooled, L2-normalised feature (pool6) to every position. "
    "Here the FCN baseline and ParseNet share backbone, data, seed and budget, and differ only in that branch. "
    "On the built-in context scenes the class of each object depends on the colour of a sky band far above it, "
    "so a model must see far to label objects right."
)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v, fmt: str = "{:.0f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def metric_rows(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metric table: one row per model, best checkpoint on the validation split, in %."""
    header = ["model", "pixel acc", "mean acc", "mean IoU", "fw IoU", "best step"]
    rows = []
    for name, s in summaries.items():
        m = s["best"]["metrics"]
        rows.append([name, _pct(m["pixel_acc"]), _pct(m["mean_acc"]), _pct(m["mean_iou"]), _pct(m["fw_iou"]),
                     str(s["best"].get("step", ""))])
    return header, rows


def per_class_rows(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU (%) of each model's best checkpoint: the classes show where context matters."""
    names = list(summaries)
    classes = next(iter(summaries.values()))["classes"]
    rows = []
    for k, cls in enumerate(classes):
        rows.append([cls] + [_pct(summaries[n]["best"]["metrics"]["per_class_iou"][k]) for n in names])
    return ["class"] + [f"{n} IoU" for n in names], rows


def erf_rows(table: Sequence[Mapping]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ERF table from ``ERFResult.table_row()`` dicts with ``model`` and ``method`` added."""
    header = ["model", "layer", "method", "TRF side (px)", "ERF side (px)", "ERF/TRF", "ERF/image"]
    rows = []
    for r in table:
        side = _num(r.get("erf_side"))
        if r.get("erf_side_std") is not None and r.get("units", 1) > 1:
            side += f" ± {r['erf_side_std']:.0f}"
        trf = _num(r.get("trf_side")) + (" (global)" if r.get("global") else "")
        rows.append([r["model"], r["layer"], r["method"], trf, side,
                     _num(r.get("erf_over_trf"), "{:.2f}"), _num(r.get("erf_over_image"), "{:.2f}")])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: str | Path, *, summaries: Mapping[str, Mapping], erf_table: Sequence[Mapping],
                 figures: Mapping[str, str | Path], findings: Sequence[str] = (), setup: str = "") -> tuple[Path, Path]:
    """Write ``report.md`` (figures linked) and ``report.html`` (figures inline) into ``out``.

    Args:
        out: the experiment folder; figure paths are written relative to it.
        summaries: model name -> its run's ``summary.json``.
        erf_table: rows for :func:`erf_rows`.
        figures: caption -> PNG path.
        findings: sentences stating what the numbers show, computed by the caller.
        setup: one paragraph describing data, models and budget.

    Returns:
        The paths of ``report.md`` and ``report.html``.
    """
    out = Path(out)
    metrics = metric_rows(summaries)
    classes = per_class_rows(summaries)
    erf = erf_rows(erf_table)

    md = ["# With and without global context: ERF and segmentation", "", "## The question", "", QUESTION, ""]
    if setup:
        md += ["## Set-up", "", setup, ""]
    if findings:
        md += ["## What the numbers show", ""] + [f"- {f}" for f in findings] + [""]
    md += ["## Segmentation (validation split, best checkpoint, %)", "", _md_table(*metrics), "",
           "Per-class IoU:", "", _md_table(*classes), "",
           "## Receptive fields", "",
           "TRF side: the theoretical RF (geometric mean of the axes; the whole image for global layers). "
           "ERF side: side of the square with the area above half the maximum of each unit's map (occlusion: "
           "mean ± std over units; gradient: the centre position). ERF/image: that area over the image area.", "",
           _md_table(*erf), "", "## Figures", ""]
    for caption, path in figures.items():
        rel = Path(path).relative_to(out) if Path(path).is_relative_to(out) else Path(path)
        md += [f"### {caption}", "", f"![{caption}]({rel.as_posix()})", ""]

    body = ["<h1>With and without global context: ERF and segmentation</h1>", "<h2>The question</h2>",
            f"<p>{html.escape(QUESTION)}</p>"]
    if setup:
        body += ["<h2>Set-up</h2>", f"<p>{html.escape(setup)}</p>"]
    if findings:
        body += ["<h2>What the numbers show</h2>", "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings)
                 + "</ul>"]
    body += ["<h2>Segmentation (validation split, best checkpoint, %)</h2>", _html_table(*metrics),
             "<p>Per-class IoU:</p>", _html_table(*classes), "<h2>Receptive fields</h2>", _html_table(*erf),
             "<h2>Figures</h2>"]
    for caption, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body += [f"<h3>{html.escape(caption)}</h3>", f'<img alt="{html.escape(caption)}" '
                 f'src="data:image/png;base64,{data}" style="max-width:100%">']
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>erf-toolkit report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
            "</style></head><body>" + "\n".join(body) + "</body></html>")

    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_write(md_path, "w") as f:
        f.write("\n".join(md))
    with atomic_write(html_path, "w") as f:
        f.write(page)
    return md_path, html_path


def _findings(summaries: Mapping[str, Mapping], table: Sequence[Mapping]) -> list[str]:
    """Sentences comparing the two models, computed from the numbers (nothing here is written in advance)."""
    out = []
    names = list(summaries)
    if len(names) == 2:
        a, b = names
        ma, mb = (summaries[n]["best"]["metrics"]["mean_iou"] for n in names)
        if ma is not None and mb is not None:
            verb = "above" if mb > ma else "below" if mb < ma else "level with"
            out.append(f"{b} reaches {100 * mb:.1f}% mean IoU, {abs(100 * (mb - ma)):.1f} points {verb} "
                       f"{a}'s {100 * ma:.1f}%.")
        for layer in dict.fromkeys(r["layer"] for r in table):
            for method in ("occlusion", "gradient"):
                rows = {r["model"]: r for r in table if r["layer"] == layer and r["method"] == method}
                if a in rows and b in rows and rows[a].get("erf_side") and rows[b].get("erf_side"):
                    sa, sb = rows[a]["erf_side"], rows[b]["erf_side"]
                    word = "larger" if sb > sa else "smaller" if sb < sa else "the same size"
                    out.append(f"{layer} ({method}): {b}'s ERF side is {sb:.0f} px against {a}'s {sa:.0f} px "
                               f"({sb / sa:.2f}x, {word}); ERF/image {rows[b]['erf_over_image']:.2f} vs "
                               f"{rows[a]['erf_over_image']:.2f}.")
    return out


def build_report(out: str | Path, results: Mapping, runs: Mapping[str, Path], *, setup: str = "",
                 fmt: str = "png") -> tuple[Path, Path, list[Path]]:
    """Figures and report of an experiment: ``results`` maps (model, layer, method) to ERFResult.

    Returns:
        ``(report.md, report.html, figure paths)``.
    """
    from figures.render import make_figures, save_figures

    out = Path(out)
    figs = make_figures({"/".join(k): r for k, r in results.items()}, {n: p for n, p in runs.items()})
    paths = save_figures(figs, out / "figures", fmt)
    summaries = {name: json.loads((Path(run) / "summary.json").read_text()) for name, run in runs.items()}
    table = []
    for (model, layer, method), r in results.items():
        if method == "neuron":
            continue
        table.append({**r.table_row(), "model": model, "layer": layer, "method": method,
                      "global": bool(r.trf.get("is_global"))})
    captions = {
        "unit_panels": "ParseNet Fig. 2 style: one fc7 neuron, its activation, TRF and ERF",
        "training_curves": "Training loss and validation mean IoU",
        "segmentation": "Segmentation: image, ground truth, FCN, ParseNet",
    }
    figures = {}
    for p in paths:
        caption = captions.get(p.stem) or p.stem.replace("_", " ")
        figures[caption] = p
    md, page = write_report(out, summaries=summaries, erf_table=table, figures=figures,
                            findings=_findings(summaries, table), setup=setup)
    return md, page, paths
