"""Occlusion probe speed, side by side: full re-inference, incremental inference, captum.

For each workload, the same image and the same occluder positions of the Zhou et al.
(2015) protocol (11x11 uniform-noise patch on a stride-3 grid) go through

  (a) ``full``: batched full re-inference of every occluded copy up to the layer;
  (b) ``incremental``: :class:`erf.incremental.IncrementalOcclusion` (Krypton), whose
      time includes building its clean-activation cache;
  (c) ``captum``: ``captum.attr.Occlusion`` on one neuron per call (that is its API).
      Its per-image cost does not depend on which windows it visits, so it is timed on
      ``--captum-units`` neurons with window stride 11 (the coarsest it accepts, so the
      fewest forward passes per neuron) and its time per occluded image is
      extrapolated to every neuron (C x h x w) of the layer over the same positions.
      That row is labelled *extrapolated*.

Each method runs in its own child process, one after another, so that the peak
memory column is that method's own: the child's peak resident set size
(``ru_maxrss``) and, in brackets, how much it grew while the method ran, above the
model, image and inputs already loaded. ``--repeat R`` runs the sequence R times,
interleaved, and keeps each method's fastest run (the machine is shared: compare
ratios from one invocation, not absolute times across invocations).

The theoretical ratio is the Conv2d/Linear multiply-accumulates of full re-inference
over those of each position's exact projective field (:meth:`IncrementalOcclusion.macs`,
from layer shapes alone); "achieved" is the measured speed-up of (b) over (a) divided
by it.

Usage:

    .venv/bin/python bench/probe_speed.py                      # all three workloads
    .venv/bin/python bench/probe_speed.py --workload vgg16 --positions 128 --batch 32
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATCH, STRIDE = 11, 3  # Zhou et al. 2015, Sec. 3.2
WORKLOADS = {  # name: (model, layer, image size)
    "vgg16": ("torchvision vgg16", "features.29", 224),  # conv5_3 after its ReLU
    "resnet50": ("torchvision resnet50", "layer3", 224),
    "parsenet": ("ParseNet compact (width 1/8, BN, global)", "fc7", 96),  # the demo preset's size
}
METHODS = ("full", "incremental", "captum")


# --------------------------------------------------------------------------- worker side

def _model(workload: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if workload == "vgg16":
        return torchvision.models.vgg16()
    if workload == "resnet50":
        return torchvision.models.resnet50()
    from parsenet.config import ParseNetConfig
    from parsenet.model import build_model

    return build_model(ParseNetConfig(width=1 / 8, batch_norm=True, context="global"))


def _image(size: int):
    """A real photograph (scikit-image's astronaut), resized and ImageNet-normalised: (1, 3, size, size)."""
    import torch
    import torch.nn.functional as F
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 512, 512)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _grid(size: int):
    """All top-left corners of the stride-3 grid in raster order; the last row and column touch the border."""
    import torch

    starts = list(range(0, size - PATCH + 1, STRIDE))
    if starts[-1] != size - PATCH:
        starts.append(size - PATCH)
    g = torch.tensor(starts)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # (N, 2)


def _subset(grid, n: int, batch: int):
    """``n`` positions as contiguous raster-order runs of ``batch``, spread evenly over the grid."""
    import torch

    if n >= len(grid):
        return grid
    runs = math.ceil(n / batch)
    starts = torch.linspace(0, len(grid) - batch, runs).long().tolist()
    idx = [i for s in starts for i in range(s, s + batch)][:n]
    return grid[torch.tensor(idx)]


def _worker(args) -> dict:
    import torch

    from erf.graph import truncate
    from erf.incremental import IncrementalOcclusion

    if args.threads:
        torch.set_num_threads(args.threads)
    _, layer, size = WORKLOADS[args.workload]
    body = truncate(_model(args.workload), layer)
    image = _image(size)
    grid = _grid(size)
    positions = _subset(grid, args.positions, args.batch)
    g = torch.Generator().manual_seed(0)
    lo, hi = float(image.min()), float(image.max())
    patches = lo + (hi - lo) * torch.rand(len(positions), 3, PATCH, PATCH, generator=g)  # uniform noise
    with torch.inference_mode():
        C, h, w = body(image).shape[1:]
    out = {"threads": torch.get_num_threads(), "positions": len(positions), "grid": len(grid),
           "units": C * h * w, "shape": [C, h, w]}

    def full(pos, pat):
        batch = image.repeat(len(pos), 1, 1, 1)  # (P, 3, H, W)
        for p, (y, x) in enumerate(pos.tolist()):
            batch[p, :, y:y + PATCH, x:x + PATCH] = pat[p]
        return body(batch)  # (P, C, h, w)

    base = _maxrss()  # model, image and inputs loaded; every warm-up below counts towards the growth
    if args.method == "full":
        with torch.inference_mode():
            full(positions[:2], patches[:2])  # warm-up, untimed
            t0 = time.perf_counter()
            for i in range(0, len(positions), args.batch):
                full(positions[i:i + args.batch], patches[i:i + args.batch])
            out["wall"] = time.perf_counter() - t0
        out["images"] = len(positions)
    elif args.method == "incremental":
        IncrementalOcclusion(body, image)(positions[:2], patches[:2])  # warm-up, untimed
        t0 = time.perf_counter()
        engine = IncrementalOcclusion(body, image)
        for i in range(0, len(positions), args.batch):
            engine(positions[i:i + args.batch], patches[i:i + args.batch])
        out["wall"] = time.perf_counter() - t0
        out["images"] = len(positions)
        subset, whole = engine.macs(positions, (PATCH, PATCH)), engine.macs(grid, (PATCH, PATCH))
        out["ratio_subset"], out["ratio_grid"] = subset.ratio, whole.ratio
        out["maxrss_base"], out["maxrss"] = base, _maxrss()  # before the check below runs (a) once more
        with torch.inference_mode():  # exactness on the first batch, against (a)
            want = full(positions[:args.batch], patches[:args.batch])
        got = engine(positions[:args.batch], patches[:args.batch])
        out["max_rel_err"] = float((got - want).abs().max() / want.abs().max())
    else:
        from captum.attr import Occlusion

        c, y, x = C // 2, h // 2, w // 2  # the centre neuron of the middle channel, then neighbours
        units = [((c + k) % C, y, x) for k in range(args.captum_units)]
        stride = PATCH  # the coarsest window stride captum accepts (stride <= window): fewest passes per unit
        baseline = lo + (hi - lo) * torch.rand(image.shape, generator=g)  # noise seen through each window
        with torch.inference_mode():
            body(image)  # warm-up, untimed
        images = 0
        t0 = time.perf_counter()
        for cu, yu, xu in units:
            occ = Occlusion(lambda inp, cu=cu, yu=yu, xu=xu: body(inp)[:, cu, yu, xu])
            with torch.no_grad():
                occ.attribute(image, sliding_window_shapes=(3, PATCH, PATCH), strides=(3, stride, stride),
                              baselines=baseline, perturbations_per_eval=args.batch)
            windows = (1 + (size - PATCH) // stride) ** 2
            images += windows + 1  # + its one unoccluded forward pass per call
        out["wall_measured"] = time.perf_counter() - t0
        out["images_measured"] = images
        per_image = out["wall_measured"] / images
        out["images"] = len(positions) * C * h * w  # every neuron over the same positions
        out["wall"] = per_image * out["images"]
        out["captum_units"], out["captum_stride"] = len(units), stride
    out.setdefault("maxrss_base", base)
    out.setdefault("maxrss", _maxrss())
    return out


def _maxrss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- parent side

def _run_child(args, workload: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--workload", workload, "--method", method,
           "--positions", str(args.positions), "--batch", str(args.batch),
           "--captum-units", str(args.captum_units), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{workload}/{method} failed:\n{res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def _table(workload: str, r: dict) -> str:
    f, i, c = r["full"], r["incremental"], r.get("captum")
    model, layer, size = WORKLOADS[workload]
    C, h, w = i["shape"]
    lines = [
        f"== {model}, layer {layer} ({C}x{h}x{w} = {i['units']:,} units), {size} px image, "
        f"{PATCH}x{PATCH} noise patch, stride {STRIDE}: {i['positions']} of the grid's {i['grid']} positions, "
        f"batch {args_global.batch}, {i['threads']} torch threads",
        f"{'method':<34}{'wall':>12}{'images/s':>12}{'peak RSS (growth)':>26}{'speed-up of (b)':>18}",
    ]

    def row(name, m, extra=""):
        ips = m["images"] / m["wall"]
        mem = f"{_mib(m['maxrss'])} (+{_mib(m['maxrss'] - m['maxrss_base'])})"
        lines.append(f"{name:<34}{m['wall']:>11.2f}s{ips:>12.1f}{mem:>26}{extra:>18}")

    row("(a) full re-inference", f, f"{f['wall'] / i['wall']:.1f}x")
    row("(b) incremental", i, "1.0x")
    if c is not None:
        row("(c) captum Occlusion, all units *", c, f"{c['wall'] / i['wall']:,.0f}x")
    speedup = f["wall"] / i["wall"]
    lines += [
        f"theoretical MAC ratio full/incremental: {i['ratio_subset']:.2f} on these positions "
        f"({i['ratio_grid']:.2f} on the whole grid); achieved {speedup:.2f}x = "
        f"{100 * speedup / i['ratio_subset']:.0f}% of it",
        f"incremental vs full, max |diff| / max |activation| on the first batch: {i['max_rel_err']:.1e}",
    ]
    if c is not None:
        lines.append(
            f"* extrapolated: captum measured {c['wall_measured']:.1f}s for {c['captum_units']} unit(s) x "
            f"{c['images_measured'] // c['captum_units']} forward passes (window stride {c['captum_stride']}), "
            f"i.e. {1000 * c['wall_measured'] / c['images_measured']:.1f} ms per occluded image, scaled to "
            f"{c['units']:,} units x {i['positions']} positions = {c['images']:,} images")
    return "\n".join(lines)


def main(argv=None) -> None:
    global args_global
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--positions", type=int, default=64, help="occluder positions per workload (default 64)")
    p.add_argument("--batch", type=int, default=16, help="positions per forward pass, all methods (default 16)")
    p.add_argument("--captum-units", type=int, default=1, help="neurons captum is timed on (default 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every method (default: torch's)")
    p.add_argument("--no-captum", action="store_true", help="skip (c)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved runs per method; the fastest is kept")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = args_global = p.parse_args(argv)
    if args.positions < 1 or args.batch < 1 or args.captum_units < 1 or args.repeat < 1 or args.threads < 0:
        p.error("--positions, --batch, --captum-units and --repeat must be >= 1")
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    methods = [m for m in METHODS if not (m == "captum" and args.no_captum)]
    if "captum" in methods:
        try:
            import captum  # noqa: F401
        except ImportError:
            print("captum is not installed (pip install -e '.[bench]'); skipping (c)", file=sys.stderr)
            methods.remove("captum")
    for workload in workloads:
        if workload == "parsenet":
            try:
                import parsenet.model  # noqa: F401
            except ImportError as exc:
                print(f"== skipping ParseNet: parsenet.model is not importable ({exc})\n")
                continue
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for method in methods:
                r = _run_child(args, workload, method)
                if method not in best or r["wall"] < best[method]["wall"]:
                    best[method] = r
        print(_table(workload, best), end="\n\n", flush=True)


args_global: argparse.Namespace

if __name__ == "__main__":
    main()
