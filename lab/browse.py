"""The ERF browser: every probed unit one click away, as a static site.

:func:`write_browser` turns ERF result folders (``erf.ERFResult``) into one
self-contained folder of HTML, PNG/JPEG files and a little plain JavaScript
(``browse.js``), which a browser opens from disk: no server, no network.

Site layout under ``out``::

    index.html                      every result, and the side-by-side pairs
    browse.js, browse.css           sorting, the scatter plot, histograms
    <slug>/index.html               a layer's overview: sortable table and clickable scatter plot
    <slug>/unit/<u>.html            a unit page: ERF map with its TRF box, top-K images, statistics
    <slug>/img/erf_<u>.png          the unit's re-centred ERF map (shared by the table, plot and unit page)
    <slug>/img/topk_<u>.jpg         its top-K images: activation (top row) and discrepancy map (bottom row)
    compare/<a>--<b>.html           two results of the same layer side by side
    .erf-browse                     marks the folder as a browser (so a rerun may replace it)

Per-unit measures are computed from the stored maps with :mod:`erf.stats`
(see :data:`MEASURES`). Results written before format version 2 lack the top-K
images; their unit pages say so and show the rest.
"""
from __future__ import annotations

import functools
import html
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from erf.occlusion import grid_renderer
from erf.result import ERFResult
from erf.stats import FIT_R2_MIN, centered_square
from erf.util import finite_or_none, format_number

__all__ = ["BrowseConfig", "MEASURES", "Measure", "unit_measures", "find_results", "write_browser",
           "write_demo_browser", "DEMO_BROWSER"]

_MARKER = ".erf-browse"
DEMO_BROWSER = "browser/index.html"  # where erf-demo's browser opens, relative to the report
_ASSETS = Path(__file__).with_name("browse_assets")


@dataclass(frozen=True)
class BrowseConfig:
    """How the site is drawn.

    Args:
        tile: side in pixels of each top-K thumbnail (images are downscaled or stretched to it).
        map_side: side in pixels of a unit's ERF map picture (the 2H x 2W canvas, downscaled).
        far_fraction: the far-field share counts contribution farther than this fraction of the
            image side (the shorter one) from the unit.
        jpeg_quality: quality of the top-K strips (photographs; the maps are PNG).
    """

    tile: int = 88
    map_side: int = 176
    far_fraction: float = 0.25
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        for name in ("tile", "map_side"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 16 <= v <= 1024:
                raise ValueError(f"{name}={v!r}; expected an integer number of pixels in 16..1024")
        if not 0 < self.far_fraction < 1:
            raise ValueError(f"far_fraction={self.far_fraction!r}; expected a fraction of the image side in (0, 1)")
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality={self.jpeg_quality!r}; expected an integer in 1..95")


# --------------------------------------------------------------------------- measures
@dataclass(frozen=True)
class Measure:
    """One column of the overview table and one axis choice of its scatter plot.

    ``stat`` names the key in ``ERFResult.unit_stats`` that holds it; where a
    result lacks that key the browser computes it from the unit's map.
    """

    key: str
    label: str
    stat: str | None
    help: str


MEASURES = (
    Measure("side", "half-max side (px)", "side", "side of the square with the area above half the peak (Zhou et al.): "
                                                  "the peak"),
    Measure("erf_over_trf", "ERF/TRF", None, "half-max side over the TRF side (the printed table's ERF/TRF)"),
    Measure("mass90", "90% mass side (px)", None, "side of the smallest centred square holding 90% of the map's total: "
                                                  "the reach"),
    Measure("far_share", "far-field share", "far_share", "share of the map's total farther than a quarter of the "
                                                         "image side from the unit"),
    Measure("spread", "spread (px)", None, "Gaussian sigma where the fit holds (R^2 >= 0.5), else the second-moment "
                                           "radius"),
    Measure("r2", "fit R^2", "r2", "how well the Gaussian fits"),
    Measure("activation", "top activation", None, "the unit's strongest activation over the images"),
)


def unit_measures(result: ERFResult, *, far_fraction: float = 0.25) -> list[dict]:
    """Every :data:`MEASURES` value of every unit of ``result``, as U dicts (None where undefined).

    Args:
        result: a loaded ERF result.
        far_fraction: the far-field radius as a fraction of the shorter image side.

    Example:
        >>> unit_measures(res)[0]["mass90"]   # a 9-pixel square holds 90% of unit 0's map
        9.0
    """
    H, W = result.image_size
    trf_side = (result.summary.get("table") or {}).get("trf_side")
    radius = far_fraction * min(H, W)
    yy, xx = np.mgrid[:2 * H, :2 * W]
    far = np.hypot(yy - H, xx - W) > radius  # (2H, 2W): canvas pixels farther than the radius from the unit
    out = []
    for u, (m, stats) in enumerate(zip(result.maps, result.unit_stats)):
        total = float(m.sum())
        row = {"unit": int(result.units[u])}
        for meas in MEASURES:
            if meas.stat is not None and meas.stat in stats:
                row[meas.key] = stats[meas.stat]
        row.setdefault("erf_over_trf", None if stats.get("side") is None or not trf_side
                       else stats["side"] / trf_side)
        if 0.9 in (stats.get("mass_levels") or ()):  # erf.stats' reach measures; computed here for older results
            row["mass90"] = stats["mass_sides"][list(stats["mass_levels"]).index(0.9)]
        row.setdefault("mass90", None if total <= 0 else centered_square(m, (H, W), 0.9))
        row.setdefault("far_share", None if total <= 0 else float(m[far].sum()) / total)
        if stats.get("spread_from") in ("fit", "moment"):
            row["spread"] = stats.get("spread")
        else:  # older results: the fit's sigma only where the fit holds
            sy, sx, r2 = stats.get("sigma_y"), stats.get("sigma_x"), stats.get("r2")
            ok = None not in (sy, sx, r2) and r2 >= FIT_R2_MIN
            row["spread"] = math.sqrt(sy * sx) if ok else None
        values = result.topk_values[u]
        finite = values[np.isfinite(values)]
        row.setdefault("activation", float(finite.max()) if finite.size else None)
        out.append(finite_or_none(row))
    return out


# --------------------------------------------------------------------------- inputs
def find_results(paths) -> list[tuple[str, Path]]:
    """The ERF result folders in ``paths`` (each a result folder or a folder holding some), labelled.

    Labels are the folders' paths with the common part removed (``fcn/conv5_3/occlusion``).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a path holds no result folder, or the same folder is given twice.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    folders: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"result folder {str(p)!r} does not exist")
        found = [p] if (p / "summary.json").is_file() else sorted(
            s.parent for s in p.rglob("summary.json") if (s.parent / "result.npz").is_file())
        if not found:
            raise ValueError(f"{str(p)!r} holds no ERF result folder (result.npz with summary.json); expected "
                             "an erf-probe --out folder or a folder of them")
        folders += found
    resolved = [f.resolve() for f in folders]
    dup = next((f for f in folders if resolved.count(f.resolve()) > 1), None)
    if dup is not None:
        raise ValueError(f"result folder {str(dup)!r} is given twice; expected each result once")
    if len(resolved) == 1:
        return [(resolved[0].name, folders[0])]
    common = Path(os.path.commonpath(resolved))
    return [(r.relative_to(common).as_posix() or r.name, f) for r, f in zip(resolved, folders)]


def _slug(label: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.replace("/", "--"))
    return keep.strip("-.") or "result"


# --------------------------------------------------------------------------- drawing
def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)  # (256, 3)


class _Painter:
    """Turns arrays into the site's pictures with numpy and PIL (matplotlib only for its colour maps)."""

    def __init__(self, cfg: BrowseConfig):
        self.cfg = cfg
        self.erf_lut, self.act_lut = _lut("inferno"), _lut("viridis")
        self._bases: dict = {}  # image key -> (T, T, 3) thumbnail and its grey (T, T, 1): units share images

    @staticmethod
    def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Bilinear resize of a float map (h, w) to size (H, W)."""
        return np.asarray(Image.fromarray(np.asarray(a, np.float32), mode="F").resize(
            (size[1], size[0]), Image.BILINEAR))

    def colour(self, m: np.ndarray, lut: np.ndarray) -> np.ndarray:
        """(h, w) non-negative map -> (h, w, 3) uint8, scaled to its own peak."""
        peak = float(m.max()) if m.size else 0.0
        idx = np.zeros(m.shape, np.uint8) if peak <= 0 else np.clip(m / peak * 255, 0, 255).astype(np.uint8)
        return lut[idx]

    def erf_map(self, m: np.ndarray, trf_rf, image_size) -> Image.Image:
        """The re-centred map (2H, 2W) downscaled to ``map_side``, with the image-sized frame and TRF box to scale."""
        H, W = image_size
        side = self.cfg.map_side
        scale = side / max(2 * H, 2 * W)
        size = (max(1, round(2 * H * scale)), max(1, round(2 * W * scale)))
        img = Image.fromarray(self.colour(self._resize(m, size), self.erf_lut))
        draw = ImageDraw.Draw(img)
        cy, cx = (H + 0.5) * scale, (W + 0.5) * scale  # the unit's TRF centre (canvas pixel (H, W))
        if trf_rf is not None:
            ry, rx = trf_rf[0] * scale / 2, trf_rf[1] * scale / 2
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], outline=(0, 230, 255), width=1)
        draw.line([cx - 4, cy, cx + 4, cy], fill=(255, 255, 255))
        draw.line([cx, cy - 4, cx, cy + 4], fill=(255, 255, 255))
        return img

    def tile(self, image: np.ndarray, overlay: np.ndarray | None, lut, box=None, mark=None, key=None) -> Image.Image:
        """One top-K thumbnail: the image, the map blended over it, a box and a marker (image pixels)."""
        H, W = image.shape[:2]
        T = self.cfg.tile
        if key is None or key not in self._bases:
            base = np.asarray(Image.fromarray(image).resize((T, T), Image.BILINEAR), np.float32)  # (T, T, 3)
            pair = (base, base.mean(axis=2, keepdims=True))
            if key is None:
                base, grey = pair
            else:
                self._bases[key] = pair
        if key is not None:
            base, grey = self._bases[key]
        if overlay is not None:
            heat = self.colour(self._resize(overlay, (T, T)), lut).astype(np.float32)
            base = 0.45 * grey + 0.55 * heat  # grey image under the map
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        sy, sx = T / H, T / W
        if box is not None:
            top, left, bottom, right = box
            draw.rectangle([left * sx, top * sy, right * sx - 1, bottom * sy - 1], outline=(0, 230, 255))
        if mark is not None:
            y, x = (mark[0] + 0.5) * sy, (mark[1] + 0.5) * sx
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(255, 40, 40), width=2)
        return img


@dataclass
class _View:
    """One image of a unit's page: the image, the channel's activation, the discrepancy map, the unit's place."""

    name: str
    value: float
    location: tuple[int, int]  # (y, x) in the layer's output
    image: np.ndarray  # (H, W, 3) uint8
    activation: np.ndarray  # (h, w)
    discrepancy: Callable[[], np.ndarray]  # () -> (H, W) on the image pixels, drawn only when needed


_MAX_NEURON_VIEWS = 16  # a neuron result holds every image; its page shows the strongest ones


def _views(r: ERFResult) -> list[list[_View]] | None:
    """Per unit, the images its page shows, strongest first; None where the result does not store them.

    Units results (format 2) keep each unit's top-K images, activations and
    discrepancy maps on the occluder grid; neuron results keep every image's
    map on the image grid, and the images and activations when the caller
    added them (``erf-demo`` does).
    """
    H, W = r.image_size
    if r.mode == "units" and not any(a is None for a in (r.topk_maps, r.display_images, r.topk_activations)):
        render = grid_renderer((H, W), tuple(r.config["patch"]), tuple(r.config["stride"]))
        return [[_View(r.images[j], float(r.topk_values[i, k]), tuple(int(v) for v in r.topk_locations[i, k]),
                       r.display_images[j], r.topk_activations[i, k],
                       functools.partial(render, r.topk_maps[i, k]))
                 for k, j in enumerate(r.topk_images[i]) if j >= 0] for i in range(len(r.units))]
    if r.mode == "neuron" and not any(a is None for a in (r.image_maps, r.display_images, r.activations)):
        order = np.argsort(-r.topk_values[0], kind="stable")[:_MAX_NEURON_VIEWS]
        return [[_View(r.images[j], float(r.topk_values[0, j]), tuple(int(v) for v in r.topk_locations[0, j]),
                       r.display_images[j], r.activations[j], functools.partial(np.asarray, r.image_maps[j]))
                 for j in order]]
    return None


# --------------------------------------------------------------------------- pages
def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="stylesheet" href="{up}browse.css"><script src="{up}browse.js"></script></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def _fmt(v, digits=3) -> str:
    """A number for the page: ``digits`` significant digits (whole numbers from 10^4 on), "–" for None and NaN."""
    if isinstance(v, float):
        return format_number(v, f".{digits}g" if abs(v) < 1e4 else ".0f", "–")
    return "–" if v is None else html.escape(str(v))


def _missing(result: ERFResult, has_views: bool) -> list[str]:
    """What this result cannot show, in words."""
    notes = []
    if result.mode == "neuron" and not has_views:
        notes.append("this neuron result does not store the images and activations as people see them "
                     "(erf-demo adds them), so its page shows the averaged map only")
    elif result.mode not in ("units", "neuron"):
        notes.append(f"this is a {result.mode!r} result (one map, no per-image maps); "
                     "the unit page shows its map and statistics")
    elif result.mode == "units" and not has_views:
        gone = [n for n, a in (("the images", result.display_images), ("activation maps", result.topk_activations),
                               ("per-image discrepancy maps", result.topk_maps)) if a is None]
        notes.append(f"this result (format version {result.format_version}) does not store {', '.join(gone)} of "
                     "each unit's top-K images, so unit pages show the averaged map only; rerun erf-probe to get them")
    if result.config.get("display_images") == "min-max":
        notes.append("image colours are approximate: the probe got normalised tensors without their mean and std, "
                     "so pixels were stretched per channel")
    if result.trf.is_global:
        notes.append("global layer: the TRF is the whole image, so no TRF box is drawn")
    return notes


@dataclass(eq=False)
class _Layer:
    label: str
    slug: str
    result: ERFResult
    rows: list[dict]
    has_views: bool = False


def _overview(layer: _Layer, pairs: list[tuple[str, str]]) -> str:
    r = layer.result
    t = r.summary.get("table", {})
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in _missing(r, layer.has_views))
    compare = "".join(f'<li><a href="../compare/{html.escape(f)}">{html.escape(txt)}</a></li>' for txt, f in pairs)
    columns = [{"key": "unit", "label": "unit", "help": "channel index"}] + [
        {"key": m.key, "label": m.label, "help": m.help} for m in MEASURES]
    data = {"units": layer.rows, "columns": columns, "x": "side", "y": "far_share"}
    head = (f'<p><a href="../index.html">all results</a></p><h1>{html.escape(r.layer)} '
            f'<small>{html.escape(layer.label)}</small></h1>'
            f'<p class="meta">{html.escape(r.model.get("name", "?"))} · {html.escape(r.method)} probe · '
            f'{len(r.units)} units · {len(r.images)} images of {r.image_size[0]}x{r.image_size[1]} px · '
            f'TRF side {_fmt(t.get("trf_side"))} px · mean half-max side {_fmt(t.get("erf_side"))} px · '
            f'ERF/TRF {_fmt(t.get("erf_over_trf"))}</p>{notes}')
    if compare:
        head += f"<p>Side by side with:</p><ul>{compare}</ul>"
    body = f"""{head}
<div class="row">
 <figure><img src="img/layer.png" alt="layer map" width="220"><figcaption>mean ERF of the layer's
 units, re-centred on each unit (cyan: TRF)</figcaption></figure>
 <div><p class="controls"><label>x <select id="xsel"></select></label>
 <label>y <select id="ysel"></select></label></p>
 <svg id="scatter" width="520" height="360"></svg></div>
</div>
<p class="hint">Click a column head to sort, a row or a dot to open the unit.</p>
<table id="units" class="sortable"><thead></thead><tbody></tbody></table>
<script>const DATA = {json.dumps(data)};
Browse.overview(DATA, u => "unit/" + u + ".html", u => "img/erf_" + u + ".png");</script>"""
    return _page(f"{r.layer} · {layer.label}", body, 1)


def _unit_page(layer: _Layer, i: int, views: list[_View] | None, counterpart: tuple[str, str] | None) -> str:
    r, row = layer.result, layer.rows[i]
    u = row["unit"]
    prev_u = layer.rows[i - 1]["unit"] if i > 0 else None
    next_u = layer.rows[i + 1]["unit"] if i + 1 < len(layer.rows) else None
    nav = " · ".join(x for x in (
        f'<a href="../index.html">overview</a>',
        f'<a id="prev" href="{prev_u}.html">unit {prev_u}</a>' if prev_u is not None else "",
        f'<a id="next" href="{next_u}.html">unit {next_u}</a>' if next_u is not None else "",
        f'<a href="../../compare/{counterpart[1]}#u{u}">{html.escape(counterpart[0])}</a>' if counterpart else "",
    ) if x)
    stats = "".join(f"<tr><th title=\"{html.escape(m.help)}\">{html.escape(m.label)}</th><td>{_fmt(row[m.key])}</td></tr>"
                    for m in MEASURES)
    s = r.unit_stats[i]
    stats += "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in (
        ("area above half-max (px)", s.get("area")), ("ERF area / image", s.get("frac_image")),
        ("ERF area / clipped TRF", s.get("frac_trf")),
        *((f"{int(lv * 100)}% mass side (px)", sv) for lv, sv in zip(s.get("levels", []), s.get("square_sides", []))),
        ("Gaussian sigma y, x (px)", None if s.get("sigma_y") is None or (s.get("r2") or 0) < FIT_R2_MIN
         else f"{s['sigma_y']:.3g}, {s['sigma_x']:.3g}")))  # a failed fit's sigma is never shown
    if views:
        caps = "".join(f"<li>#{k + 1} {html.escape(v.name)}: activation {_fmt(v.value)} at "
                       f"({v.location[0]}, {v.location[1]})</li>" for k, v in enumerate(views))
        what = f"Top {len(views)} images" if r.mode == "units" else f"The {len(views)} strongest of its images"
        topk = (f'<h2>{what}</h2><img id="topk" src="../img/topk_{u}.jpg" alt="top-K images of unit {u}">'
                f'<p class="hint">Top row: the activation map of channel {u} over each image, the unit marked '
                f'(red circle) with its TRF (cyan). Bottom row: the discrepancy map of that image (what the '
                f'noise patch changed).</p><ol class="names">{caps}</ol>')
    else:
        topk = ""
    topk += "".join(f'<p class="note">{html.escape(n)}</p>' for n in _missing(r, views is not None))
    H, W = r.image_size
    rf = r.trf.rf
    if r.trf.is_global:
        trf_words = "no TRF box (global layer)"
    elif rf[0] >= 2 * H and rf[1] >= 2 * W:
        trf_words = f"its TRF, {_fmt(rf[0])} px, is larger than the whole picture"
    else:
        trf_words = f"cyan: its TRF, {_fmt(rf[0])} px, to scale"
    body = f"""<p class="nav">{nav}</p>
<h1>{html.escape(r.layer)} unit <span id="unit-number">{u}</span> <small>{html.escape(layer.label)}</small></h1>
<div class="row"><figure><img id="erf-map" src="../img/erf_{u}.png" alt="ERF map of unit {u}">
<figcaption>ERF map re-centred on the unit (white cross); {trf_words}. The picture spans twice the
image.</figcaption></figure>
<table class="stats">{stats}</table></div>
{topk}"""
    return _page(f"{r.layer} unit {u} · {layer.label}", body, 2)


def _compare_page(a: _Layer, b: _Layer, matched: bool, fname: str) -> str:
    keys = [m.key for m in MEASURES]
    data = {"a": {"label": a.label, "slug": a.slug, "rows": a.rows}, "b": {"label": b.label, "slug": b.slug,
            "rows": b.rows}, "measures": [{"key": m.key, "label": m.label} for m in MEASURES], "matched": matched}
    how = ("The two results probe the same units of the same architecture (same channels and TRF), so rows pair "
           "unit i with unit i." if matched else
           "The units cannot be paired (different channels or TRF), so the two are compared as distributions.")
    body = f"""<p><a href="../index.html">all results</a></p>
<h1>{html.escape(a.result.layer)}: <span class="a">{html.escape(a.label)}</span> against
<span class="b">{html.escape(b.label)}</span></h1><p>{how}</p>
<div class="row">
 <figure><img src="../{a.slug}/img/layer.png" width="220" alt="layer map A"><figcaption class="a">{html.escape(a.label)}
 </figcaption></figure>
 <figure><img src="../{b.slug}/img/layer.png" width="220" alt="layer map B"><figcaption class="b">{html.escape(b.label)}
 </figcaption></figure>
</div>
<h2>Distributions</h2><div id="hists" class="row"></div>
{'<h2>Unit by unit</h2><p class="hint">Click a column head to sort; a map opens its unit page.</p>'
 '<table id="pairs" class="sortable"><thead></thead><tbody></tbody></table>' if matched else ''}
<script>const DATA = {json.dumps(data)};
Browse.compare(DATA, {json.dumps(keys)});</script>"""
    return _page(f"{a.label} against {b.label}", body, 1)


def _index_page(layers: list[_Layer], pairs: list[tuple[_Layer, _Layer, str]]) -> str:
    rows = "".join(
        f'<tr><td><a href="{l.slug}/index.html">{html.escape(l.label)}</a></td><td>{html.escape(l.result.layer)}</td>'
        f"<td>{html.escape(l.result.method)}</td><td>{len(l.result.units)}</td>"
        f"<td>{_fmt(l.result.summary.get('table', {}).get('trf_side'))}</td>"
        f"<td>{_fmt(l.result.summary.get('table', {}).get('erf_side'))}</td></tr>" for l in layers)
    comp = "".join(f'<li><a href="compare/{f}">{html.escape(a.label)} against {html.escape(b.label)}</a></li>'
                   for a, b, f in pairs)
    body = (f"<h1>ERF browser</h1><table><thead><tr><th>result</th><th>layer</th><th>method</th><th>units</th>"
            f"<th>TRF side</th><th>mean half-max side</th></tr></thead><tbody>{rows}</tbody></table>"
            + (f"<h2>Side by side</h2><ul>{comp}</ul>" if comp else ""))
    return _page("ERF browser", body, 0)


# --------------------------------------------------------------------------- the writer
def _pairs(layers: list[_Layer]) -> list[tuple[_Layer, _Layer, bool]]:
    """Results of the same layer and method: paired by unit index where the units and the TRF agree."""
    out = []
    for i, a in enumerate(layers):
        for b in layers[i + 1:]:
            ra, rb = a.result, b.result
            if ra.layer == rb.layer and ra.method == rb.method and ra.mode == rb.mode:
                matched = (np.array_equal(ra.units, rb.units) and ra.trf == rb.trf
                           and tuple(ra.image_size) == tuple(rb.image_size))
                out.append((a, b, matched))
    return out


def _write_layer(dest: Path, layer: _Layer, painter: _Painter, counterparts: dict, pairs_for: list) -> None:
    r = layer.result
    (dest / "unit").mkdir(parents=True)
    (dest / "img").mkdir()
    rf = None if r.trf.is_global else r.trf.rf
    H, W = r.image_size
    layer_cfg = BrowseConfig(tile=painter.cfg.tile, map_side=220, far_fraction=painter.cfg.far_fraction)
    _Painter(layer_cfg).erf_map(r.layer_map, rf, (H, W)).save(dest / "img" / "layer.png")
    all_views = _views(r)
    layer.has_views = all_views is not None
    jump, start = r.trf.jump, r.trf.start
    for i, row in enumerate(layer.rows):
        u = row["unit"]
        painter.erf_map(r.maps[i], rf, (H, W)).save(dest / "img" / f"erf_{u}.png")
        views = None if all_views is None else all_views[i]
        if views:
            tiles = []
            for v in views:
                cy, cx = start[0] + v.location[0] * jump[0], start[1] + v.location[1] * jump[1]  # TRF centre (px)
                box = None if rf is None else (cy + 0.5 - rf[0] / 2, cx + 0.5 - rf[1] / 2,
                                               cy + 0.5 + rf[0] / 2, cx + 0.5 + rf[1] / 2)
                act = np.maximum(np.asarray(v.activation, np.float32), 0)
                top = painter.tile(v.image, act, painter.act_lut, box=box, mark=(cy, cx), key=(layer.slug, v.name))
                bottom = painter.tile(v.image, v.discrepancy(), painter.erf_lut, box=box, mark=(cy, cx),
                                      key=(layer.slug, v.name))
                tiles.append((top, bottom))
            T = painter.cfg.tile
            strip = Image.new("RGB", (max(1, len(tiles)) * (T + 4) - 4, 2 * T + 4), (255, 255, 255))
            for k, (top, bottom) in enumerate(tiles):
                strip.paste(top, (k * (T + 4), 0))
                strip.paste(bottom, (k * (T + 4), T + 4))
            strip.save(dest / "img" / f"topk_{u}.jpg", quality=painter.cfg.jpeg_quality)
        (dest / "unit" / f"{u}.html").write_text(_unit_page(layer, i, views, counterparts.get(layer.slug)))
    (dest / "index.html").write_text(_overview(layer, pairs_for))


def write_browser(results, out: str | os.PathLike, *, cfg: BrowseConfig = BrowseConfig(),
                  overwrite: bool = True, log=None) -> Path:
    """Write the ERF browser for ``results`` into the folder ``out``.

    Every input is loaded and checked before anything is written; the site is
    built in a temporary folder beside ``out`` and renamed into place, so a
    failure leaves no partial site. An existing ``out`` is replaced only if it
    is an earlier browser (it holds the ``.erf-browse`` marker) or empty.

    Args:
        results: result folders or folders holding them (see :func:`find_results`).
        out: the site's folder; open ``out/index.html``.
        cfg: picture sizes and the far-field radius.
        overwrite: replace an earlier browser in ``out`` (default True); False refuses any existing ``out``.
        log: called with one-line progress messages, or None.

    Returns:
        ``out`` as a Path.

    Raises:
        FileNotFoundError, ValueError: a result folder is missing or unreadable.
        FileExistsError: ``out`` exists and is not an earlier browser (or ``overwrite`` is False).
    """
    out = Path(out)
    found = find_results(results)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"output {str(out)!r} is a file; expected a folder for the site")
        if any(out.iterdir()) and not ((out / _MARKER).is_file() and overwrite):
            raise FileExistsError(f"output folder {str(out)!r} exists and is not an ERF browser written earlier; "
                                  "choose a new or empty folder")
    layers, slugs = [], set()
    for label, folder in found:
        result = ERFResult.load(folder)
        slug = _slug(label)
        while slug in slugs or slug == "compare":
            slug += "_"
        slugs.add(slug)
        layers.append(_Layer(label, slug, result, unit_measures(result, far_fraction=cfg.far_fraction)))
    pairs = [(a, b, m, f"{a.slug}--{b.slug}.html") for a, b, m in _pairs(layers)]
    counterparts = {}
    for a, b, m, f in pairs:
        if m:
            counterparts.setdefault(a.slug, (f"side by side with {b.label}", f))
            counterparts.setdefault(b.slug, (f"side by side with {a.label}", f))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        painter = _Painter(cfg)
        for layer in layers:
            t0 = time.perf_counter()
            pairs_for = [(f"{b.label if a is layer else a.label}", f) for a, b, m, f in pairs if layer is a or layer is b]
            _write_layer(tmp / layer.slug, layer, painter, counterparts, pairs_for)
            if log is not None:
                log(f"[browse] {layer.label}: {len(layer.rows)} units in {time.perf_counter() - t0:.1f} s")
        (tmp / "compare").mkdir()
        for a, b, m, f in pairs:
            (tmp / "compare" / f).write_text(_compare_page(a, b, m, f))
        (tmp / "index.html").write_text(_index_page(layers, [(a, b, f) for a, b, _, f in pairs]))
        for name in ("browse.js", "browse.css"):
            shutil.copyfile(_ASSETS / name, tmp / name)
        (tmp / _MARKER).write_text("written by erf-browse; a rerun may replace this folder\n")
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_demo_browser(run_dir: str | os.PathLike, *, log=None) -> Path:
    """The browser of an ``erf-demo`` folder: every result under ``run_dir/probe`` into ``run_dir/browser``.

    Returns:
        The site's ``index.html`` (``run_dir / DEMO_BROWSER``), for the report to link.
    """
    run_dir = Path(run_dir)
    return write_browser([run_dir / "probe"], run_dir / Path(DEMO_BROWSER).parent, log=log) / "index.html"
