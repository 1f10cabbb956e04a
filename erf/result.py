"""The result of an ERF probe: maps, statistics, and everything needed to reproduce them.

Canvas geometry
---------------
Per-unit maps are *re-centred* on the unit's theoretical-RF centre, on a
canvas of 2H x 2W for H x W images, so every offset a neuron can see fits.
The image pixel at the unit's TRF centre ``(cy, cx)`` (rounded to the nearest
pixel, halves up: ``a = floor(c + 0.5)``) lands on canvas pixel ``(H, W)``;
image pixel ``(i, j)`` lands on canvas pixel ``(i - a_y + H, j - a_x + W)``.
Canvas pixels no image pixel reaches are 0. See :func:`recenter`.

Files
-----
:meth:`ERFResult.save` writes ``result.npz`` (the arrays) and then
``summary.json`` (everything else, readable by a person, with the npz's
SHA-256), each atomically. :meth:`ERFResult.load` refuses a folder missing
either file, one whose files do not belong together, or one of a format
version it cannot read.

Format versions: 1 had no per-image top-K arrays; 2 adds the optional
``topk_maps`` and ``topk_activations`` (and stores ``display_images`` for
the top-K images), which the unit browser shows. Version 1 folders still load,
with those arrays None.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from erf.rf import LayerRF
from erf.stats import (FAR_FRACTION, MASS_LEVELS, ERFStats, bootstrap_means, erf_stats, percentile_interval,
                       reach_from_sums, reach_sums, summarize)
from erf.util import atomic_write, finite_or_none

__all__ = ["FORMAT_VERSION", "ERFResult", "recenter", "canvas_anchor", "rf_to_dict", "rf_from_dict", "build_result",
           "REACH_CI", "reach_replicates"]

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: before the optional per-image top-K arrays existed
_ARRAYS = ("units", "maps", "layer_map", "topk_images", "topk_locations", "topk_values")
_OPTIONAL_ARRAYS = ("image_maps", "display_images", "activations", "topk_maps", "topk_activations")
REACH_CI = {"level": 0.95, "n_boot": 1000, "seed": 0}  # the bootstrap behind every reach interval
_CI_MEASURES = tuple(f"mass_side@{t:g}" for t in MASS_LEVELS) + ("far_share", "moment_radius")


def canvas_anchor(center: tuple[float, float]) -> tuple[int, int]:
    """The image pixel that lands on the canvas centre: ``floor(c + 0.5)`` per axis."""
    return int(math.floor(center[0] + 0.5)), int(math.floor(center[1] + 0.5))


def recenter(image_map: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Place a map on the image grid (..., H, W) onto the 2H x 2W canvas centred on ``center``.

    Args:
        image_map: array (..., H, W) on the image's pixel grid.
        center: (cy, cx) of the neuron's TRF centre in input pixels (pixel centres at integers).

    Returns:
        Array (..., 2H, 2W); ``out[..., H, W] == image_map[..., a_y, a_x]`` with ``a = canvas_anchor(center)``.

    Example:
        >>> m = np.arange(6.0).reshape(2, 3)
        >>> recenter(m, (0, 2))[..., 2, 3], recenter(m, (0, 2)).shape
        (2.0, (4, 6))
    """
    H, W = image_map.shape[-2:]
    ay, ax = canvas_anchor(center)
    out = np.zeros(image_map.shape[:-2] + (2 * H, 2 * W), dtype=image_map.dtype)
    # Image rows i with 0 <= i - ay + H < 2H, i.e. i in [ay - H, ay + H) intersected with [0, H).
    i0, i1 = max(0, ay - H), min(H, ay + H)
    j0, j1 = max(0, ax - W), min(W, ax + W)
    if i0 < i1 and j0 < j1:
        out[..., i0 - ay + H:i1 - ay + H, j0 - ax + W:j1 - ax + W] = image_map[..., i0:i1, j0:j1]
    return out


def rf_to_dict(rf) -> dict:
    """A LayerRF (or any dataclass / mapping) as a JSON-ready dict of plain numbers and lists."""
    d = asdict(rf) if is_dataclass(rf) else dict(rf)
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else float(v)))


def rf_from_dict(d: dict) -> LayerRF:
    """The :class:`erf.rf.LayerRF` that :func:`rf_to_dict` wrote (lists back to tuples; later fields default).

    Example:
        >>> r = receptive_field(torchvision.models.vgg16(), "features.30", 224)
        >>> rf_from_dict(rf_to_dict(r)) == r
        True
    """
    if isinstance(d, LayerRF):
        return d
    names = {f.name for f in fields(LayerRF)}
    required = [f.name for f in fields(LayerRF) if f.default is MISSING]
    missing = [k for k in required if k not in d]
    unknown = sorted(set(d) - names)
    if missing or unknown:
        raise ValueError(f"trf {d!r} lacks {', '.join(missing) or 'nothing'} and has unknown "
                         f"{', '.join(unknown) or 'nothing'}; expected the fields of erf.rf.LayerRF")
    return LayerRF(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _jsonify(obj):
    """Round-trip through JSON so save/load gives back exactly what was stored (tuples become lists)."""
    def default(v):
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        raise TypeError(f"cannot store {type(v).__name__} in summary.json")
    return json.loads(json.dumps(obj, default=default, allow_nan=False))


@dataclass
class ERFResult:
    """Empirical RF maps of one layer, their statistics, and their provenance.

    Attributes:
        method: ``"occlusion"`` (Zhou et al. 2015) or ``"gradient"`` (Luo et al. 2016).
        mode: ``"units"`` (each channel at its strongest location, top-K images),
            ``"neuron"`` (one fixed neuron on every image) or ``"position"``
            (gradient from all channels at one location).
        layer: the probed layer's name.
        image_size: (H, W) of the probed images.
        config: every setting that determines the maps (patch, stride, noise, seed, top_k, threshold, engine, ...).
        model: the model's identity: ``name``, ``fingerprint`` (SHA-256 of the weights that reach the layer),
            ``parameters``.
        images: the image names; indices in ``topk_images`` refer to this list.
        trf: the layer's theoretical RF (stored in ``summary.json`` as :func:`rf_to_dict` writes it).
        units: (U,) int channel indices.
        maps: (U, 2H, 2W) float32 re-centred ERF map per unit (see the module docstring for the canvas).
        layer_map: (2H, 2W) float32 mean of the non-empty unit maps.
        topk_images: (U, K) int, index into ``images`` of each unit's top-K images, strongest first; -1 if unused.
        topk_locations: (U, K, 2) int (y, x) of the unit in the layer's output on each of those images.
        topk_values: (U, K) float activation there.
        unit_stats: U dicts (:class:`erf.stats.ERFStats` ``.to_dict()``).
        layer_stats: statistics of ``layer_map``.
        summary: mean/std over units of each statistic, the table row (:meth:`table_row`) and ``reach``: the
            reach measures of ``layer_map`` (units) or ``maps[0]``, with 95% bootstrap intervals over units or
            images (:meth:`reach_samples`; None where there is a single map).
        image_maps: (N, H, W) float32 raw per-image map on the image grid (neuron and gradient modes), else None.
        neuron: (c, y, x) of the probed neuron, or None.
        display_images: optional (N, H, W, 3) uint8 images as a person sees them, for figures and the browser
            (rows no unit's top-K uses may be all zero).
        activations: optional (N, h, w) float32 activation map of the neuron's channel on each image, for figures.
        topk_maps: optional (U, K, gh, gw) float32 raw discrepancy map of each top-K image on the occluder grid
            (``config["grid"]``; centres from ``erf.occlusion.occluder_centers``), for the browser.
        topk_activations: optional (U, K, h, w) float32 activation map of the unit's channel on each top-K image.
    """

    method: str
    mode: str
    layer: str
    image_size: tuple[int, int]
    config: dict
    model: dict
    images: list[str]
    trf: LayerRF
    units: np.ndarray
    maps: np.ndarray
    layer_map: np.ndarray
    topk_images: np.ndarray
    topk_locations: np.ndarray
    topk_values: np.ndarray
    unit_stats: list[dict]
    layer_stats: dict
    summary: dict
    image_maps: np.ndarray | None = None
    neuron: tuple[int, int, int] | None = None
    display_images: np.ndarray | None = None
    activations: np.ndarray | None = None
    topk_maps: np.ndarray | None = None
    topk_activations: np.ndarray | None = None
    format_version: int = field(default=FORMAT_VERSION)

    @property
    def canvas_center(self) -> tuple[int, int]:
        """(H, W): the canvas pixel holding each unit's TRF centre."""
        return tuple(self.image_size)

    def table_row(self) -> dict:
        """TRF side, ERF side, ERF/TRF and ERF/image of this layer (the printed table's row)."""
        return dict(self.summary["table"])

    def reach_samples(self) -> tuple[np.ndarray, str]:
        """One row of :func:`erf.stats.reach_sums` per unit or image; their mean is the main map's sums.

        Returns:
            ``(samples (n, k), over)``: ``over`` is ``"units"`` (units mode: the non-empty unit maps, whose
            mean is ``layer_map``), ``"images"`` (one map per probed image, when their mean reproduces
            ``maps[0]``) or ``"none"`` (a single row: nothing to resample, no interval).
        """
        return _reach_samples(self.method, self.mode, self.image_size, self.maps, self.image_maps, self.trf,
                              self.topk_locations)

    # -- files ---------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``result.npz`` then ``summary.json`` into ``directory`` (created), each atomically.

        Returns:
            The folder.
        """
        directory = Path(directory)
        arrays = {name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        for name in _OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = np.asarray(getattr(self, name))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        payload = buf.getvalue()
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method, "mode": self.mode, "layer": self.layer,
            "image_size": list(self.image_size), "neuron": None if self.neuron is None else list(self.neuron),
            "summary": self.summary, "layer_stats": self.layer_stats, "trf": rf_to_dict(self.trf),
            "config": self.config, "model": self.model, "images": list(self.images),
            "unit_stats": self.unit_stats,
            "arrays": {k: list(v.shape) for k, v in arrays.items()},
            "npz_sha256": hashlib.sha256(payload).hexdigest(),
        }
        text = json.dumps(_jsonify(meta), indent=1)
        with atomic_write(directory / "result.npz") as f:
            f.write(payload)
        with atomic_write(directory / "summary.json", "w") as f:
            f.write(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ERFResult":
        """Read a folder written by :meth:`save`, checking that it is complete and of this format.

        Raises:
            FileNotFoundError: the folder does not exist.
            ValueError: a file is missing, the files do not belong together, or the format version differs.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"result folder {str(directory)!r} does not exist")
        missing = [n for n in ("result.npz", "summary.json") if not (directory / n).is_file()]
        if missing:
            raise ValueError(f"{str(directory)!r} is not a complete ERF result folder: {' and '.join(missing)} "
                             "missing (an interrupted probe? rerun it with --resume)")
        try:
            meta = json.loads((directory / "summary.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{str(directory / 'summary.json')!r} is not valid JSON ({exc})") from None
        version = meta.get("format_version") if isinstance(meta, dict) else None
        if version not in _READABLE_VERSIONS:
            raise ValueError(f"{str(directory)!r} holds an ERF result of format version {version!r}; this toolkit "
                             f"reads version {' or '.join(map(str, _READABLE_VERSIONS))}: rerun the probe to "
                             "regenerate it")
        payload = (directory / "result.npz").read_bytes()
        if hashlib.sha256(payload).hexdigest() != meta.get("npz_sha256"):
            raise ValueError(f"{str(directory)!r}: result.npz does not match summary.json (a partial or mixed "
                             "folder); rerun the probe")
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        absent = [k for k in _ARRAYS if k not in arrays]
        if absent:
            raise ValueError(f"{str(directory)!r}: result.npz lacks {', '.join(absent)}; expected {', '.join(_ARRAYS)}")
        return cls(
            method=meta["method"], mode=meta["mode"], layer=meta["layer"], image_size=tuple(meta["image_size"]),
            config=meta["config"], model=meta["model"], images=list(meta["images"]), trf=_load_trf(meta["trf"], directory),
            unit_stats=meta["unit_stats"], layer_stats=meta["layer_stats"], summary=meta["summary"],
            neuron=None if meta["neuron"] is None else tuple(meta["neuron"]),
            **{k: arrays.get(k) for k in _OPTIONAL_ARRAYS}, **{k: arrays[k] for k in _ARRAYS},
            format_version=int(version),
        )


def _load_trf(d: dict, directory: Path) -> LayerRF:
    try:
        return rf_from_dict(d)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(directory)!r}: summary.json's {exc}; rerun the probe to regenerate it") from None


def _reach_samples(method, mode, image_size, maps, image_maps, trf, topk_locations) -> tuple[np.ndarray, str]:
    """See :meth:`ERFResult.reach_samples`. Sums on the image grid are padded to the canvas's ring count."""
    H, W = image_size
    far = FAR_FRACTION * math.sqrt(H * W)
    main = maps[0] if mode != "units" else None
    if mode == "units":
        keep = maps.reshape(len(maps), -1).max(axis=1) > 0  # (U,): the units the layer map averages
        rows = np.stack([reach_sums(m, (H, W), far) for m in maps[keep]]) if keep.any() else \
            reach_sums(np.zeros((2 * H, 2 * W)), (H, W), far)[None]
        return rows, "units" if len(rows) > 1 else "none"  # one map: resampling it would fake certainty
    whole = reach_sums(main, (H, W), far)
    if image_maps is not None and len(image_maps) > 1:
        y, x = (int(v) for v in np.asarray(topk_locations)[0, 0])
        anchor = canvas_anchor((trf.start[0] + y * trf.jump[0], trf.start[1] + x * trf.jump[1]))
        per = np.asarray(image_maps, dtype=np.float64)  # (N, H, W)
        if method == "occlusion":  # the neuron map averages each image's map as a fraction of its peak
            peak = per.reshape(len(per), -1).max(axis=1)
            per = per / np.where(peak > 0, peak, 1.0)[:, None, None]
        rows = []
        for m in per:
            s = reach_sums(m, anchor, far)  # (r + 2,): fewer rings than on the canvas
            rows.append(np.concatenate([s[:-2], np.zeros(len(whole) - len(s)), s[-2:]]))
        samples = np.stack(rows)
        if np.allclose(samples.mean(0), whole, rtol=1e-3, atol=1e-6 * max(whole[:-2].sum(), 1e-30)):
            return samples, "images"
    return whole[None], "none"


def reach_replicates(samples: np.ndarray, *, n_boot: int = REACH_CI["n_boot"],
                     seed: int = REACH_CI["seed"]) -> dict[str, np.ndarray]:
    """Bootstrap replicates (n_boot,) of each reach measure of the mean map, resampling the rows of ``samples``."""
    reps = [reach_from_sums(r) for r in bootstrap_means(samples, n_boot=n_boot, seed=seed)]
    return {k: np.array([r[k] for r in reps]) for k in _CI_MEASURES}


def _reach_summary(stat: ERFStats, samples: np.ndarray, over: str) -> dict:
    """The main map's reach measures with their bootstrap intervals (None where nothing is resampled)."""
    out = {f"mass_side@{t:g}": v for t, v in zip(stat.mass_levels, stat.mass_sides)}
    out.update(far_share=stat.far_share, far_radius=stat.far_radius, moment_radius=stat.moment_radius,
               spread=stat.spread, spread_from=stat.spread_from, resampled=over, n=int(len(samples)),
               ci_level=REACH_CI["level"], n_boot=REACH_CI["n_boot"])
    reps = reach_replicates(samples) if over != "none" else {}
    out["ci"] = {k: (list(percentile_interval(reps[k], REACH_CI["level"])) if k in reps else None)
                 for k in _CI_MEASURES}
    return out


def build_result(
    *,
    method: str,
    mode: str,
    layer: str,
    image_size: tuple[int, int],
    config: dict,
    model: dict,
    images: list[str],
    trf: LayerRF | dict,
    units: np.ndarray,
    maps: np.ndarray,
    trf_areas: np.ndarray,
    topk_images: np.ndarray,
    topk_locations: np.ndarray,
    topk_values: np.ndarray,
    image_maps: np.ndarray | None = None,
    neuron: tuple[int, int, int] | None = None,
    threshold: float = 0.5,
    display_images: np.ndarray | None = None,
    topk_maps: np.ndarray | None = None,
    topk_activations: np.ndarray | None = None,
) -> ERFResult:
    """Compute the statistics of re-centred unit maps (U, 2H, 2W) and assemble an :class:`ERFResult`.

    ``trf`` is the layer's :class:`erf.rf.LayerRF` (or the dict :func:`rf_to_dict` makes of one).

    ``trf_areas`` (U,) is each unit's TRF area clipped to the image (averaged over its
    top-K locations). The layer map is the mean of the non-empty unit maps; units
    whose map is all zero (never changed by any occluder) are counted in
    ``summary["empty_units"]`` and left out of the means. ``display_images``,
    ``topk_maps`` and ``topk_activations`` are stored as given (see :class:`ERFResult`).
    """
    H, W = image_size
    trf = rf_from_dict(rf_to_dict(trf))  # a LayerRF of plain numbers, whatever the caller's rf held
    maps = np.asarray(maps, dtype=np.float32)
    nonempty = maps.reshape(len(maps), -1).max(axis=1) > 0  # (U,)
    layer_map = maps[nonempty].mean(axis=0) if nonempty.any() else np.zeros((2 * H, 2 * W), np.float32)
    center = (H, W)
    stats: list[ERFStats] = [erf_stats(m, center=center, trf_area=float(a), image_area=H * W, threshold=threshold)
                             for m, a in zip(maps, trf_areas)]
    layer_trf_area = float(np.mean(trf_areas[nonempty])) if nonempty.any() else float(np.mean(trf_areas))
    layer_stat = erf_stats(layer_map, center=center, trf_area=layer_trf_area, image_area=H * W, threshold=threshold)
    summary = summarize(stats)
    trf_side = math.sqrt(float(trf.rf[0]) * float(trf.rf[1]))
    erf_side = summary["side"]["mean"]
    summary["empty_units"] = int((~nonempty).sum())
    samples, over = _reach_samples(method, mode, (H, W), maps, image_maps, trf, topk_locations)
    summary["reach"] = _reach_summary(layer_stat, samples, over)  # of the layer map (units) or the one map
    mass90 = summary["reach"]["mass_side@0.9"]
    summary["table"] = {
        "layer": layer,
        "units": int(len(maps)),
        "trf_side": trf_side,  # geometric mean of the per-axis TRF sizes (unclipped)
        "erf_side": erf_side,  # mean over units of the thresholded ERF side
        "erf_side_std": summary["side"]["std"],
        "layer_map_side": layer_stat.side,
        "erf_over_trf": None if erf_side is None else erf_side / trf_side,
        "erf_over_image": summary["frac_image"]["mean"],  # ERF area / image area, mean over units
        "mass90_side": mass90,  # side of the centred square holding 90% of the layer map's contribution
        "mass90_ci": summary["reach"]["ci"]["mass_side@0.9"],
        "far_share": summary["reach"]["far_share"],
    }
    return ERFResult(
        method=method, mode=mode, layer=layer, image_size=(H, W), config=_jsonify(config), model=_jsonify(model),
        images=list(images), trf=trf, units=np.asarray(units, dtype=np.int64), maps=maps, layer_map=layer_map.astype(np.float32),
        topk_images=np.asarray(topk_images, dtype=np.int64), topk_locations=np.asarray(topk_locations, np.int64),
        topk_values=np.asarray(topk_values, dtype=np.float64), unit_stats=[s.to_dict() for s in stats],
        layer_stats=layer_stat.to_dict(), summary=_jsonify(finite_or_none(summary)), image_maps=image_maps,
        neuron=None if neuron is None else tuple(int(v) for v in neuron),
        display_images=None if display_images is None else np.asarray(display_images, dtype=np.uint8),
        topk_maps=None if topk_maps is None else np.asarray(topk_maps, dtype=np.float32),
        topk_activations=None if topk_activations is None else np.asarray(topk_activations, dtype=np.float32),
    )

