"""The demo's report as text: the question, the metric table, the ERF table, the figures.

Pure string building: :func:`report_markdown` and :func:`report_html` take
numbers and figure references and return the page; :mod:`lab.report` gathers
the numbers and writes the files.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from erf.util import format_number, format_percent

__all__ = ["QUESTION", "ERF_TABLE_NOTE", "metric_rows", "per_class_rows", "erf_rows", "report_markdown", "report_html"]

QUESTION = (
    "Does global context widen what a segmentation network sees, and does it help? "
    "ParseNet (Liu, Rabinovich & Berg, 2015) found with the sliding-noise probe of Zhou et al. (2015) "
    "that the empirical receptive field (ERF) of an FCN's fc7 is far smaller than its theoretical one (TRF), "
    "and added a globally pooled, L2-normalised feature (pool6) to every position. "
    "Here the FCN baseline and ParseNet share backbone, data, seed and budget, and differ only in that branch. "
    "On the built-in context scenes the class of each object depends on the colour of a sky band far above it, "
    "so a model must see far to label objects right."
)


def _num(v, spec: str = ".0f") -> str:
    return format_number(v, spec, "n/a")


def metric_rows(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metric table: one row per model, best checkpoint on the validation split, in %."""
    header = ["model", "pixel acc", "mean acc", "mean IoU", "fw IoU", "best step"]
    rows = []
    for name, s in summaries.items():
        m = s["best"]["metrics"]
        rows.append([name, format_percent(m["pixel_acc"]), format_percent(m["mean_acc"]), format_percent(m["mean_iou"]), format_percent(m["fw_iou"]),
                     str(s["best"].get("step", ""))])
    return header, rows


def per_class_rows(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """Per-class IoU (%) of each model's best checkpoint: the classes show where context matters."""
    names = list(summaries)
    classes = next(iter(summaries.values()))["classes"]
    rows = []
    for k, cls in enumerate(classes):
        rows.append([cls] + [format_percent(summaries[n]["best"]["metrics"]["per_class_iou"][k]) for n in names])
    return ["class"] + [f"{n} IoU" for n in names], rows


def _with_ci(v, ci, spec: str) -> str:
    text = _num(v, spec)
    if ci and ci[0] is not None and ci[1] is not None and text != "n/a":
        text += f" [{ci[0]:{spec}}, {ci[1]:{spec}}]"
    return text


def erf_rows(table: Sequence[Mapping]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ERF table from ``ERFResult.table_row()`` dicts with ``model`` and ``method`` added.

    A row may carry ``reach`` (``ERFResult.summary["reach"]``): the mass sides, far-field share and spread of
    the map the report shows, with their bootstrap intervals in brackets.
    """
    header = ["model", "layer", "method", "TRF side (px)", "peak side, half-max (px)", "50% mass (px)",
              "90% mass (px) [CI]", "99% mass (px)", "far-field share [CI]", "spread (px)", "peak/TRF", "peak/image"]
    rows = []
    for r in table:
        side = _num(r.get("erf_side"))
        if r.get("erf_side_std") is not None and r.get("units", 1) > 1:
            side += f" ± {r['erf_side_std']:.0f}"
        trf = _num(r.get("trf_side")) + (" (global)" if r.get("global") else "")
        reach = r.get("reach") or {}
        ci = reach.get("ci") or {}
        spread = _num(reach.get("spread"))
        if spread != "n/a":
            spread += " (fit)" if reach.get("spread_from") == "fit" else " (moment)"
        rows.append([r["model"], r["layer"], r["method"], trf, side, _num(reach.get("mass_side@0.5")),
                     _with_ci(reach.get("mass_side@0.9"), ci.get("mass_side@0.9"), ".0f"),
                     _num(reach.get("mass_side@0.99")),
                     _with_ci(reach.get("far_share"), ci.get("far_share"), ".2f"), spread,
                     _num(r.get("erf_over_trf"), ".2f"), _num(r.get("erf_over_image"), ".2f")])
    return header, rows


ERF_TABLE_NOTE = (
    "TRF side: the theoretical RF (geometric mean of the axes; the whole image for global layers). "
    "Peak side: side of the square with the area above half the maximum of each unit's map, which measures the "
    "peak, not the reach (occlusion: mean ± std over units; gradient: the centre position); peak/TRF and "
    "peak/image compare that area. The reach columns measure the map the figures show (occlusion: the mean of the "
    "unit maps; gradient: the mean over images): 50/90/99% mass is the side of the smallest square centred on "
    "the unit that holds that share of the contribution; far-field share is the share lying farther than a "
    "quarter of the image side from the unit; spread is the Gaussian fit's sigma where the fit holds (R² ≥ 0.5) "
    "and the second-moment radius otherwise. Brackets: 95% percentile bootstrap interval over units (occlusion) "
    "or images (gradient)."
)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_markdown(*, summaries: Mapping[str, Mapping], erf_table: Sequence[Mapping],
                    figures: Mapping[str, str], findings: Sequence[str] = (), setup: str = "",
                    answer: Sequence[str] = (), links: Mapping[str, str] | None = None) -> str:
    """``report.md``: the question, set-up, findings, tables and the figures linked.

    Args:
        summaries: model name -> its run's ``summary.json``.
        erf_table: rows for :func:`erf_rows`.
        figures: caption -> figure path relative to the report (POSIX).
        findings: sentences stating what the numbers show, computed by the caller.
        setup: one paragraph describing data, models and budget.
        answer: sentences answering the question, computed by the caller; the report's first paragraph.
        links: label -> address of companion pages (e.g. the result browser), listed under the answer.
    """
    metrics, classes, erf = metric_rows(summaries), per_class_rows(summaries), erf_rows(erf_table)
    md = ["# With and without global context: ERF and segmentation", ""]
    if answer:
        md += [" ".join(answer), ""]
    if links:
        md += ["Open: " + " · ".join(f"[{label}]({href})" for label, href in links.items()), ""]
    md += ["## The question", "", QUESTION, ""]
    if setup:
        md += ["## Set-up", "", setup, ""]
    if findings:
        md += ["## What the numbers show", ""] + [f"- {f}" for f in findings] + [""]
    md += ["## Segmentation (validation split, best checkpoint, %)", "", _md_table(*metrics), "",
           "Per-class IoU:", "", _md_table(*classes), "",
           "## Receptive fields", "", ERF_TABLE_NOTE, "", _md_table(*erf), "", "## Figures", ""]
    for caption, rel in figures.items():
        md += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    return "\n".join(md)


def report_html(*, summaries: Mapping[str, Mapping], erf_table: Sequence[Mapping],
                figures: Mapping[str, bytes], findings: Sequence[str] = (), setup: str = "",
                answer: Sequence[str] = (), links: Mapping[str, str] | None = None) -> str:
    """``report.html``: the same page as :func:`report_markdown`, with each figure's PNG bytes inline."""
    metrics, classes, erf = metric_rows(summaries), per_class_rows(summaries), erf_rows(erf_table)
    body = ["<h1>With and without global context: ERF and segmentation</h1>"]
    if answer:
        body += [f"<p>{html.escape(' '.join(answer))}</p>"]
    if links:
        body += ["<p>Open: " + " · ".join(f'<a href="{html.escape(href)}">{html.escape(label)}</a>'
                                           for label, href in links.items()) + "</p>"]
    body += ["<h2>The question</h2>", f"<p>{html.escape(QUESTION)}</p>"]
    if setup:
        body += ["<h2>Set-up</h2>", f"<p>{html.escape(setup)}</p>"]
    if findings:
        body += ["<h2>What the numbers show</h2>", "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings)
                 + "</ul>"]
    body += ["<h2>Segmentation (validation split, best checkpoint, %)</h2>", _html_table(*metrics),
             "<p>Per-class IoU:</p>", _html_table(*classes), "<h2>Receptive fields</h2>",
             f"<p>{html.escape(ERF_TABLE_NOTE)}</p>", _html_table(*erf),
             "<h2>Figures</h2>"]
    for caption, png in figures.items():
        data = base64.b64encode(png).decode()
        body += [f"<h3>{html.escape(caption)}</h3>", f'<img alt="{html.escape(caption)}" '
                 f'src="data:image/png;base64,{data}" style="max-width:100%">']
    return ("<!doctype html><html><head><meta charset='utf-8'><title>erf-toolkit report</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
            "</style></head><body>" + "\n".join(body) + "</body></html>")
