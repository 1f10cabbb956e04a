"""The demo's report: gather the numbers, make the figures, write ``report.md`` and ``report.html``.

The text itself is built by :mod:`figures.report` (pure strings); this module
reads run summaries, saves the figures and writes both pages atomically.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from erf.result import REACH_CI, ERFResult, reach_replicates
from erf.stats import percentile_interval
from erf.util import atomic_write
from figures.report import report_html, report_markdown

__all__ = ["write_report", "build_report", "compare_reach", "answer_sentences"]

PRIMARY = "far_share"  # the measure the answer is given in: how much of the ERF lies far from the unit
PRIMARY_SIDE = "mass_side@0.9"  # quoted next to it: the side of the centred square holding 90% of the ERF
SAME_WITHIN = 0.02  # a far-field share moving by less than 2 points is "the same" even where its interval excludes 0


def write_report(out: str | Path, *, summaries: Mapping[str, Mapping], erf_table: Sequence[Mapping],
                 figures: Mapping[str, str | Path], findings: Sequence[str] = (), setup: str = "",
                 answer: Sequence[str] = (), links: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` (figures linked) and ``report.html`` (figures inline) into ``out``.

    Args:
        out: the experiment folder; figure paths are written relative to it.
        summaries: model name -> its run's ``summary.json``.
        erf_table: rows for :func:`figures.report.erf_rows`.
        figures: caption -> PNG path.
        findings: sentences stating what the numbers show, computed by the caller.
        setup: one paragraph describing data, models and budget.
        answer: the report's first paragraph (see :func:`answer_sentences`).
        links: label -> address of companion pages, listed under the answer (the result browser goes here).

    Returns:
        The paths of ``report.md`` and ``report.html``.
    """
    out = Path(out)
    rel = {c: (Path(p).relative_to(out) if Path(p).is_relative_to(out) else Path(p)).as_posix()
           for c, p in figures.items()}
    text = dict(summaries=summaries, erf_table=erf_table, findings=findings, setup=setup, answer=answer, links=links)
    md = report_markdown(figures=rel, **text)
    page = report_html(figures={c: Path(p).read_bytes() for c, p in figures.items()}, **text)
    md_path, html_path = out / "report.md", out / "report.html"
    with atomic_write(md_path, "w") as f:
        f.write(md)
    with atomic_write(html_path, "w") as f:
        f.write(page)
    return md_path, html_path


def compare_reach(without: ERFResult, with_: ERFResult) -> dict:
    """How the ERF's reach changes from ``without`` to ``with_`` (same layer and method), with bootstrap intervals.

    The answer is given in the far-field share (the direct measure of "sees far": the share of the contribution
    farther than a quarter of the image side from the unit), as a difference; the 90%-mass side comes with it as
    a ratio. Both are measured on the map each result stands for (units: the mean of the unit maps; gradient:
    the mean over images). Each model is resampled on its own (units or images, :meth:`ERFResult.reach_samples`)
    and each interval is the percentile interval of the replicate differences (ratios).

    Returns:
        dict with ``far_without``, ``far_with``, ``far_diff``, ``far_ci``, ``without``, ``with`` (90%-mass sides),
        ``ratio``, ``ratio_ci``, ``over`` (what was resampled, or ``"none"``) and ``verdict``: ``"wider"`` or
        ``"narrower"`` when the far-field share's interval excludes 0 and it moves by at least
        :data:`SAME_WITHIN`, else ``"the same"``; without an interval the point difference alone decides.
    """
    ra, rb = without.summary["reach"], with_.summary["reach"]
    out = {"without": ra[PRIMARY_SIDE], "with": rb[PRIMARY_SIDE], "far_without": ra[PRIMARY],
           "far_with": rb[PRIMARY], "ratio": math.nan, "ratio_ci": (math.nan, math.nan), "far_diff": math.nan,
           "far_ci": (math.nan, math.nan), "over": "none", "verdict": "unknown"}
    if ra[PRIMARY] is None or rb[PRIMARY] is None:
        return out
    out["far_diff"] = rb[PRIMARY] - ra[PRIMARY]
    if out["without"] and out["with"]:
        out["ratio"] = out["with"] / out["without"]
    (sa, oa), (sb, ob) = without.reach_samples(), with_.reach_samples()
    if oa != "none" and ob != "none":
        reps_a, reps_b = reach_replicates(sa, seed=REACH_CI["seed"]), reach_replicates(sb, seed=REACH_CI["seed"] + 1)
        out["far_ci"] = percentile_interval(reps_b[PRIMARY] - reps_a[PRIMARY], REACH_CI["level"])
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ratio_ci"] = percentile_interval(reps_b[PRIMARY_SIDE] / reps_a[PRIMARY_SIDE], REACH_CI["level"])
        out["over"] = oa if oa == ob else f"{oa} and {ob}"
        lo, hi = out["far_ci"]
    else:
        lo = hi = out["far_diff"]
    diff = out["far_diff"]
    out["verdict"] = ("wider" if lo > 0 and diff >= SAME_WITHIN else
                      "narrower" if hi < 0 and diff <= -SAME_WITHIN else "the same")
    return out


def answer_sentences(results: Mapping[tuple[str, str, str], ERFResult], without: str, with_: str) -> list[str]:
    """The report's first paragraph: for each probed layer and method, does the ERF reach farther with context?

    Every number comes from :func:`compare_reach`; the half-max side is quoted as what it is, the peak.
    """
    level = int(100 * REACH_CI["level"])
    pairs = []
    for layer in dict.fromkeys(layer for (_, layer, method) in results if method != "neuron"):
        for method in ("occlusion", "gradient"):
            a, b = results.get((without, layer, method)), results.get((with_, layer, method))
            if a is not None and b is not None and "reach" in a.summary and "reach" in b.summary:
                pairs.append((layer, method, a, b))
    if not pairs:
        return []
    H, W = pairs[0][2].image_size
    radius = pairs[0][2].summary["reach"]["far_radius"]
    out = [f"With global context ({with_} against {without}), measured by the far-field share, the part of each "
           f"ERF map's contribution lying more than a quarter of the image side ({radius:.0f} px) from the unit "
           f"({level}% bootstrap intervals in brackets):"]
    saturated, global_layers = False, []
    for layer, method, a, b in pairs:
        c = compare_reach(a, b)
        if c["verdict"] == "unknown":
            out.append(f"{layer} ({method}): no ERF to measure in one of the models.")
            continue
        flo, fhi = c["far_ci"]
        fci = f" [{flo:+.2f}, {fhi:+.2f}]" if math.isfinite(flo) else " (no interval: a single map)"
        how = {"wider": "wider", "narrower": "narrower",
               "the same": f"the same (a change under {SAME_WITHIN:.2f} or within the interval)"}[c["verdict"]]
        side = ""
        if math.isfinite(c["ratio"]):
            lo, hi = c["ratio_ci"]
            rci = f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else ""
            side = f"; 90%-mass side {c['with']:.0f} against {c['without']:.0f} px ({c['ratio']:.2f}x{rci})"
            saturated |= max(c["with"], c["without"]) >= 0.9 * math.sqrt(H * W)
        peak_a, peak_b = (_peak_side(r) for r in (a, b))
        peak = (f"; peak (half-max) side {peak_b:.0f} against {peak_a:.0f} px"
                if math.isfinite(peak_a) and math.isfinite(peak_b) else "")
        out.append(f"{layer} ({method}): {how}, {c['far_with']:.2f} against {c['far_without']:.2f} "
                   f"({c['far_diff']:+.2f}{fci}){side}{peak}.")
        global_layers += [f"{m}'s {layer}" for m, r in ((without, a), (with_, b))
                          if r.trf.is_global and f"{m}'s {layer}" not in global_layers]
    if saturated:
        out.append(f"Where a 90%-mass side comes near the image side ({math.sqrt(H * W):.0f} px) the contribution "
                   "covers the whole image, and that side can no longer tell the models apart.")
    if global_layers:
        one = len(global_layers) == 1
        out.append(f"{', '.join(global_layers)} {'is' if one else 'are'} global: {'its' if one else 'their'} maps "
                   "are centred on the image's centre, not on each unit.")
    return out


def _peak_side(r: ERFResult) -> float:
    s = r.layer_stats if r.mode == "units" else r.unit_stats[0]
    return math.nan if s.get("side") is None else float(s["side"])


def _findings(summaries: Mapping[str, Mapping]) -> list[str]:
    """Sentences comparing the two models' segmentation, computed from the numbers."""
    out = []
    names = list(summaries)
    if len(names) == 2:
        a, b = names
        ma, mb = (summaries[n]["best"]["metrics"]["mean_iou"] for n in names)
        if ma is not None and mb is not None:
            verb = "above" if mb > ma else "below" if mb < ma else "level with"
            out.append(f"{b} reaches {100 * mb:.1f}% mean IoU, {abs(100 * (mb - ma)):.1f} points {verb} "
                       f"{a}'s {100 * ma:.1f}%.")
    return out


CAPTIONS = {
    "unit_panels": "ParseNet Fig. 2 style: one fc7 neuron, its activation, TRF and ERF",
    "training_curves": "Training loss and validation mean IoU",
    "segmentation": "Segmentation: image, ground truth, FCN, ParseNet",
}


def build_report(out: str | Path, results: Mapping, runs: Mapping[str, Path], *, setup: str = "",
                 fmt: str = "png", links: Mapping[str, str] | None = None) -> tuple[Path, Path, list[Path]]:
    """Figures and report of an experiment: ``results`` maps (model, layer, method) to ERFResult.

    ``runs`` is ordered: the first model is the baseline without context, the second the one with it.
    ``links`` (label -> address) are listed under the answer, e.g. the result browser's page.

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
                      "global": bool(r.trf.is_global), "reach": r.summary.get("reach")})
    figures = {}
    for p in sorted(paths, key=lambda p: not p.stem.startswith("reach_")):  # the answer's figures first
        label = figs[p.stem].get_label()
        caption = label if label and not label.startswith("_") else CAPTIONS.get(p.stem)
        if caption is None and p.stem.startswith("feature_scale_"):
            caption = f"{p.stem[len('feature_scale_'):]}: feature scale before and after L2 normalisation"
        figures[caption or p.stem.replace("_", " ")] = p
    names = list(runs)
    answer = answer_sentences(results, names[0], names[1]) if len(names) == 2 else []
    md, page = write_report(out, summaries=summaries, erf_table=table, figures=figures,
                            findings=_findings(summaries), setup=setup, answer=answer, links=links)
    return md, page, paths
