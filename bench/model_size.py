"""Parameter count and CPU forward time of every full-size ParseNet / FCN variant, side by side.

Also times a training step (forward + backward) of the compact LargeFOV+BN model the
demo trains. Run from the repository root::

    .venv/bin/python bench/model_size.py [--size 224] [--repeat 5] [--threads N]

Times are the median of ``--repeat`` runs after one warm-up, batch 1, eval mode,
``torch.inference_mode``; they depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from parsenet.config import ParseNetConfig
from parsenet.model import build_model, parameter_groups


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for the shape
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width in px")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size}x{args.size}")
    print(f"{'variant':34s} {'params':>12s} {'head':>8s} {'forward':>10s}")
    x = torch.randn(1, 3, args.size, args.size)
    for backbone in ("vgg16-fcn32s", "vgg16-largefov"):
        for context in ("none", "global"):
            model = build_model(ParseNetConfig(backbone=backbone, context=context)).eval()
            n = sum(p.numel() for p in model.parameters())
            head = sum(p.numel() for p in parameter_groups(model)["head"])
            with torch.inference_mode():
                sec = _median_seconds(lambda: model(x), args.repeat)
            print(f"{backbone + ' context=' + context:34s} {n:12,d} {head:8,d} {sec * 1e3:8.0f} ms")
            del model

    cfg = ParseNetConfig(width=1 / 8, batch_norm=True, num_classes=11)
    model = build_model(cfg).train()
    xb, yb = torch.randn(16, 3, 96, 96), torch.randint(0, cfg.num_classes, (16, 96, 96))

    def step():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xb)["out"], yb).backward()

    n = sum(p.numel() for p in model.parameters())
    sec = _median_seconds(step, args.repeat)
    print(f"compact largefov+BN width 1/8: {n:,d} params, train step (fwd+bwd) batch 16 at 96 px: {sec * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
