"""Size statistics of an empirical receptive field map (pure numpy + scipy).

Every map is a 2-D array of non-negative contributions (a discrepancy map,
or |gradient|). Three views of its size:

* **Thresholded size** (Zhou et al. 2015, ParseNet Fig. 2): pixels above
  ``threshold * max``; the side of the square of the same area; that area as a
  fraction of the theoretical RF area (clipped to the image) and of the image.
* **Centred-square contribution** (Luo et al. 2016, and the architecture papers
  that quote them): the side of the smallest square centred on the neuron that
  holds a fraction ``t`` of the map's total, for ``t`` in 0.2, 0.3, 0.5, 0.99.
* **Gaussian fit** (Luo et al. 2016, Sec. 2: the ERF is Gaussian-shaped): an
  axis-aligned 2-D Gaussian fitted by least squares, its sigmas and R^2.

The thresholded size measures the *peak*: a map with a strong centre and a
second lobe far away has the same half-max side as the centre alone. Three
measures of *reach* follow the contribution wherever it lies:

* **Contribution-mass extent**: the centred-square side holding 50%, 90% and
  99% of the total (RepLKNet, Ding et al. CVPR 2022, report the same squares
  as a high-contribution area ratio, side^2 / image area, at t = 0.2, 0.3,
  0.5, 0.99: ``square_frac_image``).
* **Far-field share**: the fraction of the total lying farther than a radius
  from the neuron (default: a quarter of the image side).
* **Second-moment radius**: ``sqrt(E[(dy^2 + dx^2) / 2])`` over the
  contribution, distances from the neuron: the per-axis RMS distance, which
  equals sigma for a Gaussian centred on the neuron. It is the reported
  *spread* wherever the Gaussian fit is poor (R^2 < :data:`FIT_R2_MIN`).

All three are ratios of sums that are linear in the map (:func:`reach_sums`),
so the measures of a mean of maps follow from the mean of their sums; that is
what makes the bootstrap over units or images (:func:`bootstrap_means`,
:func:`percentile_interval`) cheap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from erf.util import finite_or_none

__all__ = [
    "CONTRIBUTION_LEVELS",
    "MASS_LEVELS",
    "FIT_R2_MIN",
    "far_field_share",
    "second_moment_radius",
    "reach_sums",
    "reach_from_sums",
    "bootstrap_means",
    "percentile_interval",
    "GaussianFit",
    "ERFStats",
    "threshold_area",
    "centered_square",
    "fit_gaussian",
    "erf_stats",
    "summarize",
]

CONTRIBUTION_LEVELS = (0.2, 0.3, 0.5, 0.99)  # RepLKNet's high-contribution area ratio levels
MASS_LEVELS = (0.5, 0.9, 0.99)  # contribution-mass extent: fractions of the total in the centred square
FIT_R2_MIN = 0.5  # below this R^2 the Gaussian's sigma is not reported; the second-moment radius is
FAR_FRACTION = 0.25  # default far-field radius: a quarter of the image side
_FIT_MAX_SIDE = 128  # larger crops are block-averaged before the fit: same sigmas, 10x faster


def _check_map(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"ERF map of shape {m.shape}; expected a non-empty 2-D array (H, W)")
    if not np.isfinite(m).all():
        raise ValueError("ERF map contains NaN or inf; expected finite values")
    return m


def threshold_area(m: np.ndarray, threshold: float = 0.5) -> int:
    """Number of pixels strictly above ``threshold * max(m)``; 0 for a map whose max is <= 0.

    Example:
        >>> threshold_area(np.array([[0.0, 0.6], [1.0, 0.5]]), 0.5)
        2
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}; expected a fraction of the max in [0, 1)")
    m = _check_map(m)
    peak = m.max()
    return int((m > threshold * peak).sum()) if peak > 0 else 0


def centered_square(m: np.ndarray, center: tuple[int, int], t: float) -> float:
    """Side of the smallest square centred on pixel ``center`` holding a fraction ``t`` of ``m.sum()``.

    Squares have odd sides 1, 3, 5, ... (the centre pixel plus ``r`` rings);
    a square may extend past the map's border, where the map counts as zero.
    NaN for a map whose total is not positive.

    Example:
        >>> m = np.zeros((5, 5)); m[2, 2] = 2; m[1, 3] = 1; m[0, 0] = 1
        >>> centered_square(m, (2, 2), 0.5), centered_square(m, (2, 2), 0.75), centered_square(m, (2, 2), 1.0)
        (1.0, 3.0, 5.0)
    """
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t={t!r}; expected a fraction of the total in (0, 1]")
    m = _check_map(m)
    total = m.sum()
    if total <= 0:
        return math.nan
    cy, cx = int(center[0]), int(center[1])
    H, W = m.shape
    ring = np.maximum(np.abs(np.arange(H) - cy)[:, None], np.abs(np.arange(W) - cx)[None, :])  # (H, W) Chebyshev
    mass = np.bincount(ring.ravel(), weights=m.ravel())  # (R,): mass on each ring
    cum = np.cumsum(mass) / total
    r = int(np.searchsorted(cum, t * (1 - 1e-12)))  # first ring whose cumulative share reaches t
    return float(2 * min(r, len(cum) - 1) + 1)


def _offsets(shape: tuple[int, int], center: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) Chebyshev ring index and (H, W) half squared distance ``(dy^2 + dx^2) / 2`` from ``center``."""
    H, W = shape
    dy = np.abs(np.arange(H) - int(center[0]))[:, None].astype(np.float64)  # (H, 1)
    dx = np.abs(np.arange(W) - int(center[1]))[None, :].astype(np.float64)  # (1, W)
    return np.maximum(dy, dx).astype(np.int64), (dy ** 2 + dx ** 2) / 2


def reach_sums(m: np.ndarray, center: tuple[int, int], far_radius: float) -> np.ndarray:
    """The sums every reach measure of ``m`` is made of; all linear in ``m``.

    Args:
        m: non-negative map (H, W).
        center: (y, x) pixel of the neuron.
        far_radius: distance in pixels beyond which contribution counts as far field.

    Returns:
        (R + 2,) array: the mass on each Chebyshev ring 0 .. R - 1 around ``center``
        (R reaches the farthest corner), the mass farther than ``far_radius``
        (Euclidean), and the second-moment sum ``sum m * (dy^2 + dx^2) / 2``.
        Maps of one shape and centre give sums of one length; their mean is the
        sums of their mean map.

    Example:
        >>> reach_sums(np.array([[0.0, 1.0], [0.0, 2.0]]), (1, 1), 0.5).tolist()
        [2.0, 1.0, 1.0, 0.5]
    """
    m = _check_map(m)
    ring, half_d2 = _offsets(m.shape, center)
    rings = np.bincount(ring.ravel(), weights=m.ravel())  # (R,): mass on each ring
    far = m[2 * half_d2 > far_radius ** 2].sum()
    return np.concatenate([rings, [far, (m * half_d2).sum()]])


def reach_from_sums(sums: np.ndarray, levels: Sequence[float] = MASS_LEVELS) -> dict[str, float]:
    """Mass-extent sides, far-field share and second-moment radius from :func:`reach_sums` (or their mean).

    Returns:
        ``{"mass_side@<t>": side for t in levels, "far_share": ..., "moment_radius": ...}``; NaN for a zero map.

    Example:
        >>> r = reach_from_sums(np.array([2.0, 1.0, 1.0, 0.5]), levels=(0.5, 0.9))
        >>> r["mass_side@0.5"], r["mass_side@0.9"], round(r["far_share"], 3), round(r["moment_radius"], 3)
        (1.0, 3.0, 0.333, 0.408)
    """
    sums = np.asarray(sums, dtype=np.float64)
    rings, far, moment = sums[:-2], sums[-2], sums[-1]
    total = rings.sum()
    out: dict[str, float] = {}
    if total <= 0:
        return {**{f"mass_side@{t:g}": math.nan for t in levels}, "far_share": math.nan, "moment_radius": math.nan}
    cum = np.cumsum(rings) / total
    for t in levels:
        r = int(np.searchsorted(cum, t * (1 - 1e-12)))  # first ring whose cumulative share reaches t
        out[f"mass_side@{t:g}"] = float(2 * min(r, len(cum) - 1) + 1)
    out["far_share"] = float(far / total)
    out["moment_radius"] = math.sqrt(max(moment / total, 0.0))
    return out


def far_field_share(m: np.ndarray, center: tuple[int, int], radius: float) -> float:
    """Fraction of ``m.sum()`` lying farther than ``radius`` pixels (Euclidean) from ``center``; NaN for a zero map.

    Example:
        >>> m = np.zeros((9, 9)); m[4, 4] = 3; m[0, 8] = 1
        >>> far_field_share(m, (4, 4), 2.0)
        0.25
    """
    return reach_from_sums(reach_sums(m, center, radius), levels=())["far_share"]


def second_moment_radius(m: np.ndarray, center: tuple[int, int]) -> float:
    """``sqrt(sum m (dy^2 + dx^2) / 2 / sum m)``: per-axis RMS distance from ``center`` (a Gaussian's sigma).

    Example:
        >>> m = np.zeros((5, 5)); m[2, 0] = m[2, 4] = 1  # two pixels 2 px left and right
        >>> second_moment_radius(m, (2, 2))
        1.4142135623730951
    """
    return reach_from_sums(reach_sums(m, center, math.inf), levels=())["moment_radius"]


def bootstrap_means(samples: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the rows of ``samples``.

    How: each resample is a row of counts (how often each sample was drawn,
    multinomial with equal weights), so all resample means are one matrix
    product ``counts @ samples / n``. Apply a measure to each replicate and take
    :func:`percentile_interval` for a percentile bootstrap confidence interval.

    Args:
        samples: (n, k) one row per unit or image (e.g. :func:`reach_sums`).
        n_boot: number of resamples.
        seed: seed of the resampling (results are reproducible).

    Returns:
        (n_boot, k) replicate means.

    Example:
        >>> bootstrap_means(np.ones((4, 3)), n_boot=2).shape
        (2, 3)
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or len(samples) == 0:
        raise ValueError(f"samples of shape {samples.shape}; expected (n, k) with n >= 1")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}; expected a positive number of resamples")
    n = len(samples)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, n)
    return counts @ samples / n  # (B, k)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (NaN replicates ignored; NaN if none is finite).

    Example:
        >>> percentile_interval(np.arange(101.0), 0.5)
        (25.0, 75.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}; expected a coverage in (0, 1), e.g. 0.95")
    v = np.asarray(replicates, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class GaussianFit:
    """An axis-aligned 2-D Gaussian ``amplitude * exp(-(y-mu_y)^2/2 sigma_y^2 - (x-mu_x)^2/2 sigma_x^2)``.

    ``mu`` is in the map's pixel coordinates; ``r2`` is the coefficient of
    determination over the fitted window (the bounding box of the map's support).
    """

    amplitude: float
    mu_y: float
    mu_x: float
    sigma_y: float
    sigma_x: float
    r2: float


def fit_gaussian(m: np.ndarray) -> GaussianFit:
    """Least-squares fit of an axis-aligned 2-D Gaussian (no offset) to ``m``.

    How: crop to the bounding box of the support (values above 1e-6 of the
    max), block-average crops wider than 128 px, start from the map's moments,
    and refine all five parameters with ``scipy.optimize.least_squares``.
    Everything is NaN for an all-zero map.

    Example:
        >>> y, x = np.mgrid[:41, :41]
        >>> fit = fit_gaussian(np.exp(-((y - 20) ** 2 / 18 + (x - 20) ** 2 / 50)))
        >>> round(fit.sigma_y, 3), round(fit.sigma_x, 3), round(fit.r2, 3)
        (3.0, 5.0, 1.0)
    """
    from scipy.optimize import least_squares

    m = _check_map(m)
    peak = m.max()
    if peak <= 0:
        return GaussianFit(*([math.nan] * 6))
    ys, xs = np.nonzero(m > 1e-6 * peak)
    y0, x0 = ys.min(), xs.min()
    crop = m[y0:ys.max() + 1, x0:xs.max() + 1] / peak  # (h, w), max 1
    step = max(1, math.ceil(max(crop.shape) / _FIT_MAX_SIDE))
    if step > 1:  # block means; a block's centre sits at (step - 1) / 2 inside it
        h, w = (crop.shape[0] // step) * step, (crop.shape[1] // step) * step
        crop = crop[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    gy = np.arange(crop.shape[0], dtype=np.float64)
    gx = np.arange(crop.shape[1], dtype=np.float64)

    # Moments of the crop give the starting point.
    total = crop.sum()
    my, mx = (crop.sum(1) @ gy) / total, (crop.sum(0) @ gx) / total
    sy0 = math.sqrt(max((crop.sum(1) @ (gy - my) ** 2) / total, 0.25))
    sx0 = math.sqrt(max((crop.sum(0) @ (gx - mx) ** 2) / total, 0.25))

    def residual(p):
        a, uy, ux, sy, sx = p
        g = a * np.outer(np.exp(-0.5 * ((gy - uy) / sy) ** 2), np.exp(-0.5 * ((gx - ux) / sx) ** 2))
        return (g - crop).ravel()

    fit = least_squares(residual, x0=[crop.max(), my, mx, sy0, sx0],
                        bounds=([0, -np.inf, -np.inf, 1e-3, 1e-3], np.inf), method="trf")
    a, uy, ux, sy, sx = fit.x
    ss_res = float((fit.fun ** 2).sum())
    ss_tot = float(((crop - crop.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    off = (step - 1) / 2
    blur = (step * step - 1) / 12  # variance a block mean adds (uniform over `step` pixels)
    sigma_y = math.sqrt(max((sy * step) ** 2 - blur, 0.0))
    sigma_x = math.sqrt(max((sx * step) ** 2 - blur, 0.0))
    return GaussianFit(float(a * peak), float(y0 + uy * step + off), float(x0 + ux * step + off),
                       sigma_y, sigma_x, float(r2))


@dataclass(frozen=True)
class ERFStats:
    """Size statistics of one ERF map (see the module docstring); lengths in input pixels.

    Attributes:
        area: pixels above ``threshold * max``.
        side: ``sqrt(area)``, the side of the equal-area square.
        frac_trf: ``area / trf_area`` (the TRF clipped to the image).
        frac_image: ``area / image_area``.
        square_sides: centred-square side for each level in ``levels``.
        square_frac_image: ``side ** 2 / image_area`` for each level.
        sigma_y, sigma_x, r2: the Gaussian fit.
        mass_levels, mass_sides: contribution-mass extent, the centred-square side holding each fraction.
        far_radius, far_share: share of the total farther than ``far_radius`` px from the neuron.
        moment_radius: the second-moment radius (per-axis RMS distance from the neuron).
        spread, spread_from: ``sqrt(sigma_y * sigma_x)`` (``"fit"``) when ``r2 >= FIT_R2_MIN``, else
            ``moment_radius`` (``"moment"``): the one spread to print; a failed fit's sigma never is.
        threshold, levels, trf_area, image_area: the inputs, kept for the record.
    """

    area: float
    side: float
    frac_trf: float
    frac_image: float
    square_sides: tuple[float, ...]
    square_frac_image: tuple[float, ...]
    sigma_y: float
    sigma_x: float
    r2: float
    threshold: float
    levels: tuple[float, ...]
    trf_area: float
    image_area: float
    mass_levels: tuple[float, ...] = MASS_LEVELS
    mass_sides: tuple[float, ...] = (math.nan,) * len(MASS_LEVELS)
    far_radius: float = math.nan
    far_share: float = math.nan
    moment_radius: float = math.nan
    spread: float = math.nan
    spread_from: str = "none"

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN becomes None)."""
        return finite_or_none(asdict(self))


def erf_stats(
    m: np.ndarray,
    *,
    center: tuple[int, int],
    trf_area: float,
    image_area: float,
    threshold: float = 0.5,
    levels: Sequence[float] = CONTRIBUTION_LEVELS,
    mass_levels: Sequence[float] = MASS_LEVELS,
    far_radius: float | None = None,
) -> ERFStats:
    """All statistics of one map (H, W) whose neuron sits at pixel ``center``.

    Args:
        m: non-negative map (H, W), e.g. a re-centred ERF map on its 2H x 2W canvas.
        center: (y, x) pixel of the neuron's TRF centre in ``m``.
        trf_area: theoretical RF area in pixels, clipped to the image.
        image_area: H * W of the probed images.
        threshold: fraction of the max for the thresholded size (default 0.5).
        levels: fractions of the total for the centred squares.
        mass_levels: fractions of the total for the contribution-mass extent.
        far_radius: far-field radius in pixels; default a quarter of the image side, ``sqrt(image_area) / 4``.

    Returns:
        :class:`ERFStats`; sizes are NaN for an all-zero map.

    Example:
        >>> s = erf_stats(np.pad(np.ones((3, 3)), 2), center=(3, 3), trf_area=9, image_area=49)
        >>> s.area, s.side, s.frac_trf, s.square_sides
        (9, 3.0, 1.0, (3.0, 3.0, 3.0, 3.0))
    """
    if trf_area <= 0 or image_area <= 0:
        raise ValueError(f"trf_area={trf_area!r}, image_area={image_area!r}; expected positive pixel counts")
    m = _check_map(m)
    if (m < 0).any():
        raise ValueError(f"ERF map has negative values (min {m.min():.3g}); expected contributions >= 0")
    empty = m.max() <= 0
    area = math.nan if empty else threshold_area(m, threshold)
    sides = tuple(centered_square(m, center, t) for t in levels)
    fit = fit_gaussian(m)
    far_radius = FAR_FRACTION * math.sqrt(image_area) if far_radius is None else float(far_radius)
    reach = reach_from_sums(reach_sums(m, center, far_radius), mass_levels)
    fit_ok = math.isfinite(fit.r2) and fit.r2 >= FIT_R2_MIN
    spread = math.sqrt(fit.sigma_y * fit.sigma_x) if fit_ok else reach["moment_radius"]
    return ERFStats(
        area=area, side=math.sqrt(area), frac_trf=area / trf_area, frac_image=area / image_area,
        square_sides=sides, square_frac_image=tuple(s * s / image_area for s in sides),
        sigma_y=fit.sigma_y, sigma_x=fit.sigma_x, r2=fit.r2,
        threshold=float(threshold), levels=tuple(float(t) for t in levels),
        trf_area=float(trf_area), image_area=float(image_area),
        mass_levels=tuple(float(t) for t in mass_levels),
        mass_sides=tuple(reach[f"mass_side@{t:g}"] for t in mass_levels),
        far_radius=far_radius, far_share=reach["far_share"], moment_radius=reach["moment_radius"],
        spread=spread, spread_from="fit" if fit_ok else ("none" if empty else "moment"),
    )


def summarize(stats: Sequence[ERFStats]) -> dict:
    """Mean, std, min and max over units of every scalar statistic, ignoring NaN (empty maps).

    Example:
        >>> summarize([s1, s2])["side"]
        {'mean': 3.5, 'std': 0.5, 'min': 3.0, 'max': 4.0, 'count': 2}
    """
    if not stats:
        raise ValueError("no statistics to summarise; expected at least one ERFStats")
    out = {}
    for key in ("area", "side", "frac_trf", "frac_image", "sigma_y", "sigma_x", "r2",
                "far_share", "moment_radius", "spread"):
        out[key] = _describe(np.array([getattr(s, key) for s in stats], dtype=np.float64))
    for i, t in enumerate(stats[0].levels):
        out[f"square_side@{t:g}"] = _describe(np.array([s.square_sides[i] for s in stats], dtype=np.float64))
    for i, t in enumerate(stats[0].mass_levels):
        out[f"mass_side@{t:g}"] = _describe(np.array([s.mass_sides[i] for s in stats], dtype=np.float64))
    return out


def _describe(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "count": int(v.size)}
