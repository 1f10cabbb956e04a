"""Theoretical RFs of every torchvision classification model (and a few timm ones) at its default input size.

For each model: build it on the meta device (a real CPU build where meta fails),
run :func:`erf.rf.receptive_fields` over every layer, and print one row: the
number of layers analysed, how many are exact, how many global, the first
global layer and the op that made it global, the largest TRF of a local layer (a
box that outgrows the image says the analysis lost precision); or the one-line refusal. No traceback is ever expected; a row with ``ERROR`` is a bug.

    python bench/rf_all_models.py                 # every torchvision classification model
    python bench/rf_all_models.py --family swin   # names containing "swin"
    python bench/rf_all_models.py --timm          # also the timm models the tests use
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from erf.models import load_model
from erf.rf import receptive_fields

TIMM = ["timm:vit_tiny_patch16_224", "timm:deit_tiny_distilled_patch16_224", "timm:swin_tiny_patch4_window7_224",
        "timm:convnext_atto", "timm:resnet18"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="", help="only models whose name contains this")
    parser.add_argument("--timm", action="store_true", help="also the timm models of the tests")
    args = parser.parse_args()
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    names = [n for n in names + (TIMM if args.timm else []) if args.family in n]
    bugs = 0
    print(f"{'model':<36} {'size':>7} {'layers':>6} {'exact':>5} {'global':>6} {'maxTRF':>6}  "
          f"first global (op) / refusal")
    for name in names:
        t0 = time.perf_counter()
        try:
            lm = load_model(name, device="meta")
            size = lm.input_size or (224, 224)
            with torch.no_grad():
                rfs = receptive_fields(lm.model, size)
            glob = [r for r in rfs.values() if r.is_global]
            first = f"{glob[0].name} ({glob[0].global_from})" if glob else "-"
            widest = max((max(r.rf) for r in rfs.values() if not r.is_global), default=0)
            print(f"{name:<36} {size[0]:>7} {len(rfs):>6} {sum(r.exact for r in rfs.values()):>5} {len(glob):>6} "
                  f"{widest:>6g}  {first}  [{time.perf_counter() - t0:.1f}s]")
        except ValueError as exc:
            print(f"{name:<36} {'':>7} {'':>6} {'':>5} {'':>6} {'':>6}  REFUSED: {exc}")
        except Exception:  # a traceback is a bug of the toolkit
            bugs += 1
            print(f"{name:<36} ERROR\n{traceback.format_exc()}")
        sys.stdout.flush()
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
