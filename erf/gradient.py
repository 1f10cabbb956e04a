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

import numpy as np
import torch
from torch import nn

from erf.distributed import check_shard, gather_to_main, shard_indices
from erf.graph import resolve_layer
from erf._probe import as_images as _as_images, center_unit as _center_unit, check_finite as _check_finite
from erf._probe import check_neuron, ieee_fp32, preserved_modes, private_body, fingerprint_model as _fingerprint_model, pair as _pair
from erf.result import ERFResult, build_result, recenter, rf_to_dict

__all__ = ["probe_gradient"]


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
    if not isinstance(noise_inputs, int) or noise_inputs < 0:
        raise ValueError(f"noise_inputs={noise_inputs!r}; expected an integer >= 0")
    if not isinstance(inits, int) or inits < 1:
        raise ValueError(f"inits={inits!r}; expected an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}; expected a fraction of the max in [0, 1)")
    check_shard(rank, world_size)
    if images is None:
        if noise_inputs == 0 or input_size is None:
            raise ValueError("no inputs: expected images, or noise_inputs > 0 with input_size=(H, W)")
        real, names = torch.zeros(0, 3, *_pair(input_size, "input_size")), []
    else:
        real, names = _as_images(images, names)
        if input_size is not None and _pair(input_size, "input_size") != tuple(real.shape[-2:]):
            raise ValueError(f"input_size={input_size!r} differs from the images' {tuple(real.shape[-2:])}; "
                             "expected the same size (or leave input_size out)")
    N, _, H, W = real.shape
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(noise_inputs, 3, H, W, generator=gen)  # (M, 3, H, W)
    inputs = torch.cat([real, noise])  # (N + M, 3, H, W): real images first
    mine = torch.tensor(shard_indices(len(inputs), rank, world_size), dtype=torch.long)  # this rank's inputs

    models = _build_models(model, inits, seed)
    layer = resolve_layer(models[0], layer)
    if device is None:
        device = next(iter(models[0].parameters()), torch.empty(0)).device
    device = torch.device(device)
    if rf is None:
        from erf.rf import receptive_field

        rf = receptive_field(models[0], layer, (H, W))

    total = torch.zeros(H, W, dtype=torch.float64)  # sum over inits x inputs of sum_rgb |grad|
    per_image = torch.zeros(N, H, W, dtype=torch.float64)  # (N, H, W): real images, summed over inits
    values = torch.zeros(N, dtype=torch.float64)  # target activation on each real image (first init)
    target = None
    fingerprints = []
    with ieee_fp32(device):  # TF32 off on CUDA: a GPU user gets a CPU user's numbers
        for m_i, net in enumerate(models):
            with preserved_modes(net):  # the caller's model keeps its device and modes: the probe runs a copy
                body = private_body(net, layer, device)
            fingerprints.append(_fingerprint_model(body))
            for b0 in range(0, len(mine), batch_size):
                idx = mine[b0:b0 + batch_size]  # (B,): global input indices
                x = inputs[idx].to(device).requires_grad_(True)  # (B, 3, H, W)
                out = body(x)  # (B, C, h, w)
                i0 = int(idx[0])
                _check_finite(out, layer, "input " + (names[i0] if i0 < N else f"noise #{i0 - N}"))
                if target is None:
                    target = _target(neuron, position, tuple(out.shape[1:]), layer, rf, (H, W))
                c, y, xx = target
                picked = out[:, :, y, xx].sum(1) if c is None else out[:, c, y, xx]  # (B,)
                (grad,) = torch.autograd.grad(picked.sum(), x)  # samples are independent: one backward per batch
                contrib = grad.abs().sum(1).double().cpu()  # (B, H, W): summed over colour channels
                total += contrib.sum(0)
                is_real = idx < N  # (B,): real images come first in ``inputs``
                if is_real.any():
                    per_image[idx[is_real]] += contrib[is_real]
                    if m_i == 0:
                        values[idx[is_real]] = picked[is_real.to(picked.device)].detach().double().cpu()

    if world_size > 1:  # rank 0 adds the partial sums; each real image was on exactly one rank
        parts = gather_to_main((total, per_image, values), rank, world_size)
        if rank != 0:
            return None
        total = sum(p[0] for p in parts)
        per_image = sum(p[1] for p in parts)
        values = sum(p[2] for p in parts)
    mean_map = (total / (len(models) * len(inputs))).numpy().astype(np.float32)  # (H, W)
    c, y, xx = target
    center = rf.center(y, xx)
    top, left, bottom, right = rf.box(y, xx, clip=True)
    fp = fingerprints[0][0] if len(models) == 1 else [f for f, _ in fingerprints]
    config = {
        "method": "gradient", "position": [y, xx] if c is None else None, "noise_inputs": noise_inputs,
        "inits": inits, "seed": int(seed), "threshold": float(threshold), "batch_size": int(batch_size),
        "device": str(device), "real_images": N,
    }
    return build_result(
        method="gradient", mode="position" if c is None else "neuron", layer=layer, image_size=(H, W),
        config=config, model={"name": model_name or type(models[0]).__name__, "fingerprint": fp,
                              "parameters": fingerprints[0][1]},
        images=list(names), trf=rf_to_dict(rf), units=np.array([-1 if c is None else c]),
        maps=recenter(mean_map, center)[None], trf_areas=np.array([float((bottom - top) * (right - left))]),
        topk_images=np.arange(N)[None], topk_locations=np.tile(np.array([y, xx])[None, None], (1, N, 1)),
        topk_values=values.numpy()[None], image_maps=(per_image / len(models)).numpy().astype(np.float32) if N
        else None, neuron=None if c is None else (c, y, xx), threshold=threshold,
    )


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
