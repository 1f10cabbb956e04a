"""Helpers shared by the occlusion and gradient probes (private: import the public probes instead).

Input checks, the probe's own copy of the cut model, fingerprints of the model and
the images (a resume state is only reused by the same probe), and the resume-state
file with its save clock.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from erf.graph import truncate
from erf.util import atomic_write

__all__: list[str] = []  # private module

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
_STATE_VERSION = 1


# --------------------------------------------------------------------------- checks
def pair(value, what: str) -> tuple[int, int]:
    """``value`` as an (a, b) pair of ints; one int means (value, value)."""
    p = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(p) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p):
        raise ValueError(f"{what}={value!r}; expected an integer or a pair of integers")
    return int(p[0]), int(p[1])


def as_images(images, names):
    """(images float (N, 3, H, W), names) from a tensor or an ``erf.images.ImageSet``, checked."""
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


def check_finite(t: torch.Tensor, layer: str, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"layer {layer!r} gives NaN or inf activations on {what}; expected finite values "
                         "(check the weights and the input normalisation)")


def center_unit(rf, h: int, w: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The location whose TRF centre is nearest the image centre (ties: the lower index)."""
    H, W = image_size
    ys = [abs(rf.center(y, 0)[0] - (H - 1) / 2) for y in range(h)]
    xs = [abs(rf.center(0, x)[1] - (W - 1) / 2) for x in range(w)]
    return int(np.argmin(ys)), int(np.argmin(xs))


def check_neuron(neuron, shape: tuple[int, int, int], layer: str, rf, image_size) -> tuple[int, int, int]:
    """``(c, y, x)`` or ``(c, "center")`` checked against the layer's (C, h, w); returns (c, y, x)."""
    C, h, w = shape
    if isinstance(neuron, (tuple, list)) and len(neuron) == 2 and neuron[1] == "center":
        c = neuron[0]
        if not isinstance(c, (int, np.integer)) or not 0 <= c < C:
            raise ValueError(f"neuron channel {c!r} is outside layer {layer!r} of shape (C, h, w) = {shape}; "
                             f"expected 0 <= c < {C}")
        return (int(c),) + center_unit(rf, h, w, image_size)
    if (not isinstance(neuron, (tuple, list)) or len(neuron) != 3
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in neuron)):
        raise ValueError(f"neuron={neuron!r}; expected (c, y, x) integers or (c, 'center')")
    c, y, x = (int(v) for v in neuron)
    if not (0 <= c < C and 0 <= y < h and 0 <= x < w):
        raise ValueError(f"neuron {(c, y, x)} is outside layer {layer!r} of shape (C, h, w) = {shape}")
    return c, y, x


# --------------------------------------------------------------------------- the probe's model
def resolve_device(model: nn.Module, device) -> torch.device:
    """``device``, or the model's (its first parameter's) when None."""
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.device(device)


def resolve_memory_format(memory_format: str, device: torch.device) -> torch.memory_format:
    """``"auto"`` is channels_last on CUDA (faster convolutions there) and contiguous elsewhere."""
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cuda" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def private_body(model: nn.Module, layer: str, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """The probe's own copy of ``model`` cut at ``layer``, in eval mode, on ``device`` in ``memory_format``.

    :func:`erf.graph.truncate` cuts a private copy, so moving, re-laying-out or
    evaluating it leaves the caller's model as it was.
    """
    return truncate(model, layer).eval().to(device=device, memory_format=memory_format)


@contextlib.contextmanager
def preserved_modes(model: nn.Module):
    """Put every module's train/eval flag back afterwards (tracing and the RF analysis switch the whole tree)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """fp32 convolutions and matmuls in full fp32 on CUDA (TF32 off), so that a GPU run matches a CPU run."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without waiting for the device (pinned, non-blocking copy on CUDA)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def fingerprint_model(body: nn.Module) -> tuple[str, int]:
    """SHA-256 of the state dict (names and bytes) and the number of floating-point parameters and buffers."""
    h = hashlib.sha256()
    n = 0
    for name, t in sorted(body.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        n += t.numel() if t.is_floating_point() else 0
    return h.hexdigest(), n


def fingerprint_images(images: torch.Tensor, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name, img in sorted(zip(names, images), key=lambda t: t[0]):
        h.update(name.encode())
        h.update(img.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- resume state
def load_state(path: Path, identity: dict) -> tuple[list[str], dict[str, np.ndarray]] | None:
    """(names done, accumulator arrays) of a state file written by the same probe; None when there is none."""
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
    return list(meta["done"]), arrays


def save_state(path: Path, identity: dict, done: list[str], arrays: dict[str, np.ndarray]) -> None:
    meta = json.dumps({"version": _STATE_VERSION, "identity": identity, "done": done})
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(meta), **arrays)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


class StateClock:
    """When to save the accumulator state: every ``every`` seconds, and whenever forced (at the end, on an
    interruption, before a caller's per-image callback). A kill loses at most ``every`` seconds of work."""

    def __init__(self, path: Path | None, identity: dict, every: float):
        if not every >= 0:
            raise ValueError(f"state_every={every!r}; expected a number of seconds >= 0")
        self.path, self.identity, self.every = path, identity, every
        self.last = time.monotonic()
        self.saved = -1  # how many images the file on disk holds

    def tick(self, done: list[str], arrays_fn, *, force: bool = False) -> bool:
        """Save ``arrays_fn()`` with ``done`` if it is time; returns whether it saved."""
        if self.path is None or len(done) == self.saved:
            return False
        if not (force or time.monotonic() - self.last >= self.every):
            return False
        save_state(self.path, self.identity, list(done), arrays_fn())
        self.last, self.saved = time.monotonic(), len(done)
        return True
