"""The sliding-window noise-occlusion probe of Zhou et al. (ICLR 2015, Sec. 3.2), as used by ParseNet.

For every image, copies with a small patch of random noise (11x11 on a stride-3
grid by default, Zhou et al.) run through the network up to the probed layer;
the discrepancy map of a unit is ``|act - clean|`` at that unit over the grid of
occluder positions. Per channel (the paper's "unit"), the unit sits where the
channel's clean activation is largest; its top-K images by that activation
give K discrepancy maps, each normalised to max 1, re-centred on the unit's
TRF centre (see :mod:`erf.result` for the canvas) and averaged.

An occluder changes a unit as soon as the patch touches its TRF, and its
change is recorded at the occluder's centre, so the support of a discrepancy
map is the TRF grown by ``patch - 1`` per axis: the occlusion ERF of a small
layer can exceed its TRF by about the patch size.

One sweep gives every unit's map (the perturbed pass yields the whole layer),
positions run in batches, the forward pass stops at the layer
(:func:`erf.graph.truncate`), positions whose patch cannot reach any probed
unit's theoretical RF are skipped (their change is exactly zero), and the
accumulators are streamed: a (U, P) block per image plus a top-K buffer.

The forward passes go through an *engine*: ``engine(positions, patches)`` returns
the layer's activation for each occluded copy. :class:`FullReinference` pastes
and re-runs the truncated model; ``erf.incremental.IncrementalOcclusion`` has
the same interface.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import warnings

import numpy as np
import torch
from torch import nn

from erf import _probe
from erf._probe import MEMORY_FORMATS, pair as _pair
from erf.distributed import check_shard, gather_to_main, merge_disjoint, merge_topk, rank_state_path, shard_indices
from erf.graph import resolve_layer
from erf.incremental import IncrementalOcclusion
from erf.result import ERFResult, build_result, recenter
from erf.util import unknown_name

__all__ = [
    "NOISE_KINDS",
    "ENGINES",
    "PRECISIONS",
    "occluder_positions",
    "occluder_centers",
    "grid_renderer",
    "make_patches",
    "FullReinference",
    "OcclusionConfig",
    "select_units",
    "probe_occlusion",
]

NOISE_KINDS = ("uniform", "gaussian", "constant")
ENGINES = ("auto", "full", "incremental")
PRECISIONS = ("fp32", "bf16")


# --------------------------------------------------------------------------- geometry
def _axis_starts(n: int, p: int, s: int) -> list[int]:
    starts = list(range(0, n - p + 1, s))
    if starts[-1] != n - p:  # the last occluder touches the border
        starts.append(n - p)
    return starts


def _check_geometry(image_size, patch, stride) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    H, W = _pair(image_size, "image_size")
    ph, pw = _pair(patch, "patch")
    sh, sw = _pair(stride, "stride")
    if ph < 1 or pw < 1:
        raise ValueError(f"patch={patch!r}; expected a size of at least 1 pixel")
    if ph > H or pw > W:
        raise ValueError(f"patch {ph}x{pw} is larger than the {H}x{W} image; expected at most the image size")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride={stride!r}; expected an integer >= 1")
    if sh > ph or sw > pw:  # captum's rule: a stride past the window leaves pixels never occluded
        raise ValueError(f"stride {sh}x{sw} is larger than the {ph}x{pw} patch; expected at most the patch size, "
                         "or some pixels are never occluded")
    return (H, W), (ph, pw), (sh, sw)


def occluder_positions(image_size, patch=11, stride=3) -> torch.Tensor:
    """Top-left corners of every occluder, row-major over a stride grid whose last row/column touch the border.

    Args:
        image_size: (H, W) or an int.
        patch: occluder size (ph, pw) or an int; default 11 (Zhou et al. 2015).
        stride: grid step (sh, sw) or an int; default 3 (Zhou et al. 2015).

    Returns:
        LongTensor (P, 2) of (top, left); P = gh * gw and position p = iy * gw + ix.

    Example:
        >>> occluder_positions((5, 6), patch=3, stride=2).tolist()
        [[0, 0], [0, 2], [0, 3], [2, 0], [2, 2], [2, 3]]
        >>> occluder_positions(224, 11, 3).shape  # the Zhou protocol at 224 px
        torch.Size([5184, 2])
    """
    (H, W), (ph, pw), (sh, sw) = _check_geometry(image_size, patch, stride)
    ys = torch.tensor(_axis_starts(H, ph, sh))
    xs = torch.tensor(_axis_starts(W, pw, sw))
    return torch.cartesian_prod(ys, xs).reshape(-1, 2)


def occluder_centers(image_size, patch=11, stride=3) -> tuple[np.ndarray, np.ndarray]:
    """Occluder centres per axis in input pixels, ``start + (p - 1) / 2``: arrays (gh,) and (gw,).

    Example:
        >>> occluder_centers((5, 6), patch=3, stride=2)
        (array([1., 3.]), array([1., 3., 4.]))
    """
    (H, W), (ph, pw), (sh, sw) = _check_geometry(image_size, patch, stride)
    return (np.array(_axis_starts(H, ph, sh), dtype=np.float64) + (ph - 1) / 2,
            np.array(_axis_starts(W, pw, sw), dtype=np.float64) + (pw - 1) / 2)


def _interp_matrix(n: int, centers: np.ndarray) -> np.ndarray:
    """(n, g) matrix taking values at the occluder centres to every pixel 0..n-1.

    Linear interpolation between neighbouring centres (the grid may be
    non-uniform: the last occluder is pulled back to the border), and the
    nearest centre's value in the border strips outside the first and last
    centre. Built column by column by interpolating the identity, since
    ``np.interp`` is linear in the values.
    """
    eye = np.eye(len(centers))
    return np.stack([np.interp(np.arange(n), centers, eye[j]) for j in range(len(centers))], axis=1)


def grid_renderer(image_size, patch=11, stride=3) -> Callable[[np.ndarray], np.ndarray]:
    """The map from occluder-grid maps (..., gh, gw) to the image's pixels (..., H, W), float64, as the probe renders.

    Example:
        >>> grid_renderer((5, 6), 3, 2)(np.ones((2, 3))).shape
        (5, 6)
    """
    H, W = _pair(image_size, "image_size")
    cy, cx = occluder_centers((H, W), patch, stride)
    Ry, Rx = _interp_matrix(H, cy), _interp_matrix(W, cx)  # (H, gh), (W, gw)
    return lambda grid_maps: Ry @ np.asarray(grid_maps, np.float64) @ Rx.T


# --------------------------------------------------------------------------- noise
def _position_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are < 2**63 here


def _unit_noise(indices, channels: int, patch: tuple[int, int], noise: str, seed: int) -> torch.Tensor:
    """Unit noise (P, channels, ph, pw) float64 on the CPU: row i drawn from its own generator seeded by (seed, i).

    Called once per probe for every position of the grid; the per-position seeds make a
    row independent of which other positions are drawn with it.
    """
    ph, pw = patch
    index_list = [int(i) for i in indices]
    if noise == "constant" or not index_list:
        return torch.zeros(len(index_list), channels, ph, pw, dtype=torch.float64)
    draw = torch.rand if noise == "uniform" else torch.randn
    return torch.stack([draw(channels, ph, pw, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(_position_seed(seed, i)))
                        for i in index_list])  # (P, channels, ph, pw)


def _noise_scale(image: torch.Tensor, noise: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel offset and scale (3,) float64 of the noise for one image (its statistics, on its device)."""
    img = image.reshape(-1, *image.shape[-2:])  # (3, H, W)
    flat = img.reshape(img.shape[0], -1).double()  # (3, H*W)
    if noise == "uniform":
        lo, hi = flat.min(1).values, flat.max(1).values  # (3,)
        return lo, hi - lo
    return flat.mean(1), flat.std(1, unbiased=False)  # (3,): gaussian; constant noise is all zero


def _scale_patches(unit: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, dtype) -> torch.Tensor:
    """``offset + scale * unit`` per channel, in float64, then cast: (P, 3, ph, pw)."""
    return (offset.view(1, -1, 1, 1) + scale.view(1, -1, 1, 1) * unit).to(dtype)


def make_patches(image: torch.Tensor, indices: torch.Tensor, patch=11, *, noise: str = "uniform",
                 seed: int = 0) -> torch.Tensor:
    """The occluder patches for the given position indices of one image.

    Position ``i`` gets its own generator seeded from ``(seed, i)``, so a patch
    does not depend on the batch it is drawn in, nor on which other positions
    run. The same unit noise is reused across images (common random numbers)
    and scaled by each image's statistics:

    * ``"uniform"``: uniform over each channel's [min, max] in the image;
    * ``"gaussian"``: each channel's mean plus its std times N(0, 1);
    * ``"constant"``: each channel's mean (a baseline occluder, no noise).

    Args:
        image: (1, 3, H, W) or (3, H, W), already normalised.
        indices: LongTensor (P,) of position indices (rows of :func:`occluder_positions`).
        patch: (ph, pw) or an int.
        noise: one of ``NOISE_KINDS``.
        seed: base seed.

    Returns:
        Tensor (P, 3, ph, pw) on the image's device and dtype.

    Example:
        >>> make_patches(torch.rand(3, 32, 32), torch.arange(4), 5).shape
        torch.Size([4, 3, 5, 5])
    """
    if noise not in NOISE_KINDS:
        raise unknown_name("noise kind", noise, NOISE_KINDS, show_all=True)
    image_cpu = image.detach().cpu()
    unit = _unit_noise(indices, image_cpu.reshape(-1, *image.shape[-2:]).shape[0], _pair(patch, "patch"), noise, seed)
    offset, scale = _noise_scale(image_cpu, noise)
    return _scale_patches(unit, offset, scale, image.dtype).to(image.device)


# --------------------------------------------------------------------------- engines
class FullReinference:
    """Plain batched re-inference: paste each patch into a copy of the image and run ``body``.

    Args:
        body: the model cut at the probed layer (:func:`erf.graph.truncate`).
        image: (1, 3, H, W) clean image.
        memory_format: layout of the occluded batch (``torch.channels_last`` is faster on CUDA).

    ``engine(positions, patches)`` with positions LongTensor (P, 2) of
    (top, left) and patches (P, 3, ph, pw) returns the activations (P, C, h, w).

    Example:
        >>> engine = FullReinference(truncate(model, "features.29"), image)
        >>> engine(occluder_positions(224)[:8], patches).shape
        torch.Size([8, 512, 14, 14])
    """

    def __init__(self, body: nn.Module, image: torch.Tensor, *,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"image of shape {tuple(image.shape)}; expected (1, 3, H, W)")
        self.body = body
        self.image = image
        self.memory_format = memory_format

    @torch.inference_mode()
    def __call__(self, positions: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        P, _, ph, pw = patches.shape
        device = self.image.device
        batch = self.image.expand(P, -1, -1, -1).clone(memory_format=self.memory_format)  # (P, 3, H, W)
        positions = _probe.to_device(positions.long(), device)  # (P, 2)
        rows = positions[:, :1] + torch.arange(ph, device=device)  # (P, ph): image rows of each patch
        cols = positions[:, 1:] + torch.arange(pw, device=device)  # (P, pw)
        p = torch.arange(P, device=device)[:, None, None]  # (P, 1, 1)
        batch[p, :, rows[:, :, None], cols[:, None, :]] = patches.permute(0, 2, 3, 1).to(batch.dtype)  # (P, ph, pw, 3)
        return self.body(batch)  # (P, C, h, w)


def _resolve_engine(engine: str, body: nn.Module) -> str:
    """What "auto" means: exact incremental inference where the graph allows it, else full re-inference."""
    if engine != "auto":
        return engine
    ok, reason = IncrementalOcclusion.supports(body)
    if not ok:
        warnings.warn(f"incremental occlusion is not available for this model ({reason}); "
                      "using full re-inference", stacklevel=4)
    return "incremental" if ok else "full"


def _make_engine(engine: str, body: nn.Module, image: torch.Tensor,
                 memory_format: torch.memory_format = torch.contiguous_format):
    """The single place an engine is built (``engine`` already resolved)."""
    if engine == "full":
        return FullReinference(body, image, memory_format=memory_format)
    return IncrementalOcclusion(body, image)


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for the occluded passes, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _batch_for_memory(free_bytes: float, per_image_bytes: float, cap: int, fraction: float = 0.6) -> int:
    """The largest batch whose measured per-image memory fits ``fraction`` of the free memory, within [1, cap].

    Example:
        >>> _batch_for_memory(10e9, 20e6, 4096), _batch_for_memory(1e6, 20e6, 4096), _batch_for_memory(1e12, 1, 64)
        (296, 1, 64)
    """
    fits = int(fraction * free_bytes // max(per_image_bytes, 1.0))
    if fits >= 8:
        fits -= fits % 8
    return max(1, min(cap, fits))


def _auto_batch_size(engine_fn, positions: torch.Tensor, patches: torch.Tensor, device: torch.device,
                     cap: int) -> int:
    """``batch_size="auto"``: on CUDA, measure one small batch's peak memory per image and fill the free memory.

    On the CPU there is no allocator to ask, and batches past a few dozen images do not run
    faster there, so auto means 64 positions (or fewer, when the grid has fewer).
    """
    cap = min(cap, 1024)
    if device.type != "cuda":
        return max(1, min(cap, 64))
    probe = min(16, len(positions))
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        engine_fn(positions[:probe], patches[:probe])
    torch.cuda.synchronize(device)
    per_image = (torch.cuda.max_memory_allocated(device) - before) / probe
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached, reusable
    return _batch_for_memory(free, per_image, cap)


# --------------------------------------------------------------------------- the configuration
@dataclass(frozen=True)
class OcclusionConfig:
    """Every setting of an occlusion probe; saved whole in the result's ``config``.

    Args:
        patch: occluder size (ph, pw) or an int; default 11 (Zhou et al. 2015, Sec. 3.2).
        stride: grid step (sh, sw) or an int, at most the patch; default 3 (Zhou et al. 2015).
        noise: one of ``NOISE_KINDS`` (see :func:`make_patches`).
        seed: seed of the occluder noise (and of ``"N-random"`` unit specs).
        top_k: images per unit; at most the number of images.
        threshold: fraction of the max for the thresholded ERF size.
        engine: one of ``ENGINES``.
        precision: one of ``PRECISIONS``.
        batch_size: occluded copies per forward pass, or ``"auto"`` for the largest that fits the device.
        skip_outside_trf: skip positions whose patch misses every probed unit's TRF (exact).
        memory_format: ``"auto"`` (channels_last on CUDA), ``"contiguous"`` or ``"channels_last"``.

    Example:
        >>> OcclusionConfig(patch=5, stride=2).patch
        (5, 5)
    """

    patch: tuple[int, int] = (11, 11)
    stride: tuple[int, int] = (3, 3)
    noise: str = "uniform"
    seed: int = 0
    top_k: int = 10
    threshold: float = 0.5
    engine: str = "auto"
    precision: str = "fp32"
    batch_size: int | str = 32
    skip_outside_trf: bool = True
    memory_format: str = "auto"

    def __post_init__(self):
        patch, stride = _pair(self.patch, "patch"), _pair(self.stride, "stride")
        if min(patch) < 1:
            raise ValueError(f"patch={self.patch!r}; expected a size of at least 1 pixel")
        if min(stride) < 1:
            raise ValueError(f"stride={self.stride!r}; expected an integer >= 1")
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "stride", stride)
        for what, value, choices in (("noise kind", self.noise, NOISE_KINDS), ("engine", self.engine, ENGINES),
                                     ("precision", self.precision, PRECISIONS),
                                     ("memory format", self.memory_format, MEMORY_FORMATS)):
            if value not in choices:
                raise unknown_name(what, value, choices, show_all=True)
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool)
                                          or self.batch_size < 1):
            raise ValueError(f"batch_size={self.batch_size!r}; expected an integer >= 1 or 'auto'")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold!r}; expected a fraction of the max in [0, 1)")

    def to_dict(self, **run) -> dict:
        """The result's ``config``: the settings as before (fp32 results keep their keys) plus ``run`` facts."""
        d = {"method": "occlusion", "patch": list(self.patch), "stride": list(self.stride), "noise": self.noise,
             "seed": int(self.seed), "top_k": run.pop("top_k"), "threshold": float(self.threshold),
             "engine": self.engine, "engine_used": run.pop("engine_used"), "batch_size": run.pop("batch_size"),
             "skip_outside_trf": run.pop("skip_outside_trf"), **run}
        if self.batch_size == "auto":
            d["batch_size_auto"] = True
        if self.memory_format != "auto":
            d["memory_format"] = self.memory_format
        if self.precision != "fp32":
            d["precision"] = self.precision
            d.setdefault("bf16_drift", None)
        else:
            d.pop("bf16_drift", None)
        return d


# --------------------------------------------------------------------------- accumulators
class _TopK:
    """Per unit, the K strongest images so far: activation, location and discrepancy map (on the grid).

    Order is by activation, then by the image's rank among the sorted names, so
    the result does not depend on the order images arrive in. Kept on ``device``:
    a push is a few gathers, with no host round trip.
    """

    def __init__(self, U: int, K: int, grid: tuple[int, int], device="cpu"):
        self.device = torch.device(device)
        self.values = torch.full((U, K), -math.inf, dtype=torch.float64, device=self.device)  # (U, K)
        self.ranks = torch.full((U, K), torch.iinfo(torch.int64).max, dtype=torch.int64, device=self.device)
        self.locations = torch.zeros((U, K, 2), dtype=torch.int64, device=self.device)  # (U, K, 2)
        self.maps = torch.zeros((U, K) + tuple(grid), dtype=torch.float32, device=self.device)  # (U, K, gh, gw)

    def push(self, values, rank: int, locations, maps) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).to(self.device)  # (U,)
        U, K = self.values.shape
        # Number of kept entries that beat the new one = its insertion slot.
        beats = (self.values > values[:, None]) | ((self.values == values[:, None]) & (self.ranks < rank))
        slot = beats.sum(dim=1, keepdim=True)  # (U, 1)
        j = torch.arange(K, device=self.device)[None]  # (1, K)
        src = torch.where(j < slot, j, torch.where(j == slot, K, j - 1))  # (U, K): index into [kept..., new]
        new = {"values": values, "ranks": torch.full((U,), rank, dtype=torch.int64, device=self.device),
               "locations": torch.as_tensor(locations).to(self.device, torch.int64),
               "maps": torch.as_tensor(maps).to(self.device, torch.float32)}
        for key, fresh in new.items():
            kept = getattr(self, key)  # (U, K, ...)
            both = torch.cat([kept, fresh[:, None]], dim=1)  # (U, K + 1, ...)
            idx = src.reshape(src.shape + (1,) * (kept.dim() - 2)).expand((U, K) + kept.shape[2:])
            setattr(self, key, both.gather(1, idx))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).cpu().numpy() for k in ("values", "ranks", "locations", "maps")}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for k in ("values", "ranks", "locations", "maps"):
            setattr(self, k, torch.from_numpy(np.asarray(arrays[k])).to(self.device))


@dataclass
class _Canvas:
    """How grid maps become image maps re-centred on a unit's TRF centre (the finalisation's geometry)."""

    rf: object
    image_size: tuple[int, int]
    patch: tuple[int, int]
    stride: tuple[int, int]
    to_image: Callable[[np.ndarray], np.ndarray] = field(init=False)

    def __post_init__(self):
        self.to_image = grid_renderer(self.image_size, self.patch, self.stride)

    def render(self, grid_maps: np.ndarray) -> np.ndarray:  # (..., gh, gw) -> (..., H, W)
        return self.to_image(grid_maps).astype(np.float32)

    def recentred(self, grid_map: np.ndarray, y: int, x: int) -> np.ndarray:
        """One grid map normalised to max 1, on the image, re-centred on unit (y, x)'s TRF centre: (2H, 2W)."""
        return recenter(self.render(grid_map / grid_map.max()), self.rf.center(int(y), int(x)))

    def clipped_area(self, y: int, x: int) -> float:
        top, left, bottom, right = self.rf.box(int(y), int(x), clip=True)
        return float(max(bottom - top, 0) * max(right - left, 0))


class _UnitsAccumulator:
    """Units mode: per probed channel, the top-K images by its clean activation and their discrepancy maps."""

    mode = "units"

    def __init__(self, U: int, K: int, grid: tuple[int, int], names: Sequence[str], device):
        self.topk = _TopK(U, K, grid, device)
        self.rank_of = {n: r for r, n in enumerate(sorted(names))}

    def push(self, name: str, values: torch.Tensor, locations: torch.Tensor, maps: torch.Tensor) -> None:
        """One image: each unit's clean value (U,), location (U, 2) and discrepancy map (U, gh, gw)."""
        self.topk.push(values, self.rank_of[name], locations, maps)

    def state_dict(self, done: list[str]) -> dict[str, np.ndarray]:
        return self.topk.arrays()

    def load_state_dict(self, arrays: dict[str, np.ndarray], done: list[str]) -> None:
        self.topk.load(arrays)

    def merge(self, parts: list[tuple[list[str], dict]]) -> None:
        self.topk.load(merge_topk([arrays for _, arrays in parts], self.topk.values.shape[1]))

    def finalize(self, canvas: _Canvas, names: list[str], views=None, **common) -> ERFResult:
        """The result; ``views(topk_images)`` adds what the unit browser shows of each top-K image."""
        t = self.topk.arrays()
        U = len(t["values"])
        index_of_rank = {self.rank_of[n]: j for j, n in enumerate(names)}
        topk_images = np.array([[index_of_rank.get(int(r), -1) for r in row] for row in t["ranks"]])  # (U, K)
        valid = np.isfinite(t["values"])  # (U, K)
        maps = np.zeros((U,) + tuple(2 * s for s in canvas.image_size), dtype=np.float32)  # (U, 2H, 2W)
        trf_areas = np.zeros(U)
        for u in range(U):
            ks = np.nonzero(valid[u])[0]
            for k in ks:
                if t["maps"][u, k].max() > 0:
                    maps[u] += canvas.recentred(t["maps"][u, k], *t["locations"][u, k])
            maps[u] /= max(len(ks), 1)
            trf_areas[u] = np.mean([canvas.clipped_area(*t["locations"][u, k]) for k in ks])
        extra = {} if views is None else {**views(topk_images), "topk_maps": t["maps"]}
        return build_result(mode="units", maps=maps, trf_areas=trf_areas, topk_images=topk_images,
                            topk_locations=t["locations"], topk_values=np.where(valid, t["values"], np.nan),
                            images=names, **extra, **common)


class _NeuronAccumulator:
    """Neuron mode: one neuron's clean value and discrepancy map on every image."""

    mode = "neuron"

    def __init__(self, neuron: tuple[int, int, int]):
        self.neuron = neuron
        self.per_image: dict[str, tuple[float, np.ndarray]] = {}

    def push(self, name: str, values: torch.Tensor, locations: torch.Tensor, maps: torch.Tensor) -> None:
        self.per_image[name] = (float(values[0]), maps[0].cpu().numpy())

    def state_dict(self, done: list[str]) -> dict[str, np.ndarray]:
        return {"values": np.array([self.per_image[n][0] for n in done]),
                "maps": np.stack([self.per_image[n][1] for n in done])}

    def load_state_dict(self, arrays: dict[str, np.ndarray], done: list[str]) -> None:
        self.per_image = {n: (float(v), m) for n, v, m in zip(done, arrays["values"], arrays["maps"])}

    def merge(self, parts: list[tuple[list[str], dict]]) -> None:
        merged = []
        for done, arrays in parts:
            part = _NeuronAccumulator(self.neuron)
            part.load_state_dict(arrays, done)
            merged.append(part.per_image)
        self.per_image = merge_disjoint(merged)

    def finalize(self, canvas: _Canvas, names: list[str], views=None, **common) -> ERFResult:
        c, y, x = self.neuron
        grid = np.stack([self.per_image[n][1] for n in names])  # (N, gh, gw), image order
        image_maps = canvas.render(grid)  # (N, H, W): raw |delta| on the image grid
        center = canvas.rf.center(y, x)
        maps = np.zeros((1,) + tuple(2 * s for s in canvas.image_size), dtype=np.float32)  # (1, 2H, 2W)
        for g, m in zip(grid, image_maps):  # each rendered map over its grid peak: the stored maps' arithmetic
            if g.max() > 0:
                maps[0] += recenter(m / g.max(), center)
        maps[0] /= len(names)
        N = len(names)
        return build_result(mode="neuron", maps=maps, trf_areas=np.array([canvas.clipped_area(y, x)]),
                            topk_images=np.arange(N)[None], topk_locations=np.tile(np.array([y, x])[None, None],
                                                                                    (1, N, 1)),
                            topk_values=np.array([[self.per_image[n][0] for n in names]]),
                            image_maps=image_maps, neuron=self.neuron, images=names, **common)


# --------------------------------------------------------------------------- the sweep
def _needed(rf, starts_y, starts_x, patch, locations) -> np.ndarray:
    """Bool (gh, gw): occluder positions whose patch overlaps the TRF of at least one probed location."""
    ph, pw = patch
    sy, sx = np.asarray(starts_y), np.asarray(starts_x)
    mask = np.zeros((len(sy), len(sx)), dtype=bool)
    for y, x in {(int(y), int(x)) for y, x in locations}:
        top, left, bottom, right = rf.box(y, x)
        mask |= np.outer((sy < bottom) & (sy + ph > top), (sx < right) & (sx + pw > left))
    return mask


class _Sweep:
    """Everything fixed for one probe, and the discrepancies of one image at a time.

    The unit noise of every grid position is drawn once (the same per-position
    seeds as :func:`make_patches`) and kept on the device; per image it is scaled
    by the image's statistics, the positions are batched, each batch's activations
    at the probed units are written into a (U, P) block on the device, and the
    host is touched once, for the units' locations (which pick the positions to run).
    """

    def __init__(self, body, cfg: OcclusionConfig, layer: str, rf, image_size, device, memory_format, engine):
        self.body, self.cfg, self.layer, self.rf, self.device = body, cfg, layer, rf, device
        self.memory_format, self.engine = memory_format, engine
        (H, W), self.patch, stride = _check_geometry(image_size, cfg.patch, cfg.stride)
        self.starts_y, self.starts_x = _axis_starts(H, self.patch[0], stride[0]), _axis_starts(W, self.patch[1], stride[1])
        self.positions = occluder_positions((H, W), cfg.patch, cfg.stride)  # (P, 2) on the host
        self.unit_noise = _unit_noise(range(len(self.positions)), 3, self.patch, cfg.noise, cfg.seed).to(device)
        self.skip = cfg.skip_outside_trf and not getattr(rf, "is_global", False)
        self.batch_size = cfg.batch_size

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.starts_y), len(self.starts_x)

    def clean(self, image: torch.Tensor, name: str, units: torch.Tensor, neuron) -> tuple:
        """Each probed unit's clean fp32 activation (U,) and location (U, 2) on the device, and the positions to run."""
        with torch.inference_mode():
            clean = self.body(image)[0]  # (C, h, w)
        _probe.check_finite(clean, self.layer, f"image {name!r}")
        if neuron is None:
            flat = clean[units].reshape(len(units), -1)  # (U, h*w)
            where = flat.argmax(dim=1)  # (U,): each unit's strongest location (first one on ties)
            values = flat.gather(1, where[:, None])[:, 0]  # (U,)
            locations = torch.stack([where // clean.shape[-1], where % clean.shape[-1]], 1)  # (U, 2)
        else:
            locations = torch.tensor([neuron[1:]], device=self.device)  # (1, 2)
            values = clean[units, locations[:, 0], locations[:, 1]]  # (1,)
        run = np.ones(len(self.positions), dtype=bool)
        if self.skip:  # the one host round trip of the image
            run = _needed(self.rf, self.starts_y, self.starts_x, self.patch, locations.cpu().numpy()).ravel()
        return values, locations, torch.from_numpy(np.nonzero(run)[0])

    def discrepancy(self, image_cpu, name, units, values, locations, run_idx, precision, bar=None) -> torch.Tensor:
        """(U, P) float32 on the device: |act - clean| of each unit at its location; 0 for positions not run."""
        image = image_cpu.to(self.device).contiguous(memory_format=self.memory_format)  # (1, 3, H, W)
        offset, scale = _noise_scale(image_cpu, self.cfg.noise)  # (3,) each, from the host copy: device-exact
        patches = _scale_patches(self.unit_noise, offset.to(self.device), scale.to(self.device), image.dtype)
        loc_y, loc_x = locations[:, 0], locations[:, 1]
        U, P = len(units), len(self.positions)
        out = torch.zeros(U, P, dtype=torch.float32, device=self.device)  # (U, P): one column per position
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        with _autocast(self.device, precision):
            base = values
            if precision != "fp32":  # the clean activation at the same precision
                with torch.inference_mode():
                    base = self.body(image)[0][units, loc_y, loc_x]  # (U,)
            engine_fn = _make_engine(self.engine, self.body, image, self.memory_format)
            run_dev = _probe.to_device(run_idx, self.device)  # (R,)
            if self.batch_size == "auto":
                self.batch_size = _auto_batch_size(engine_fn, self.positions[run_idx], patches[run_dev], self.device,
                                                   len(self.positions))
            for b0 in range(0, len(run_idx), self.batch_size):
                idx, idx_dev = run_idx[b0:b0 + self.batch_size], run_dev[b0:b0 + self.batch_size]  # (B,)
                with torch.inference_mode():
                    act = engine_fn(self.positions[idx], patches[idx_dev])  # (B, C, h, w)
                    at_units = act[:, units, loc_y, loc_x].float()  # (B, U): each unit at its own location
                finite &= torch.isfinite(at_units).all()
                out[:, idx_dev] = (at_units - base.float()).abs().T  # (U, B)
                if bar is not None:
                    bar.update(len(idx))
        if not bool(finite):
            raise ValueError(f"NaN or inf activations on an occluded copy of image {name!r} at layer "
                             f"{self.layer!r}; expected finite values")
        return out


def _check_units(units, C: int, layer: str, seed: int) -> list[int]:
    unit_list = select_units(units, C, seed=seed)
    bad = [u for u in unit_list if not 0 <= u < C]
    if bad or not unit_list:
        raise ValueError(f"units {bad or unit_list!r} are not channels of layer {layer!r} with {C} channels; "
                         f"expected indices in 0..{C - 1}")
    if len(set(unit_list)) != len(unit_list):
        raise ValueError(f"units {unit_list!r} repeat a channel; expected unique indices")
    return unit_list


def _bf16_drift(sweep: _Sweep, image_cpu, name, units, neuron, precision) -> float:
    """``max |d_bf16 - d_fp32| / max |d_fp32|`` on the first batch of one image."""
    image = image_cpu.to(sweep.device).contiguous(memory_format=sweep.memory_format)
    values, locations, run = sweep.clean(image, name, units, neuron)
    first = run[:sweep.batch_size if sweep.batch_size != "auto" else 64]
    ref = sweep.discrepancy(image_cpu, name, units, values, locations, first, "fp32")[:, first]  # (U, B)
    low = sweep.discrepancy(image_cpu, name, units, values, locations, first, precision)[:, first]  # (U, B)
    err, scale = float((low - ref).abs().max()), float(ref.abs().max())
    return err / scale if scale > 0 else err

def _display_norm(images) -> tuple[np.ndarray, np.ndarray] | None:
    """The (mean, std) per channel an ImageSet was normalised with, or None for a bare tensor."""
    from erf.images import ImageSet

    if isinstance(images, ImageSet):
        return np.asarray(images.mean, np.float32), np.asarray(images.std, np.float32)
    return None


def _topk_views(body, images, topk_images, unit_list, device, norm) -> dict[str, np.ndarray]:
    """The top-K images as a person sees them and each unit's activation map on them.

    One clean pass per image that some unit keeps. Pixels come back through
    the normalisation when it is known (``norm``), else by a per-channel
    min-max stretch over the probed images (colours then only approximate).
    Rows of ``display_images`` no unit uses stay zero, which costs nothing
    in the compressed file.
    """
    N, _, H, W = images.shape
    U, K = topk_images.shape
    used = sorted({int(j) for j in topk_images.ravel() if j >= 0})
    display = np.zeros((N, H, W, 3), dtype=np.uint8)  # (N, H, W, 3)
    if norm is not None:
        mean, std = (torch.from_numpy(v)[:, None, None] for v in norm)
        pixels = lambda x: x * std + mean  # noqa: E731 - (3, H, W) in [0, 1]
    else:
        lo = images.amin(dim=(0, 2, 3)).cpu()[:, None, None]  # (3, 1, 1)
        hi = images.amax(dim=(0, 2, 3)).cpu()[:, None, None]
        pixels = lambda x: (x - lo) / (hi - lo).clamp_min(1e-12)  # noqa: E731
    activations = None
    channels = torch.tensor(unit_list, device=device)
    for j in used:
        seen = pixels(images[j].cpu().float()).clamp(0, 1) * 255 + 0.5  # (3, H, W)
        display[j] = seen.to(torch.uint8).permute(1, 2, 0).numpy()
        with torch.inference_mode():
            act = body(images[j:j + 1].to(device))[0, channels].float().cpu().numpy()  # (U, h, w)
        if activations is None:
            activations = np.zeros((U, K) + act.shape[1:], dtype=np.float32)  # (U, K, h, w)
        u, k = np.nonzero(topk_images == j)
        activations[u, k] = act[u]
    return {"display_images": display, "topk_activations": activations}




def probe_occlusion(
    model: nn.Module,
    layer: str,
    images,
    *,
    names: Sequence[str] | None = None,
    patch=11,
    stride=3,
    noise: str = "uniform",
    seed: int = 0,
    top_k: int = 10,
    units: Sequence[int] | str | None = None,
    neuron: tuple | None = None,
    threshold: float = 0.5,
    batch_size: int | str = 32,
    engine: str = "auto",
    device: str | torch.device | None = None,
    skip_outside_trf: bool = True,
    rf=None,
    model_name: str | None = None,
    state_path: str | os.PathLike | None = None,
    on_image: Callable[[int, str], None] | None = None,
    progress: bool = False,
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
    memory_format: str = "auto",
    state_every: float = 60.0,
    config: OcclusionConfig | None = None,
) -> ERFResult | None:
    """Empirical receptive fields of a layer's units by sliding-noise occlusion (Zhou et al. 2015).

    Args:
        model: the network; the probe runs its own eval-mode copy of the cut, so ``model`` is left as it was.
        layer: module path or fx node name (``erf.graph.layer_names``), e.g. ``"features.29"`` (VGG16 conv5_3).
        images: tensor (N, 3, H, W), normalised as the model expects, or an ``erf.images.ImageSet``.
        names: N unique image names; default the ImageSet's, else ``image_00000``, ...
        patch: occluder size, int or (ph, pw); default 11 (Zhou et al. 2015).
        stride: grid step, int or (sh, sw), at most the patch; default 3 (Zhou et al. 2015).
        noise: ``"uniform"`` (default), ``"gaussian"`` or ``"constant"`` (see :func:`make_patches`).
        seed: seed of the occluder noise.
        top_k: images per unit (default 10); at most N.
        units: channels to probe: indices, or a spec for :func:`select_units` (``"all"``, ``"0,5,9"``,
            ``"8-random"`` drawn with ``seed``); default all.
        neuron: probe one neuron on every image instead: ``(c, y, x)`` or ``(c, "center")`` for the unit
            of channel c whose TRF centre is nearest the image centre. ``units`` and ``top_k`` are then unused.
        threshold: fraction of the max for the thresholded ERF size (default 0.5).
        batch_size: occluded copies per forward pass (default 32), or ``"auto"``: on CUDA the largest batch
            that fits the free device memory (measured on one small batch), on the CPU 64.
        engine: ``"full"``, ``"incremental"`` or ``"auto"`` (incremental where the graph allows, else full with
            a warning; results agree within float round-off).
        device: where to run; default the model's device.
        skip_outside_trf: skip occluder positions whose patch misses the TRF of every probed unit location
            (exact: such a patch cannot change those units). Default True; off for global layers.
        rf: the layer's ``erf.rf.LayerRF``; default computed with ``erf.rf.receptive_field``.
        model_name: a label for the model's identity in the result.
        state_path: file for resumable accumulators, saved atomically every ``state_every`` seconds, at the
            end, and when the probe is interrupted by an exception; a rerun with the same settings skips the
            images already saved. A state from other settings is refused. With ``world_size > 1`` each
            rank keeps its own file (:func:`erf.distributed.rank_state_path`), so a run resumes with the same
            number of processes.
        on_image: called as ``on_image(done_count, name)`` after each image's state is saved (with a
            callback the state is saved after every image; ``done_count`` counts this rank's images).
        progress: show a tqdm bar over occluder positions.
        precision: ``"fp32"`` (default) or ``"bf16"``: the occluded passes (and the clean activation they
            are compared with) run under bf16 autocast; the top-K selection stays fp32. The drift from
            fp32 is measured on the first batch of the first image and stored as ``config["bf16_drift"]``:
            ``max |d_bf16 - d_fp32| / max |d_fp32|`` over its discrepancies.
        rank, world_size: this process's place under ``torch.distributed`` (torchrun): it probes
            ``images[rank::world_size]`` and rank 0 merges every rank's accumulators
            (:mod:`erf.distributed`); the result equals a single-process run's.
        memory_format: layout of the probe's model copy and batches: ``"auto"`` (channels_last on CUDA,
            contiguous elsewhere), ``"contiguous"`` or ``"channels_last"``.
        state_every: seconds between resume-state saves (default 60; 0 saves after every image).
        config: an :class:`OcclusionConfig`; when given it replaces ``patch``, ``stride``, ``noise``, ``seed``,
            ``top_k``, ``threshold``, ``batch_size``, ``engine``, ``skip_outside_trf``, ``precision`` and
            ``memory_format``.

    Returns:
        :class:`erf.result.ERFResult` with ``maps`` (U, 2H, 2W) (``mode="units"``), or for a neuron
        ``maps`` (1, 2H, 2W) and ``image_maps`` (N, H, W) (``mode="neuron"``). With ``world_size > 1``,
        only rank 0 gets the result; the other ranks get None.

    Example:
        >>> res = probe_occlusion(torchvision.models.vgg16(), "features.29", imgs, top_k=2, units=[0, 5])
        >>> res.maps.shape, res.summary["table"]["trf_side"]
        ((2, 448, 448), 196.0)
    """
    cfg = config or OcclusionConfig(patch, stride, noise, seed, top_k, threshold, engine, precision, batch_size,
                                    skip_outside_trf, memory_format)
    display_norm = _display_norm(images)  # before the ImageSet becomes a bare tensor
    images, names = _probe.as_images(images, names)
    with _probe.preserved_modes(model), _probe.ieee_fp32(_probe.resolve_device(model, device)):
        setup = _setup(model, layer, images, names, cfg, units, neuron, device, rf, rank, world_size, state_path,
                       state_every)
        sweep, acc, unit_idx, clock = setup["sweep"], setup["acc"], setup["unit_idx"], setup["clock"]
        done = setup["done"]
        bf16_drift = None
        if cfg.precision != "fp32" and rank == 0:
            bf16_drift = _bf16_drift(sweep, images[:1], names[0], unit_idx, setup["neuron"], cfg.precision)
        todo = [i for i in shard_indices(len(names), rank, world_size) if names[i] not in set(done)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo) * len(sweep.positions), unit="pos", desc=f"occlusion {setup['layer']}")
        try:
            for i in todo:
                image = images[i:i + 1].to(sweep.device).contiguous(memory_format=sweep.memory_format)  # (1, 3, H, W)
                values, locations, run = sweep.clean(image, names[i], unit_idx, setup["neuron"])
                d = sweep.discrepancy(images[i:i + 1], names[i], unit_idx, values, locations, run, cfg.precision, bar)
                if bar is not None:
                    bar.update(len(sweep.positions) - len(run))
                acc.push(names[i], values.double(), locations, d.reshape((len(unit_idx),) + sweep.grid))
                done.append(names[i])
                clock.tick(done, lambda: acc.state_dict(done), force=on_image is not None)  # the callback sees it saved
                if on_image is not None:
                    on_image(len(done), names[i])
        finally:  # at the end, and on any interruption: what is done is kept
            clock.tick(done, lambda: acc.state_dict(done), force=True)
            if bar is not None:
                bar.close()
        if world_size > 1:  # rank 0 merges every rank's accumulators and alone builds the result
            parts = gather_to_main((done, acc.state_dict(done)), rank, world_size)
            if rank != 0:
                return None
            acc.merge(parts)
    gh, gw = sweep.grid
    run_config = cfg.to_dict(top_k=None if setup["neuron"] else int(cfg.top_k), engine_used=sweep.engine,
                             batch_size=sweep.batch_size if sweep.batch_size == "auto" else int(sweep.batch_size),
                             skip_outside_trf=bool(sweep.skip), positions=int(gh * gw), grid=[gh, gw],
                             device=str(sweep.device), bf16_drift=bf16_drift)
    views = None
    if setup["neuron"] is None:  # what the unit browser shows of each top-K image (lab.browse)
        run_config["display_images"] = "exact" if display_norm is not None else "min-max"
        views = lambda topk_images: _topk_views(sweep.body, images, topk_images, setup["units"],  # noqa: E731
                                                sweep.device, display_norm)
    return acc.finalize(_Canvas(sweep.rf, tuple(images.shape[-2:]), sweep.patch, cfg.stride), names, views=views,
                        method="occlusion", layer=setup["layer"], image_size=tuple(images.shape[-2:]),
                        config=run_config, model={"name": model_name or type(model).__name__,
                                                  "fingerprint": setup["fingerprint"], "parameters": setup["n_params"]},
                        trf=sweep.rf, units=np.array(setup["units"]), threshold=cfg.threshold)


def _setup(model, layer, images, names, cfg: OcclusionConfig, units, neuron, device, rf, rank, world_size,
           state_path, state_every) -> dict:
    """Checks, the probe's model copy, the units, the sweep, the accumulator and its resume state."""
    N, _, H, W = images.shape
    _check_geometry((H, W), cfg.patch, cfg.stride)
    check_shard(rank, world_size)
    if neuron is None and (not isinstance(cfg.top_k, int) or cfg.top_k < 1 or cfg.top_k > N):
        raise ValueError(f"top_k={cfg.top_k!r} but there are {N} images; expected 1 <= top_k <= {N}")
    layer = resolve_layer(model, layer)
    device = _probe.resolve_device(model, device)
    memory_format = _probe.resolve_memory_format(cfg.memory_format, device)
    if rf is None:
        from erf.rf import receptive_field

        rf = receptive_field(model, layer, (H, W))
    body = _probe.private_body(model, layer, device, memory_format)
    engine = _resolve_engine(cfg.engine, body)
    with torch.inference_mode():
        probe_act = body(images[:1].to(device).contiguous(memory_format=memory_format))  # (1, C, h, w)
    _probe.check_finite(probe_act, layer, f"image {names[0]!r}")
    _, C, h, w = probe_act.shape
    if neuron is not None:
        neuron = _probe.check_neuron(neuron, (C, h, w), layer, rf, (H, W))
        unit_list = [neuron[0]]
    else:
        unit_list = _check_units(units, C, layer, cfg.seed)
    sweep = _Sweep(body, cfg, layer, rf, (H, W), device, memory_format, engine)
    acc = (_UnitsAccumulator(len(unit_list), cfg.top_k, sweep.grid, names, device) if neuron is None
           else _NeuronAccumulator(neuron))
    fingerprint, n_params = _probe.fingerprint_model(body)
    identity = {
        "method": "occlusion", "layer": layer, "image_size": [H, W], "patch": list(cfg.patch),
        "stride": list(cfg.stride), "noise": cfg.noise, "seed": int(cfg.seed),
        "top_k": None if neuron else int(cfg.top_k), "units": unit_list,
        "neuron": None if neuron is None else list(neuron), "model": fingerprint,
        "images": _probe.fingerprint_images(images, names),
    }
    if cfg.precision != "fp32":  # keeps fp32 states written before precision existed valid
        identity["precision"] = cfg.precision
    if world_size > 1:
        identity["shard"] = [rank, world_size]
    state_path = None if state_path is None else rank_state_path(state_path, rank, world_size)
    done: list[str] = []
    loaded = None if state_path is None else _probe.load_state(state_path, identity)
    if loaded is not None:
        done, arrays = loaded
        acc.load_state_dict(arrays, done)
    clock = _probe.StateClock(state_path, identity, state_every)
    clock.saved = len(done) if loaded is not None else -1
    return {"sweep": sweep, "acc": acc, "unit_idx": torch.tensor(unit_list, device=device), "clock": clock,
            "done": done, "layer": layer, "neuron": neuron, "units": unit_list, "fingerprint": fingerprint,
            "n_params": n_params}


def select_units(units, channels: int, *, seed: int = 0) -> list[int]:
    """Channel indices from a spec: None or ``"all"``; ``"0,5,9"``; ``"N-random"`` (N distinct, seeded); or ints.

    Example:
        >>> select_units("0,5,9", 512), select_units(None, 3), len(select_units("8-random", 512))
        ([0, 5, 9], [0, 1, 2], 8)
    """
    if units is None or (isinstance(units, str) and units.strip().lower() == "all"):
        return list(range(channels))
    if isinstance(units, str):
        spec = units.strip().lower()
        if spec.endswith("-random"):
            count = spec[: -len("-random")]
            if not count.isdigit() or not 1 <= int(count) <= channels:
                raise ValueError(f"units={units!r}; expected N-random with 1 <= N <= {channels} (the layer's channels)")
            order = torch.randperm(channels, generator=torch.Generator().manual_seed(seed))
            return sorted(order[: int(count)].tolist())
        try:
            return [int(u) for u in spec.split(",") if u.strip()]
        except ValueError:
            raise ValueError(f"units={units!r}; expected 'all', a comma list like '0,5,9', or 'N-random'") from None
    return [int(u) for u in units]
