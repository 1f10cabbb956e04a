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
import copy
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import warnings

import numpy as np
import torch
from torch import nn

from erf.distributed import check_shard, gather_to_main, merge_disjoint, merge_topk, rank_state_path, shard_indices
from erf.graph import resolve_layer, truncate
from erf.incremental import IncrementalOcclusion
from erf.result import ERFResult, build_result, recenter, rf_to_dict
from erf.util import atomic_write, unknown_name

__all__ = [
    "NOISE_KINDS",
    "ENGINES",
    "PRECISIONS",
    "occluder_positions",
    "occluder_centers",
    "make_patches",
    "FullReinference",
    "select_units",
    "probe_occlusion",
]

NOISE_KINDS = ("uniform", "gaussian", "constant")
ENGINES = ("auto", "full", "incremental")
PRECISIONS = ("fp32", "bf16")
_STATE_VERSION = 1


# --------------------------------------------------------------------------- geometry
def _pair(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{what}={value!r}; expected an integer or a pair of integers")
    return int(pair[0]), int(pair[1])


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


# --------------------------------------------------------------------------- noise
def _position_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are < 2**63 here


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
    ph, pw = _pair(patch, "patch")
    img = image.reshape(-1, *image.shape[-2:])  # (3, H, W)
    flat = img.reshape(img.shape[0], -1).double()  # (3, H*W)
    index_list = [int(i) for i in indices]
    if noise == "constant":
        unit = torch.zeros(len(index_list), img.shape[0], ph, pw, dtype=torch.float64)
    else:
        draw = torch.rand if noise == "uniform" else torch.randn
        unit = torch.stack([draw(img.shape[0], ph, pw, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(_position_seed(seed, i)))
                            for i in index_list]) if index_list else torch.zeros(0, img.shape[0], ph, pw,
                                                                                 dtype=torch.float64)
    if noise == "uniform":
        lo, hi = flat.min(1).values, flat.max(1).values  # (3,)
        out = lo.view(1, -1, 1, 1) + (hi - lo).view(1, -1, 1, 1) * unit  # (P, 3, ph, pw)
    else:
        mean, std = flat.mean(1), flat.std(1, unbiased=False)  # (3,)
        out = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * unit  # (P, 3, ph, pw)
    return out.to(device=image.device, dtype=image.dtype)


# --------------------------------------------------------------------------- engines
class FullReinference:
    """Plain batched re-inference: paste each patch into a copy of the image and run ``body``.

    Args:
        body: the model cut at the probed layer (:func:`erf.graph.truncate`).
        image: (1, 3, H, W) clean image.

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
        self.memory_format = memory_format  # torch.channels_last on CUDA (erf.occlusion.probe_occlusion)

    @torch.inference_mode()
    def __call__(self, positions: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        P, _, ph, pw = patches.shape
        batch = self.image.expand(P, -1, -1, -1).clone(memory_format=self.memory_format)  # (P, 3, H, W)
        for p, (top, left) in enumerate(positions.tolist()):
            batch[p, :, top:top + ph, left:left + pw] = patches[p]
        return self.body(batch)  # (P, C, h, w)


def _resolve_engine(engine: str, body: nn.Module) -> str:
    """What "auto" means: exact incremental inference where the graph allows it, else full re-inference."""
    if engine != "auto":
        return engine
    ok, reason = IncrementalOcclusion.supports(body)
    if not ok:
        warnings.warn(f"incremental occlusion is not available for this model ({reason}); "
                      "using full re-inference", stacklevel=3)
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


# --------------------------------------------------------------------------- accumulators
class _TopK:
    """Per unit, the K strongest images so far: activation, location and discrepancy map (on the grid).

    Order is by activation, then by the image's rank among the sorted names, so
    the result does not depend on the order images arrive in.
    """

    def __init__(self, U: int, K: int, grid: tuple[int, int]):
        self.values = np.full((U, K), -np.inf)  # (U, K)
        self.ranks = np.full((U, K), np.iinfo(np.int64).max, dtype=np.int64)  # (U, K): -1-free sentinel
        self.locations = np.zeros((U, K, 2), dtype=np.int64)  # (U, K, 2)
        self.maps = np.zeros((U, K) + tuple(grid), dtype=np.float32)  # (U, K, gh, gw)

    def push(self, values: np.ndarray, rank: int, locations: np.ndarray, maps: np.ndarray) -> None:
        # Number of kept entries that beat the new one = its insertion slot.
        beats = (self.values > values[:, None]) | ((self.values == values[:, None]) & (self.ranks < rank))
        slot = beats.sum(axis=1)  # (U,)
        K = self.values.shape[1]
        for u in np.nonzero(slot < K)[0]:
            s = slot[u]
            for arr, new in ((self.values, values[u]), (self.ranks, rank),
                             (self.locations, locations[u]), (self.maps, maps[u])):
                arr[u, s + 1:] = arr[u, s:K - 1].copy()
                arr[u, s] = new

    def arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "ranks": self.ranks, "locations": self.locations, "maps": self.maps}


def _fingerprint_model(body: nn.Module) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for name, t in sorted(body.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        n += t.numel() if t.is_floating_point() else 0
    return h.hexdigest(), n


def _fingerprint_images(images: torch.Tensor, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name, img in sorted(zip(names, images), key=lambda t: t[0]):
        h.update(name.encode())
        h.update(img.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_state(path: Path, identity: dict) -> tuple[dict, dict] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"resume state {str(path)!r} is unreadable ({type(exc).__name__}); delete it to start over")
    if meta.get("version") != _STATE_VERSION:
        raise ValueError(f"resume state {str(path)!r} has version {meta.get('version')!r}; expected "
                         f"{_STATE_VERSION}; delete it to start over")
    theirs = meta["identity"]
    diff = [f"{k}: {theirs.get(k)!r} there, {v!r} here" for k, v in identity.items() if theirs.get(k) != v]
    if diff:
        raise ValueError(f"resume state {str(path)!r} was written by a different probe ({'; '.join(diff)}); "
                         "use the same settings, or delete it to start over")
    return meta, arrays


def _save_state(path: Path, identity: dict, done: list[str], arrays: dict[str, np.ndarray]) -> None:
    meta = json.dumps({"version": _STATE_VERSION, "identity": identity, "done": done})
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(meta), **arrays)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


# --------------------------------------------------------------------------- the probe
def _check_finite(t: torch.Tensor, layer: str, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"layer {layer!r} gives NaN or inf activations on {what}; expected finite values "
                         "(check the weights and the input normalisation)")


def _sweep(engine_fn, image, positions, run_idx, unit_idx, loc_y, loc_x, base, *, patch, noise, seed,
           batch_size, what, bar=None) -> torch.Tensor:
    """|act - clean| of every probed unit at its location, for the positions in ``run_idx``, batch by batch.

    Returns (U, P) float32 on the CPU; positions not in ``run_idx`` stay exactly 0. Only the (B, U)
    values at the units' locations are kept from each batch's (B, C, h, w) activation.
    """
    U, P = len(unit_idx), len(positions)
    discrepancy = torch.zeros(U, P, dtype=torch.float32)  # (U, P): one column per occluder position
    for b0 in range(0, len(run_idx), batch_size):
        idx = run_idx[b0:b0 + batch_size]  # (B,)
        patches = make_patches(image, idx, patch, noise=noise, seed=seed)  # (B, 3, ph, pw)
        with torch.inference_mode():
            act = engine_fn(positions[idx], patches)  # (B, C, h, w)
            at_units = act[:, unit_idx, loc_y, loc_x].float()  # (B, U): each unit at its own location
        if not torch.isfinite(at_units).all():
            raise ValueError(f"NaN or inf activations on {what}; expected finite values")
        discrepancy[:, idx] = (at_units - base).abs().T.cpu()  # (U, B)
        if bar is not None:
            bar.update(len(idx))
    return discrepancy


def _center_unit(rf, h: int, w: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The location whose TRF centre is nearest the image centre (ties: the lower index)."""
    H, W = image_size
    ys = [abs(rf.center(y, 0)[0] - (H - 1) / 2) for y in range(h)]
    xs = [abs(rf.center(0, x)[1] - (W - 1) / 2) for x in range(w)]
    return int(np.argmin(ys)), int(np.argmin(xs))


def _needed(rf, starts_y, starts_x, patch, locations) -> np.ndarray:
    """Bool (gh, gw): occluder positions whose patch overlaps the TRF of at least one probed location."""
    ph, pw = patch
    sy, sx = np.asarray(starts_y), np.asarray(starts_x)
    mask = np.zeros((len(sy), len(sx)), dtype=bool)
    for y, x in {(int(y), int(x)) for y, x in locations}:
        top, left, bottom, right = rf.box(y, x)
        mask |= np.outer((sy < bottom) & (sy + ph > top), (sx < right) & (sx + pw > left))
    return mask


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


def _as_images(images, names):
    try:
        from erf.images import ImageSet
    except ImportError:  # pragma: no cover
        ImageSet = ()
    if isinstance(images, ImageSet):
        names = list(images.names) if names is None else list(names)
        images = images.images
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images of shape {shape}; expected a float tensor (N, 3, H, W) or an erf.images.ImageSet")
    N = images.shape[0]
    if N == 0:
        raise ValueError("no images to probe; expected at least one")
    names = [f"image_{i:05d}" for i in range(N)] if names is None else [str(n) for n in names]
    if len(names) != N:
        raise ValueError(f"{len(names)} names for {N} images; expected one name per image")
    if len(set(names)) != N:
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"image name {dup!r} appears more than once; expected unique names")
    return images.float(), names


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
    batch_size: int = 32,
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
) -> ERFResult | None:
    """Empirical receptive fields of a layer's units by sliding-noise occlusion (Zhou et al. 2015).

    Args:
        model: the network (put in eval mode; it is cut at ``layer``).
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
        batch_size: occluded copies per forward pass (default 32).
        engine: ``"full"``, ``"incremental"`` or ``"auto"`` (incremental where the graph allows, else full with a warning; results agree within float round-off).
        device: where to run; default the model's device.
        skip_outside_trf: skip occluder positions whose patch misses the TRF of every probed unit location
            (exact: such a patch cannot change those units). Default True; off for global layers.
        rf: the layer's ``erf.rf.LayerRF``; default computed with ``erf.rf.receptive_field``.
        model_name: a label for the model's identity in the result.
        state_path: file for resumable accumulators, saved atomically after every image; a rerun with the
            same settings skips the images already done. A state from other settings is refused.
            With ``world_size > 1`` each rank keeps its own file (:func:`erf.distributed.rank_state_path`),
            so a run resumes with the same number of processes.
        on_image: called as ``on_image(done_count, name)`` after each image's state is saved
            (``done_count`` counts this rank's images).
        progress: show a tqdm bar over occluder positions.
        precision: ``"fp32"`` (default) or ``"bf16"``: the occluded passes (and the clean activation they
            are compared with) run under bf16 autocast; the top-K selection stays fp32. The drift from
            fp32 is measured on the first batch of the first image and stored as ``config["bf16_drift"]``:
            ``max |d_bf16 - d_fp32| / max |d_fp32|`` over its discrepancies. On CUDA the model and the
            occluded batches also run in ``torch.channels_last``.
        rank, world_size: this process's place under ``torch.distributed`` (torchrun): it probes
            ``images[rank::world_size]`` and rank 0 merges every rank's accumulators
            (:mod:`erf.distributed`); the result equals a single-process run's.

    Returns:
        :class:`erf.result.ERFResult` with ``maps`` (U, 2H, 2W) (``mode="units"``), or for a neuron
        ``maps`` (1, 2H, 2W) and ``image_maps`` (N, H, W) (``mode="neuron"``). With ``world_size > 1``,
        only rank 0 gets the result; the other ranks get None.

    Example:
        >>> res = probe_occlusion(torchvision.models.vgg16(), "features.29", imgs, top_k=2, units=[0, 5])
        >>> res.maps.shape, res.summary["table"]["trf_side"]
        ((2, 448, 448), 196.0)
    """
    display_norm = _display_norm(images)
    images, names = _as_images(images, names)
    N, _, H, W = images.shape
    (H, W), (ph, pw), (sh, sw) = _check_geometry((H, W), patch, stride)
    if noise not in NOISE_KINDS:
        raise unknown_name("noise kind", noise, NOISE_KINDS, show_all=True)
    if engine not in ENGINES:
        raise unknown_name("engine", engine, ENGINES, show_all=True)
    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS, show_all=True)
    check_shard(rank, world_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}; expected a fraction of the max in [0, 1)")
    if neuron is None and (not isinstance(top_k, int) or top_k < 1 or top_k > N):
        raise ValueError(f"top_k={top_k!r} but there are {N} images; expected 1 <= top_k <= {N}")
    layer = resolve_layer(model, layer)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    if rf is None:  # before truncating: the analysis restores the model's train/eval mode, which the cut shares
        from erf.rf import receptive_field

        rf = receptive_field(model, layer, (H, W))
    body = truncate(model, layer).to(device)  # eval mode
    engine_used = _resolve_engine(engine, body)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    # The occluded passes run on a channels_last copy on CUDA (the caller's model keeps its layout).
    run_body = copy.deepcopy(body).to(memory_format=memory_format) if device.type == "cuda" else body

    with torch.inference_mode():
        probe_act = body(images[:1].to(device))  # (1, C, h, w)
    _check_finite(probe_act, layer, f"image {names[0]!r}")
    _, C, h, w = probe_act.shape
    if neuron is not None:
        neuron = _check_neuron(neuron, (C, h, w), layer, rf, (H, W))
        unit_list = [neuron[0]]
    else:
        unit_list = select_units(units, C, seed=seed)
        bad = [u for u in unit_list if not 0 <= u < C]
        if bad or not unit_list:
            raise ValueError(f"units {bad or unit_list!r} are not channels of layer {layer!r} with {C} channels; "
                             f"expected indices in 0..{C - 1}")
        if len(set(unit_list)) != len(unit_list):
            raise ValueError(f"units {unit_list!r} repeat a channel; expected unique indices")
    U = len(unit_list)
    unit_idx = torch.tensor(unit_list, device=device)

    starts_y = _axis_starts(H, ph, sh)
    starts_x = _axis_starts(W, pw, sw)
    gh, gw = len(starts_y), len(starts_x)
    positions = occluder_positions((H, W), (ph, pw), (sh, sw))  # (P, 2)
    skip = skip_outside_trf and not getattr(rf, "is_global", False)
    fingerprint, n_params = _fingerprint_model(body)
    identity = {
        "method": "occlusion", "layer": layer, "image_size": [H, W], "patch": [ph, pw], "stride": [sh, sw],
        "noise": noise, "seed": int(seed), "top_k": None if neuron else int(top_k), "units": unit_list,
        "neuron": None if neuron is None else list(neuron), "model": fingerprint,
        "images": _fingerprint_images(images, names),
    }
    if precision != "fp32":  # keeps fp32 states written before precision existed valid
        identity["precision"] = precision
    if world_size > 1:
        identity["shard"] = [rank, world_size]
    rank_of = {n: r for r, n in enumerate(sorted(names))}

    # Accumulators: a top-K buffer per unit, or one grid map per image for a single neuron.
    topk = _TopK(U, top_k if neuron is None else 1, (gh, gw))
    per_image: dict[str, tuple[float, np.ndarray]] = {}
    done: list[str] = []
    state_path = None if state_path is None else rank_state_path(state_path, rank, world_size)
    if state_path is not None:
        loaded = _load_state(state_path, identity)
        if loaded is not None:
            meta, arrays = loaded
            done = list(meta["done"])
            if neuron is None:
                topk.values, topk.ranks = arrays["values"], arrays["ranks"]
                topk.locations, topk.maps = arrays["locations"], arrays["maps"]
            else:
                per_image = {n: (float(v), m) for n, v, m in zip(done, arrays["values"], arrays["maps"])}

    def clean_units(image: torch.Tensor, name: str):
        """Each probed unit's clean fp32 activation (U,) and location, and the positions to run."""
        with torch.inference_mode():
            clean = body(image)[0]  # (C, h, w)
        _check_finite(clean, layer, f"image {name!r}")
        if neuron is None:
            flat = clean[unit_idx].reshape(U, -1)  # (U, h*w)
            where = flat.argmax(dim=1)  # (U,): each unit's strongest location (first one on ties)
            values = flat.gather(1, where[:, None])[:, 0]  # (U,)
            loc_y, loc_x = where // w, where % w
        else:
            loc_y = torch.tensor([neuron[1]], device=device)
            loc_x = torch.tensor([neuron[2]], device=device)
            values = clean[unit_idx, loc_y, loc_x]  # (1,)
        locations = torch.stack([loc_y, loc_x], 1).cpu().numpy()  # (U, 2)
        run = np.ones(gh * gw, dtype=bool)
        if skip:
            run = _needed(rf, starts_y, starts_x, (ph, pw), locations).ravel()  # (P,)
        return values, loc_y, loc_x, locations, run

    def discrepancy_of(image, name, values, loc_y, loc_x, run_idx, prec, bar=None) -> torch.Tensor:
        """(U, P) discrepancies of the positions in ``run_idx`` at precision ``prec``."""
        image = image.contiguous(memory_format=memory_format)  # (1, 3, H, W)
        with _autocast(device, prec):
            base = values
            if prec != "fp32" or run_body is not body:  # the clean activation at the same precision and layout
                with torch.inference_mode():
                    base = run_body(image)[0][unit_idx, loc_y, loc_x]  # (U,)
            return _sweep(
                _make_engine(engine_used, run_body, image, memory_format), image, positions, run_idx,
                unit_idx, loc_y, loc_x, base.float(), patch=(ph, pw), noise=noise, seed=seed,
                batch_size=batch_size, what=f"an occluded copy of image {name!r} at layer {layer!r}", bar=bar)

    bf16_drift = None
    if precision != "fp32" and rank == 0:  # fp32 reference on the first batch of the first image
        image = images[:1].to(device)  # (1, 3, H, W)
        values, loc_y, loc_x, _, run = clean_units(image, names[0])
        first = torch.from_numpy(np.nonzero(run)[0][:batch_size])  # (B,)
        ref = discrepancy_of(image, names[0], values, loc_y, loc_x, first, "fp32")  # (U, P)
        low = discrepancy_of(image, names[0], values, loc_y, loc_x, first, precision)  # (U, P)
        err, scale = float((low - ref).abs().max()), float(ref.abs().max())
        bf16_drift = err / scale if scale > 0 else err

    finished = set(done)
    todo = [i for i in shard_indices(N, rank, world_size) if names[i] not in finished]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * len(positions), unit="pos", desc=f"occlusion {layer}")
    for i in todo:
        image = images[i:i + 1].to(device)  # (1, 3, H, W)
        values, loc_y, loc_x, locations, run = clean_units(image, names[i])
        discrepancy = discrepancy_of(image, names[i], values, loc_y, loc_x,
                                     torch.from_numpy(np.nonzero(run)[0]), precision, bar=bar)
        if bar is not None:
            bar.update(int((~run).sum()))
        maps = discrepancy.reshape(U, gh, gw).numpy()
        values_np = values.double().cpu().numpy()
        if neuron is None:
            topk.push(values_np, rank_of[names[i]], locations, maps)
        else:
            per_image[names[i]] = (float(values_np[0]), maps[0])
        done.append(names[i])
        if state_path is not None:
            if neuron is None:
                arrays = topk.arrays()
            else:
                arrays = {"values": np.array([per_image[n][0] for n in done]),
                          "maps": np.stack([per_image[n][1] for n in done])}
            _save_state(state_path, identity, done, arrays)
        if on_image is not None:
            on_image(len(done), names[i])
    if bar is not None:
        bar.close()
    if world_size > 1:  # rank 0 merges every rank's accumulators and alone builds the result
        parts = gather_to_main(topk.arrays() if neuron is None else per_image, rank, world_size)
        if rank != 0:
            return None
        if neuron is None:
            merged = merge_topk(parts, topk.values.shape[1])
            topk.values, topk.ranks = merged["values"], merged["ranks"]
            topk.locations, topk.maps = merged["locations"], merged["maps"]
        else:
            per_image = merge_disjoint(parts)

    # Render grid maps on the image pixels, re-centre on each unit's TRF centre, average.
    cy, cx = occluder_centers((H, W), (ph, pw), (sh, sw))
    Ry, Rx = _interp_matrix(H, cy), _interp_matrix(W, cx)  # (H, gh), (W, gw)

    def render(grid_maps: np.ndarray) -> np.ndarray:  # (..., gh, gw) -> (..., H, W)
        return (Ry @ grid_maps.astype(np.float64) @ Rx.T).astype(np.float32)

    def clipped_area(y: int, x: int) -> float:
        top, left, bottom, right = rf.box(int(y), int(x), clip=True)
        return float(max(bottom - top, 0) * max(right - left, 0))

    out_maps = np.zeros((U, 2 * H, 2 * W), dtype=np.float32)  # (U, 2H, 2W)
    image_maps = None
    if neuron is None:
        rank_to_index = {rank_of[n]: j for j, n in enumerate(names)}
        topk_images = np.array([[rank_to_index.get(int(r), -1) for r in row] for row in topk.ranks])  # (U, K)
        valid = np.isfinite(topk.values)  # (U, K)
        trf_areas = np.zeros(U)
        for u in range(U):
            ks = np.nonzero(valid[u])[0]
            for k in ks:
                g = topk.maps[u, k]
                peak = g.max()
                if peak > 0:
                    center = rf.center(*topk.locations[u, k])
                    out_maps[u] += recenter(render(g / peak), center)
            out_maps[u] /= max(len(ks), 1)
            trf_areas[u] = np.mean([clipped_area(*topk.locations[u, k]) for k in ks])
        topk_locations, topk_values = topk.locations, np.where(valid, topk.values, np.nan)
    else:
        grid = np.stack([per_image[n][1] for n in names])  # (N, gh, gw), image order
        image_maps = render(grid)  # (N, H, W): raw |delta| on the image grid
        center = rf.center(neuron[1], neuron[2])
        for g, m in zip(grid, image_maps):
            if g.max() > 0:
                out_maps[0] += recenter(m / g.max(), center)
        out_maps[0] /= N
        trf_areas = np.array([clipped_area(neuron[1], neuron[2])])
        topk_images = np.arange(N)[None]  # (1, N): every image
        topk_locations = np.tile(np.array(neuron[1:])[None, None], (1, N, 1))  # (1, N, 2)
        topk_values = np.array([[per_image[n][0] for n in names]])  # (1, N)

    config = {
        "method": "occlusion", "patch": [ph, pw], "stride": [sh, sw], "noise": noise, "seed": int(seed),
        "top_k": None if neuron is not None else int(top_k), "threshold": float(threshold), "engine": engine,
        "engine_used": engine_used,
        "batch_size": int(batch_size), "skip_outside_trf": bool(skip), "positions": int(gh * gw),
        "grid": [gh, gw], "device": str(device),
    }
    if precision != "fp32":  # fp32 configs stay as they were
        config.update(precision=precision, bf16_drift=bf16_drift)
    views = {}
    if neuron is None:  # what the unit browser shows of each top-K image (lab.browse)
        views = {**_topk_views(body, images, topk_images, unit_list, device, display_norm), "topk_maps": topk.maps}
        config["display_images"] = "exact" if display_norm is not None else "min-max"
    return build_result(
        method="occlusion", mode="units" if neuron is None else "neuron", layer=layer, image_size=(H, W),
        config=config, model={"name": model_name or type(model).__name__, "fingerprint": fingerprint,
                              "parameters": n_params},
        images=names, trf=rf_to_dict(rf), units=np.array(unit_list), maps=out_maps, trf_areas=trf_areas,
        topk_images=topk_images, topk_locations=topk_locations, topk_values=topk_values,
        image_maps=image_maps, neuron=neuron, threshold=threshold, **views,
    )


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


def _check_neuron(neuron, shape: tuple[int, int, int], layer: str, rf, image_size) -> tuple[int, int, int]:
    C, h, w = shape
    if isinstance(neuron, (tuple, list)) and len(neuron) == 2 and neuron[1] == "center":
        c = neuron[0]
        if not isinstance(c, (int, np.integer)) or not 0 <= c < C:
            raise ValueError(f"neuron channel {c!r} is outside layer {layer!r} of shape (C, h, w) = {shape}; "
                             f"expected 0 <= c < {C}")
        return (int(c),) + _center_unit(rf, h, w, image_size)
    if (not isinstance(neuron, (tuple, list)) or len(neuron) != 3
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in neuron)):
        raise ValueError(f"neuron={neuron!r}; expected (c, y, x) integers or (c, 'center')")
    c, y, x = (int(v) for v in neuron)
    if not (0 <= c < C and 0 <= y < h and 0 <= x < w):
        raise ValueError(f"neuron {(c, y, x)} is outside layer {layer!r} of shape (C, h, w) = {shape}")
    return c, y, x
