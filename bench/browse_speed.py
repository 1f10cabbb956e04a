"""Time erf-browse on result folders and report the site's size: seconds per layer, MB, files.

Usage (from the repository root):
    .venv/bin/python bench/browse_speed.py RESULT_DIR... [--out /tmp/erf-browse-bench]

For the issue-16 budget (a 512-unit layer in under a minute on 2 cores, site under ~50 MB), probe a
random-init VGG16 conv5_3 on scikit-image's sample photographs first (1-7 minutes on 2 cores):
    .venv/bin/python bench/browse_speed.py --make-vgg16 /tmp/erf-browse-vgg16
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.browse import find_results, write_browser  # noqa: E402


def make_vgg16(folder: Path) -> Path:
    """Probe every unit of a random-init VGG16 conv5_3 (features.29) on 14 sample photos at 128 px, stride 8."""
    import numpy as np
    import skimage.data
    import torch
    import torchvision
    from PIL import Image

    from erf.images import load_images
    from erf.occlusion import probe_occlusion

    names = ["astronaut", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "hubble_deep_field",
             "immunohistochemistry", "logo", "moon", "page", "retina", "rocket"]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        a = getattr(skimage.data, n)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        Image.fromarray(a.astype("uint8")).convert("RGB").save(folder / "images" / f"{n}.png")
    torch.manual_seed(0)
    images = load_images(folder / "images", resize=(128, 128))
    t0 = time.perf_counter()
    result = probe_occlusion(torchvision.models.vgg16().eval(), "features.29", images, stride=8, top_k=10,
                             batch_size=64, model_name="vgg16 (random init)")
    print(f"probe: {len(result.units)} units, {len(images)} images in {time.perf_counter() - t0:.0f} s")
    return result.save(folder / "probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/erf-browse-bench"))
    parser.add_argument("--make-vgg16", type=Path, help="probe VGG16 conv5_3 into this folder first")
    args = parser.parse_args()
    results = list(args.results) + ([make_vgg16(args.make_vgg16)] if args.make_vgg16 else [])
    if not results:
        parser.error("give RESULT_DIR... or --make-vgg16 FOLDER")
    found = find_results(results)
    lines = []
    t0 = time.perf_counter()
    write_browser(results, args.out, log=lines.append)
    total = time.perf_counter() - t0
    files = [p for p in args.out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print("\n".join(lines))
    print(f"{len(found)} results in {total:.1f} s (load, measures and drawing); site {size / 2**20:.1f} MB "
          f"in {len(files)} files at {args.out}; {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
