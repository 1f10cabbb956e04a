"""Tiny real probe results for the browser tests (a two-layer conv net on 16x16 images)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from erf.images import ImageSet
from erf.occlusion import probe_occlusion


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                         nn.ReLU()).eval()


def tiny_images(n: int = 4, size: int = 16) -> ImageSet:
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(n, 3, size, size, generator=g)  # in [0, 1]
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    images = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return ImageSet(images=images, names=tuple(f"scene_{i}.png" for i in range(n)), mean=mean, std=std)


def tiny_results(root, seeds=(0, 1)) -> list:
    """Probe the same layer of one tiny net per seed; save each under root/model<seed>/layer2."""
    images = tiny_images()
    out = []
    for seed in seeds:
        res = probe_occlusion(tiny_net(seed), "2", images, patch=5, stride=3, top_k=2, model_name=f"tiny{seed}")
        out.append(res.save(root / f"model{seed}" / "layer2"))
    return out


def downgrade_to_v1(folder) -> None:
    """Rewrite a saved result as format version 1 wrote it: no per-image top-K arrays."""
    import hashlib
    import io
    import json

    meta = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "result.npz") as z:
        arrays = {k: z[k] for k in z.files if k not in ("topk_maps", "topk_activations", "display_images")}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (folder / "result.npz").write_bytes(buf.getvalue())
    meta.update(format_version=1, npz_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
                arrays={k: list(v.shape) for k, v in arrays.items()})
    meta["config"].pop("display_images", None)
    (folder / "summary.json").write_text(json.dumps(meta))
