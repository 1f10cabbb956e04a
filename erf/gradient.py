"""The gradient ERF of Luo, Li, Urtasun and Zemel (NeurIPS 2016, "Understanding the Effective Receptive Field").

Back-propagate 1 from one output position (every channel there, Luo et al.
Sec. 2) or from one neuron, take ``|d out / d input|`` summed over the colour
channels, and average over the inputs: real images, random-noise images, and
several random initialisations of the same architecture (Luo et al. Sec. 4
average over both). The result has the same format as the occlusion probe's:
one map re-centred on the output's TRF centre on a 2H x 2W canvas
(:mod:`erf.result`), with the same statistics.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from erf.distributed import check_shard, gather_to_main, shard_indices
from erf.graph import resolve_layer
from erf._probe import as_images as _as_images, center_unit as _center_unit, check_finite as _check_finite
from erf._probe import check_neuron, ieee_fp32, preserved_modes, private_body, fingerprint_model as _fingerprint_model, pair as _pair
from erf.result import ERFResult, build_result, recenter

__all__ = ["probe_gradient", "GradientConfig"]


@dataclass(frozen=True)
class GradientConfig:
    """Every setting of a gradient probe (Luo et al. 2016) beyond the model, layer and inputs.

    Args:
        noise_inputs: number of N(0, 1) noise images to average over as well (drawn from ``seed``).
        inits: number of random initialisations (needs a model factory).
        seed: seed of the noise images and the initialisations.
        threshold: fraction of the max for the thresholded ERF size.
        batch_size: inputs per backward pass.

    Example:
        >>> GradientConfig(noise_inputs=8, inits=3).to_dict(position=[3, 3], device="cpu", real_images=0)["inits"]
        3
    """

    noise_inputs: int = 0
    inits: int = 1
    seed: int = 0
    threshold: float = 0.5
    batch_size: int = 16

    def __post_init__(self):
        for what, value, least in (("noise_inputs", self.noise_inputs, 0), ("inits", self.inits, 1),
                                   ("batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{what}={value!r}; expected an integer >= {least}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold!r}; expected a fraction of the max in [0, 1)")

    def to_dict(self, *, position, device: str, real_images: int) -> dict:
        """The result's ``config``: the settings plus the run's facts, in the order results have always had."""
        return {"method": "gradient", "position": position, "noise_inputs": self.noise_inputs, "inits": self.inits,
                "seed": int(self.seed), "threshold": float(self.threshold), "batch_size": int(self.batch_size),
                "device": device, "real_images": real_images}


class _GradientAccumulator:
    """Sums of ``sum_rgb |d out / d input|`` over inits x inputs, per real image, and the real images' target values.

    Each input is pushed once per initialisation, on exactly one rank, so merging is a sum.
    """

    def __init__(self, N: int, image_size: tuple[int, int], inits: int):
        self.inits = inits
        self.total = torch.zeros(image_size, dtype=torch.float64)  # (H, W): over inits x inputs
        self.per_image = torch.zeros((N,) + tuple(image_size), dtype=torch.float64)  # (N, H, W): over inits
        self.values = torch.zeros(N, dtype=torch.float64)  # (N,): target activation under the first init
        self.count = 0

    def push(self, idx: torch.Tensor, contrib: torch.Tensor, picked: torch.Tensor, first_init: bool) -> None:
        """One batch: global input indices (B,), their maps (B, H, W) and target values (B,); reals come first."""
        self.total += contrib.sum(0)
        self.count += len(idx)
        real = idx < len(self.values)  # (B,)
        self.per_image[idx[real]] += contrib[real]
        if first_init:
            self.values[idx[real]] = picked[real]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"total": self.total.numpy(), "per_image": self.per_image.numpy(), "values": self.values.numpy(),
                "count": np.array(self.count)}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        self.total, self.per_image, self.values = (torch.from_numpy(np.array(arrays[k]))
                                                   for k in ("total", "per_image", "values"))
        self.count = int(arrays["count"])

    def merge(self, parts: list[dict[str, np.ndarray]]) -> None:
        self.load_state_dict({k: sum(np.asarray(p[k]) for p in parts) for k in parts[0]})

    def finalize(self, rf, target: tuple, names: list[str], **common) -> ERFResult:
        c, y, x = target
        N = len(names)
        top, left, bottom, right = rf.box(y, x, clip=True)
        mean_map = (self.total / self.count).numpy().astype(np.float32)  # (H, W)
        return build_result(
            method="gradient", mode="position" if c is None else "neuron", images=list(names),
            units=np.array([-1 if c is None else c]), maps=recenter(mean_map, rf.center(y, x))[None],
            trf_areas=np.array([float((bottom - top) * (right - left))]), topk_images=np.arange(N)[None],
            topk_locations=np.tile(np.array([y, x])[None, None], (1, N, 1)), topk_values=self.values.numpy()[None],
            image_maps=(self.per_image / self.inits).numpy().astype(np.float32) if N else None,
            neuron=None if c is None else (c, y, x), **common)


def _build_models(model, inits: int, seed: int) -> list[nn.Module]:
    if isinstance(model, nn.Module):
        if inits != 1:
            raise ValueError(f"inits={inits} needs a model factory (a callable returning a fresh nn.Module), "
                             f"got an {type(model).__name__} instance; expected inits=1 or a factory")
        return [model]
    if not callable(model):
        raise TypeError(f"model of type {type(model).__name__}; expected an nn.Module or a callable returning one")
    models = []
    for i in range(inits):
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed + i)
            m = model()
        if not isinstance(m, nn.Module):
            raise TypeError(f"the model factory returned {type(m).__name__}; expected an nn.Module")
        models.append(m)
    return models


def probe_gradient(
    model: nn.Module | Callable[[], nn.Module],
    layer: str,
    images=None,
    *,
    names: Sequence[str] | None = None,
    position="center",
    neuron: tuple | None = None,
    noise_inputs: int = 0,
    input_size: int | tuple[int, int] | None = None,
    inits: int = 1,
    seed: int = 0,
    threshold: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    rf=None,
    model_name: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    protocol: str = "luo",
    config: GradientConfig | None = None,
) -> ERFResult | None:
    """Gradient ERF of one output position or neuron of ``layer`` (Luo et al. 2016).

    Args:
        model: an ``nn.Module``, or a factory ``() -> nn.Module`` called once per initialisation
            under ``torch.manual_seed(seed + i)``.
        layer: module path or fx node name of the output.
        images: real images (N, 3, H, W) or an ``erf.images.ImageSet``; may be None with ``noise_inputs``.
        names: image names (default the ImageSet's, else ``image_00000``, ...).
        position: ``(y, x)`` or ``"center"`` (default): back-propagate 1 from every channel there.
        neuron: ``(c, y, x)`` or ``(c, "center")``: back-propagate from this one neuron instead.
        noise_inputs: number of N(0, 1) noise images to average over as well (drawn from ``seed``).
        input_size: (H, W) of the noise images; default the real images' size.
        inits: number of random initialisations (needs a factory ``model``).
        seed: seed of the noise images and the initialisations.
        threshold: fraction of the max for the thresholded ERF size.
        batch_size: inputs per backward pass.
        device: where to run; default the first model's device.
        rf: the layer's ``erf.rf.LayerRF``; default computed with ``erf.rf.receptive_field``.
        model_name: a label for the model's identity in the result.
        rank, world_size: this process's place under ``torch.distributed`` (torchrun): it back-propagates
            from inputs ``rank, rank + world_size, ...``; rank 0 adds every rank's partial sums and divides
            by the global input count (:mod:`erf.distributed`).
        protocol: ``"luo"`` (this docstring) or ``"replknet"``: RepLKNet's protocol
            (:func:`erf.replknet.probe_replknet`; ``input_size`` is its resize side, default 1024).
        config: a :class:`GradientConfig`; when given it replaces ``noise_inputs``, ``inits``, ``seed``,
            ``threshold`` and ``batch_size``.

    Returns:
        :class:`erf.result.ERFResult` with ``maps`` (1, 2H, 2W): the mean of ``sum_rgb |grad|`` over
        inits x inputs, re-centred; ``image_maps`` (N, H, W) per real image (mean over inits), if any.
        With ``world_size > 1`` only rank 0 gets the result; the other ranks get None.

    Example:
        >>> res = probe_gradient(lambda: torchvision.models.resnet18(), "layer2", noise_inputs=8,
        ...                      input_size=96, inits=3)
        >>> res.maps.shape, res.mode
        ((1, 192, 192), 'position')
    """
    if protocol != "luo":
        from erf.replknet import replknet_from_gradient_args

        return replknet_from_gradient_args(protocol, model, layer, images, names=names, input_size=input_size,
                                           batch_size=batch_size, device=device, rf=rf, model_name=model_name,
                                           world_size=world_size)
    cfg = config or GradientConfig(noise_inputs, inits, seed, threshold, batch_size)
    check_shard(rank, world_size)
    real, names = _real_images(images, names, input_size, cfg.noise_inputs)
    N, _, H, W = real.shape
    noise = torch.randn(cfg.noise_inputs, 3, H, W, generator=torch.Generator().manual_seed(cfg.seed))  # (M, 3, H, W)
    inputs = torch.cat([real, noise])  # (N + M, 3, H, W): real images first
    mine = torch.tensor(shard_indices(len(inputs), rank, world_size), dtype=torch.long)  # this rank's inputs
    models = _build_models(model, cfg.inits, cfg.seed)
    layer = resolve_layer(models[0], layer)
    device = torch.device(device if device is not None else next(iter(models[0].parameters()), torch.empty(0)).device)
    if rf is None:
        from erf.rf import receptive_field

        rf = receptive_field(models[0], layer, (H, W))
    acc, target, fingerprints = _GradientAccumulator(N, (H, W), len(models)), None, []
    with ieee_fp32(device):  # TF32 off on CUDA: a GPU user gets a CPU user's numbers
        for m_i, net in enumerate(models):
            with preserved_modes(net):  # the caller's model keeps its device and modes: the probe runs a copy
                body = private_body(net, layer, device)
            fingerprints.append(_fingerprint_model(body))
            for b0 in range(0, len(mine), cfg.batch_size):
                idx = mine[b0:b0 + cfg.batch_size]  # (B,): global input indices
                x = inputs[idx].to(device).requires_grad_(True)  # (B, 3, H, W)
                out = body(x)  # (B, C, h, w)
                i0 = int(idx[0])
                _check_finite(out, layer, "input " + (names[i0] if i0 < N else f"noise #{i0 - N}"))
                target = target or _target(neuron, position, tuple(out.shape[1:]), layer, rf, (H, W))
                c, y, xx = target
                picked = out[:, :, y, xx].sum(1) if c is None else out[:, c, y, xx]  # (B,)
                (grad,) = torch.autograd.grad(picked.sum(), x)  # samples are independent: one backward per batch
                acc.push(idx, grad.abs().sum(1).double().cpu(), picked.detach().double().cpu(), m_i == 0)  # (B, H, W)
    if world_size > 1:  # rank 0 adds the partial sums; each real image was on exactly one rank
        parts = gather_to_main(acc.state_dict(), rank, world_size)
        if rank != 0:
            return None
        acc.merge(parts)
    c, y, xx = target
    fp = fingerprints[0][0] if len(models) == 1 else [f for f, _ in fingerprints]
    return acc.finalize(rf, target, names, layer=layer, image_size=(H, W), threshold=cfg.threshold,
                        config=cfg.to_dict(position=[y, xx] if c is None else None, device=str(device), real_images=N),
                        model={"name": model_name or type(models[0]).__name__, "fingerprint": fp,
                               "parameters": fingerprints[0][1]}, trf=rf)


def _real_images(images, names, input_size, noise_inputs: int) -> tuple[torch.Tensor, list[str]]:
    """The real images (N, 3, H, W) and their names; with no images, an empty batch of ``input_size``."""
    if images is None:
        if noise_inputs == 0 or input_size is None:
            raise ValueError("no inputs: expected images, or noise_inputs > 0 with input_size=(H, W)")
        return torch.zeros(0, 3, *_pair(input_size, "input_size")), []
    real, names = _as_images(images, names)
    if input_size is not None and _pair(input_size, "input_size") != tuple(real.shape[-2:]):
        raise ValueError(f"input_size={input_size!r} differs from the images' {tuple(real.shape[-2:])}; "
                         "expected the same size (or leave input_size out)")
    return real, names


def _target(neuron, position, shape, layer, rf, image_size) -> tuple[int | None, int, int]:
    """(c or None for all channels, y, x) of the output to back-propagate from, checked against (C, h, w)."""
    C, h, w = shape
    if neuron is not None:
        return check_neuron(neuron, shape, layer, rf, image_size)
    if isinstance(position, str):
        if position != "center":
            raise ValueError(f"position={position!r}; expected (y, x) or 'center'")
        return (None,) + _center_unit(rf, h, w, image_size)
    y, x = _pair(position, "position")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"position {(y, x)} is outside layer {layer!r} of shape (C, h, w) = {shape}")
    return None, y, x
