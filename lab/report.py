"""The demo's report: gather the numbers, make the figures, write ``report.md`` and ``report.html``.

The text itself is built by :mod:`figures.report` (pure strings); this module
reads run summaries, saves the figures and writes both pages atomically.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from erf.util import atomic_write
from figures.report import report_html, report_markdown

__all__ = ["write_report", "build_report"]


def write_report(out: str | Path, *, summaries: Mapping[str, Mapping], erf_table: Sequence[Mapping],
                 figures: Mapping[str, str | Path], findings: Sequence[str] = (), setup: str = "") -> tuple[Path, Path]:
    """Write ``report.md`` (figures linked) and ``report.html`` (figures inline) into ``out``.

    Args:
        out: the experiment folder; figure paths are written relative to it.
        summaries: model name -> its run's ``summary.json``.
        erf_table: rows for :func:`figures.report.erf_rows`.
        figures: caption -> PNG path.
        findings: sentences stating what the numbers show, computed by the caller.
        setup: one paragraph describing data, models and budget.

    Returns:
        The paths of ``report.md`` and ``report.html``.
    """
    out = Path(out)
    rel = {c: (Path(p).relative_to(out) if Path(p).is_relative_to(out) else Path(p)).as_posix()
           for c, p in figures.items()}
    md = report_markdown(summaries=summaries, erf_table=erf_table, figures=rel, findings=findings, setup=setup)
    page = report_html(summaries=summaries, erf_table=erf_table, findings=findings, setup=setup,
                       figures={c: Path(p).read_bytes() for c, p in figures.items()})
    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_write(md_path, "w") as f:
        f.write(md)
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
    from lab.render import make_figures, save_figures

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
