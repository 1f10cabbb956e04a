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

  (d) ``forward``: a plain batched forward pass of the same cut model on clean images,
      at the same batch size, precision and layout: the ceiling no probe can pass.

With ``--device cuda`` everything runs on the GPU (the cut model and the batches in
channels_last, fp32 with TF32 off as the probe runs it, or ``--precision bf16``
under autocast), times are taken between ``torch.cuda.synchronize()`` calls and the
memory column is the CUDA allocator's peak (and its growth above the loaded model
and inputs). Without captum installed, (c) is a lower bound extrapolated from (d):
captum runs one forward pass of the occluded image per neuron, so it cannot be
faster than (d) per image. ``--protocol N`` adds (e): ``erf.probe_occlusion`` end to
end, every unit of the layer, on N images over the whole grid (the Zhou protocol),
in images per second, with the engine given by ``--protocol-engine``.

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
METHODS = ("full", "incremental", "captum", "forward")


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
    import contextlib

    import torch

    from erf import _probe
    from erf.incremental import IncrementalOcclusion
    from erf.occlusion import FullReinference

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    _, layer, size = WORKLOADS[args.workload]
    fmt = _probe.resolve_memory_format("auto", device)  # channels_last on CUDA, as the probe runs
    model = _model(args.workload).eval()
    body = _probe.private_body(model, layer, device, fmt)
    image = _image(size).to(device).contiguous(memory_format=fmt)
    grid = _grid(size)
    positions = _subset(grid, args.positions, args.batch)
    g = torch.Generator().manual_seed(0)
    lo, hi = float(image.min()), float(image.max())
    patches = (lo + (hi - lo) * torch.rand(len(positions), 3, PATCH, PATCH, generator=g)).to(device)  # uniform
    exact = _probe.ieee_fp32(device)  # fp32 means fp32 (TF32 off), as in the probe
    exact.__enter__()

    def precision():
        if args.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode(), precision():
        C, h, w = body(image).shape[1:]
    out = {"threads": torch.get_num_threads(), "positions": len(positions), "grid": len(grid),
           "units": C * h * w, "shape": [C, h, w], "device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    full = FullReinference(body, image, memory_format=fmt)

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        with precision():
            fn()
        sync()
        return time.perf_counter() - t0

    def batches(fn):
        def run():
            for i in range(0, len(positions), args.batch):
                fn(positions[i:i + args.batch], patches[i:i + args.batch])
        return run

    sync()
    base = _memory(device, reset=True)  # model, image and inputs loaded; every warm-up below counts as growth
    if args.method == "full":
        with torch.inference_mode():
            timed(lambda: full(positions[:args.batch], patches[:args.batch]))  # warm-up, untimed
            out["wall"] = timed(batches(full))
        out["images"] = len(positions)
    elif args.method == "forward":
        clean = image.expand(args.batch, -1, -1, -1).clone(memory_format=fmt)  # (B, 3, H, W): no occluder
        with torch.inference_mode():
            timed(lambda: body(clean))  # warm-up, untimed
            out["wall"] = timed(batches(lambda pos, pat: body(clean[:len(pos)])))
        out["images"] = len(positions)
    elif args.method == "incremental":
        with precision():
            IncrementalOcclusion(body, image)(positions[:args.batch], patches[:args.batch])  # warm-up, untimed
        holder = {}
        out["wall"] = timed(lambda: holder.update(engine=IncrementalOcclusion(body, image))) + timed(
            batches(lambda pos, pat: holder["engine"](pos, pat)))
        engine = holder["engine"]
        out["images"] = len(positions)
        subset, whole = engine.macs(positions, (PATCH, PATCH)), engine.macs(grid, (PATCH, PATCH))
        out["ratio_subset"], out["ratio_grid"] = subset.ratio, whole.ratio
        out["maxrss_base"], out["maxrss"] = base, _memory(device)  # before the check below runs (a) once more
        with torch.inference_mode(), precision():  # exactness on the first batch, against (a)
            want = full(positions[:args.batch], patches[:args.batch]).float()
            got = engine(positions[:args.batch], patches[:args.batch]).float()
        out["max_rel_err"] = float((got - want).abs().max() / want.abs().max())
    elif args.method == "captum":
        from captum.attr import Occlusion

        c, y, x = C // 2, h // 2, w // 2  # the centre neuron of the middle channel, then neighbours
        units = [((c + k) % C, y, x) for k in range(args.captum_units)]
        stride = PATCH  # the coarsest window stride captum accepts (stride <= window): fewest passes per unit
        baseline = (lo + (hi - lo) * torch.rand(image.shape, generator=g)).to(device)  # noise seen through each window
        with torch.inference_mode(), precision():
            body(image)  # warm-up, untimed
        images = 0

        def run():
            nonlocal images
            for cu, yu, xu in units:
                occ = Occlusion(lambda inp, cu=cu, yu=yu, xu=xu: body(inp)[:, cu, yu, xu])
                with torch.no_grad():
                    occ.attribute(image, sliding_window_shapes=(3, PATCH, PATCH), strides=(3, stride, stride),
                                  baselines=baseline, perturbations_per_eval=args.batch)
                windows = (1 + (size - PATCH) // stride) ** 2
                images += windows + 1  # + its one unoccluded forward pass per call

        out["wall_measured"] = timed(run)
        out["images_measured"] = images
        per_image = out["wall_measured"] / images
        out["images"] = len(positions) * C * h * w  # every neuron over the same positions
        out["wall"] = per_image * out["images"]
        out["captum_units"], out["captum_stride"] = len(units), stride
    else:  # protocol: the whole probe, every unit, every grid position, N images
        import erf.occlusion as occlusion
        from erf.occlusion import probe_occlusion

        stats = {"wall": 0.0}  # the result's statistics (a Gaussian fit per unit) are timed apart from the sweep
        build_result = occlusion.build_result

        def timed_build(**kw):
            t = time.perf_counter()
            result = build_result(**kw)
            stats["wall"] += time.perf_counter() - t
            return result

        occlusion.build_result = timed_build

        images = torch.cat([torch.roll(_image(size), shifts=(7 * k, 11 * k), dims=(2, 3))
                            for k in range(args.protocol)])  # (N, 3, H, W): the photograph, shifted
        exact.__exit__(None, None, None)  # the probe sets its own precision
        sync()
        t0 = time.perf_counter()
        res = probe_occlusion(model, layer, images, top_k=min(10, args.protocol), engine=args.protocol_engine,
                              precision=args.precision, batch_size=args.batch, device=device)
        sync()
        out["wall"] = time.perf_counter() - t0
        out["images"] = args.protocol
        out["stats_wall"] = stats["wall"]
        out["units_probed"] = len(res.units)
        out["grid_positions"] = res.config["positions"]
    out.setdefault("maxrss_base", base)
    out.setdefault("maxrss", _memory(device))
    return out


def _memory(device, reset: bool = False) -> int:
    """Peak memory so far in bytes: the CUDA allocator's on a GPU (``reset``: what is allocated now, and the
    peak restarts from it), else the process's peak RSS."""
    import torch

    if device.type != "cuda":
        return _maxrss()
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return int(torch.cuda.max_memory_allocated(device))


def _maxrss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- parent side

def _run_child(args, workload: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--workload", workload, "--method", method,
           "--positions", str(args.positions), "--batch", str(args.batch),
           "--captum-units", str(args.captum_units), "--threads", str(args.threads), "--device", args.device,
           "--precision", args.precision, "--protocol", str(args.protocol), "--protocol-engine", args.protocol_engine]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{workload}/{method} failed:\n{res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def _table(workload: str, r: dict) -> str:
    f, i, c, d, e = r["full"], r["incremental"], r.get("captum"), r.get("forward"), r.get("protocol")
    model, layer, size = WORKLOADS[workload]
    C, h, w = i["shape"]
    cuda = args_global.device.startswith("cuda")
    where = (f"{i['device']}, {args_global.precision}" + (", TF32 off" if args_global.precision == "fp32" else "")
             + ", channels_last") if cuda else f"CPU, {i['threads']} torch threads, {args_global.precision}"
    memory = "peak CUDA alloc (growth)" if cuda else "peak RSS (growth)"
    lines = [
        f"== {model}, layer {layer} ({C}x{h}x{w} = {i['units']:,} units), {size} px image, "
        f"{PATCH}x{PATCH} noise patch, stride {STRIDE}: {i['positions']} of the grid's {i['grid']} positions, "
        f"batch {args_global.batch}, {where}",
        f"{'method':<38}{'wall':>12}{'images/s':>12}{memory:>30}{'speed-up of (b)':>18}",
    ]

    def row(name, m, extra=""):
        ips = m["images"] / m["wall"]
        mem = f"{_mib(m['maxrss'])} (+{_mib(m['maxrss'] - m['maxrss_base'])})"
        lines.append(f"{name:<38}{m['wall']:>11.2f}s{ips:>12.1f}{mem:>30}{extra:>18}")

    row("(a) full re-inference", f, f"{f['wall'] / i['wall']:.1f}x")
    row("(b) incremental", i, "1.0x")
    if c is not None:
        row("(c) captum Occlusion, all units *", c, f"{c['wall'] / i['wall']:,.0f}x")
    elif d is not None:  # captum is not installed: it cannot beat (d) per occluded image
        bound = {"images": i["positions"] * i["units"], "maxrss": 0, "maxrss_base": 0}
        bound["wall"] = bound["images"] * d["wall"] / d["images"]
        lines.append(f"{'(c) captum, all units: lower bound **':<38}{bound['wall']:>11.0f}s"
                     f"{bound['images'] / bound['wall']:>12.1f}{'-':>30}{bound['wall'] / i['wall']:>17,.0f}x")
    if d is not None:
        row("(d) plain forward, clean (ceiling)", d, f"{d['wall'] / i['wall']:.2f}x")
    speedup = f["wall"] / i["wall"]
    lines += [
        f"theoretical MAC ratio full/incremental: {i['ratio_subset']:.2f} on these positions "
        f"({i['ratio_grid']:.2f} on the whole grid); achieved {speedup:.2f}x = "
        f"{100 * speedup / i['ratio_subset']:.0f}% of it",
        f"incremental vs full, max |diff| / max |activation| on the first batch: {i['max_rel_err']:.1e}",
    ]
    if d is not None:
        lines.append(f"(a) runs at {100 * d['wall'] / f['wall']:.0f}% of (d)'s occluded images per second; "
                     f"(b) at {d['wall'] / i['wall']:.2f}x (d)")
    if c is not None:
        lines.append(
            f"* extrapolated: captum measured {c['wall_measured']:.1f}s for {c['captum_units']} unit(s) x "
            f"{c['images_measured'] // c['captum_units']} forward passes (window stride {c['captum_stride']}), "
            f"i.e. {1000 * c['wall_measured'] / c['images_measured']:.1f} ms per occluded image, scaled to "
            f"{c['units']:,} units x {i['positions']} positions = {c['images']:,} images")
    elif d is not None:
        lines.append(f"** captum is not installed here: one forward pass per neuron and occluded image, each at "
                     f"least as slow as (d)'s {1e3 * d['wall'] / d['images']:.3f} ms per image, for "
                     f"{i['units']:,} units x {i['positions']} positions")
    if e is not None:
        lines.append(f"(e) erf.probe_occlusion end to end ({args_global.protocol_engine} engine, all "
                     f"{e['units_probed']} units, {e['grid_positions']} positions, top-K, batch {args_global.batch}): "
                     f"{e['images']} images in {e['wall']:.2f}s = {e['images'] / e['wall']:.2f} images/s, "
                     f"of which {e['stats_wall']:.2f}s for the result's statistics (once per probe); "
                     f"{e['images'] / (e['wall'] - e['stats_wall']):.2f} images/s without them; "
                     f"peak {_mib(e['maxrss'])}")
    return "\n".join(lines)


def main(argv=None) -> None:
    global args_global
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--positions", type=int, default=64, help="occluder positions per workload (default 64; "
                                                              "0: the whole grid)")
    p.add_argument("--batch", type=int, default=16, help="positions per forward pass, all methods (default 16)")
    p.add_argument("--captum-units", type=int, default=1, help="neurons captum is timed on (default 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every method (default: torch's)")
    p.add_argument("--no-captum", action="store_true", help="skip (c)")
    p.add_argument("--no-forward", action="store_true", help="skip (d)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--protocol", type=int, default=0, help="also time the whole probe on N images (default 0: no)")
    p.add_argument("--protocol-engine", choices=("full", "incremental"), default="incremental")
    p.add_argument("--repeat", type=int, default=1, help="interleaved runs per method; the fastest is kept")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=(*METHODS, "protocol"), help=argparse.SUPPRESS)
    args = args_global = p.parse_args(argv)
    if args.positions < 0 or args.batch < 1 or args.captum_units < 1 or args.repeat < 1 or args.threads < 0 \
            or args.protocol < 0:
        p.error("--batch, --captum-units and --repeat must be >= 1; --positions and --protocol >= 0")
    if args.positions == 0:
        args.positions = 10 ** 9  # every position of the grid
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device} but torch.cuda.is_available() is False; expected a CUDA machine")
    workloads = list(WORKLOADS) if args.workload == "all" else [args.workload]
    methods = [m for m in METHODS if not (m == "captum" and args.no_captum) and not (m == "forward" and args.no_forward)]
    if "captum" in methods:
        try:
            import captum  # noqa: F401
        except ImportError:
            print("captum is not installed (pip install -e '.[bench]'); (c) is bounded from (d) instead",
                  file=sys.stderr)
            methods.remove("captum")
    if args.protocol:
        methods.append("protocol")
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
