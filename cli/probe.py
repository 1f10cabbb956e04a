"""``erf-probe``: empirical receptive fields of a model's layers, by occlusion (Zhou et al. 2015) or gradient (Luo et al. 2016).

Example::

    erf-probe vgg16 --layer features.29 --images photos/ --resize 224,224 --top-k 4 --out runs/probe-vgg16
    erf-probe runs/parsenet/best.pt --layer fc7 --dataset scenes --split val --max-images 16 \\
        --method both --neuron 0,center --out runs/probe-parsenet

Each (method, layer) is written to ``OUT/<method>-<layer>/`` (``result.npz`` and
``summary.json``, see :class:`erf.result.ERFResult`), and the table to
``OUT/table.json``. An interrupted run continues with ``--resume``.

Under torchrun the images are sharded across the processes and rank 0 merges
the partial accumulators and alone writes; the result equals a single-process
run's (:mod:`erf.distributed`)::

    torchrun --nproc-per-node 4 $(which erf-probe) vgg16 --layer features.29 --images photos/ \
        --resize 224 --out runs/probe-vgg16

Each rank keeps its own resume state (``state.rank{r}of{w}.npz``), so
``--resume`` continues with the same number of processes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from cli._common import friendly_errors
from cli.rf import list_layers_option
from erf.distributed import join_process_group, rank_state_path
from erf.gradient import probe_gradient
from erf.images import images_from_dataset, load_images
from erf.graph import layer_channels
from erf.occlusion import ENGINES, NOISE_KINDS, PRECISIONS, probe_occlusion, select_units
from erf.result import ERFResult
from erf.util import atomic_write

__all__ = ["probe_command", "main"]


def _ints(text: str | None, what: str, count: tuple[int, ...]) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{what} {text!r} is not a comma list of integers") from None
    if len(values) not in count:
        raise click.BadParameter(f"{what} {text!r} has {len(values)} numbers; expected {' or '.join(map(str, count))}")
    return values


def _neuron(text: str | None, method: str):
    """``C,Y,X`` -> (c, y, x); ``C,center`` -> (c, "center"); ``center`` -> all channels at the centre (gradient)."""
    if text is None:
        return None
    parts = [p.strip().lower() for p in text.split(",")]
    if parts == ["center"]:
        if method != "gradient":
            raise click.BadParameter("'center' alone names no channel for occlusion; expected C,center or C,Y,X",
                                     param_hint="--neuron")
        return "center"
    if len(parts) == 2 and parts[1] == "center" and parts[0].isdigit():
        return int(parts[0]), "center"
    values = _ints(text, "--neuron", (3,))
    return values


def _print_table(rows: list[dict]) -> None:
    def fmt(v, spec):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    header = f"{'layer':<18} {'method':<10} {'mode':<8} {'units':>5} {'TRF side':>9} {'ERF side':>15} " \
             f"{'ERF/TRF':>8} {'ERF/image':>9}"
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        side = f"{fmt(r['erf_side'], '.1f')} ± {fmt(r['erf_side_std'], '.1f')}"
        click.echo(f"{r['layer']:<18} {r['method']:<10} {r['mode']:<8} {r['units']:>5} {fmt(r['trf_side'], '.1f'):>9} "
                   f"{side:>15} {fmt(r['erf_over_trf'], '.3f'):>8} {fmt(r['erf_over_image'], '.4f'):>9}")
    click.echo("sides in input pixels: TRF is the theoretical RF, ERF the side of the square of equal area to the "
               "region above the threshold, mean ± std over units; ERF/image is that area over the image area")


@list_layers_option
@click.command("erf-probe", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("model_spec", metavar="MODEL")
@click.option("--weights", help="torchvision weights name or a local state-dict file (torchvision names and builders)")
@click.option("--layer", "layers", multiple=True, required=True, help="layer to probe (module path or fx node); repeatable")
@click.option("--images", "images_dir", type=click.Path(), help="folder of PNG/JPEG images")
@click.option("--dataset", help="dataset spec instead of --images: scenes, camvid:PATH, voc:PATH, ...")
@click.option("--split", default="val", help="dataset split for --dataset")
@click.option("--max-images", type=int, help="probe only the first N images")
@click.option("--resize", help="resize every image to H,W (or S for S,S); without it, sizes must agree")
@click.option("--on-bad", type=click.Choice(["skip", "error"]), default="skip",
              help="a non-image file in the images folder: skip it with a warning, or stop")
@click.option("--method", type=click.Choice(["occlusion", "gradient", "both"]), default="occlusion")
@click.option("--patch", type=int, default=11, help="occluder side in pixels (Zhou et al. 2015: 11)")
@click.option("--stride", type=int, default=3, help="occluder grid step (Zhou et al. 2015: 3)")
@click.option("--noise", type=click.Choice(NOISE_KINDS), default="uniform", help="occluder content")
@click.option("--top-k", type=int, default=10, help="images per unit (occlusion)")
@click.option("--units", default="all", help="channels: all, a list like 0,5,9, or N-random")
@click.option("--neuron", help="one neuron on every image: C,Y,X or C,center; 'center' (gradient): all channels there")
@click.option("--noise-inputs", type=int, default=0, help="gradient: also average over this many N(0,1) images")
@click.option("--protocol", type=click.Choice(["luo", "replknet"]), default="luo",
              help="gradient: Luo et al. 2016, or RepLKNet's (ReLU'd centre, positive gradient, area-ratio table)")
@click.option("--protocol-size", type=int, default=1024, help="replknet: side the images are resized to (paper: 1024)")
@click.option("--threshold", type=float, default=0.5, help="ERF size: pixels above this fraction of the max")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", help="occlusion forward passes")
@click.option("--batch-size", type=int, default=32, help="occluded copies (or gradient inputs) per pass")
@click.option("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
              help="occlusion forward passes; bf16 reports its drift from fp32 (gradient runs in fp32)")
@click.option("--seed", type=int, default=0, help="occluder noise, N-random units, noise inputs")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--overwrite", is_flag=True, help="replace the results in an existing output folder")
@click.option("--resume", is_flag=True, help="continue an interrupted run in the output folder")
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
@friendly_errors
def probe_command(model_spec, weights, layers, images_dir, dataset, split, max_images, resize, on_bad, method, patch,
                  stride, noise, top_k, units, neuron, noise_inputs, threshold, engine, batch_size, device,
                  precision, seed, out_dir, overwrite, resume, progress, protocol="luo", protocol_size=1024):
    """Probe the empirical receptive fields of MODEL's layers and print TRF against ERF per layer.

    MODEL is a torchvision model name (random init unless --weights), module:function
    returning an nn.Module, or a checkpoint written by erf-train.
    """
    shard = join_process_group()  # a single process outside torchrun
    try:
        _probe(shard, model_spec, weights, layers, images_dir, dataset, split, max_images, resize, on_bad, method,
               patch, stride, noise, top_k, units, neuron, noise_inputs, threshold, engine, batch_size, device,
               precision, seed, out_dir, overwrite, resume, progress, protocol=(protocol, protocol_size))
    finally:
        shard.leave()


def _probe(shard, model_spec, weights, layers, images_dir, dataset, split, max_images, resize, on_bad, method,
           patch, stride, noise, top_k, units, neuron, noise_inputs, threshold, engine, batch_size, device,
           precision, seed, out_dir, overwrite, resume, progress, protocol=("luo", 1024)):
    from erf.models import load_model

    out = Path(out_dir)
    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other; pick one")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass --overwrite to replace "
                              "its results or --resume to continue")
    if (images_dir is None) == (dataset is None):
        raise click.UsageError("give exactly one of --images DIR and --dataset SPEC")
    size = _ints(resize, "--resize", (1, 2))
    size = None if size is None else (size * 2 if len(size) == 1 else size)
    methods = ["occlusion", "gradient"] if method == "both" else [method]
    shard.barrier()  # every rank has checked the output folder before any rank writes to it
    if shard.world > 1 and device.startswith("cuda"):
        import torch

        device = f"cuda:{shard.local_rank}"
        torch.cuda.set_device(device)

    loaded = load_model(model_spec, weights=weights)
    if images_dir is not None:
        images = load_images(images_dir, resize=size, mean=loaded.mean, std=loaded.std, on_bad=on_bad)
        if max_images is not None:
            from erf.images import ImageSet

            if max_images < 1:
                raise ValueError(f"--max-images {max_images}; expected a positive number")
            images = ImageSet(images.images[:max_images], images.names[:max_images], images.mean, images.std)
    else:
        from parsenet.data import build_dataset

        images = images_from_dataset(build_dataset(dataset, split, train=False), limit=max_images, resize=size,
                                     prefix=split)
    model = loaded.model.to(device)
    for layer in layers:  # every layer's name and --units, before the first (long) probe starts
        select_units(units, layer_channels(model, layer, images.images[:1].to(device)), seed=seed)

    rows = []
    for layer in layers:
        for m in methods:
            target = out / f"{m}-{layer}"
            if resume:
                try:
                    done = ERFResult.load(target)
                except (ValueError, FileNotFoundError):
                    done = None
                if done is not None:
                    click.echo(f"{m} {layer}: already done in {target}, kept", err=True)
                    rows.append({**done.table_row(), "method": m, "mode": done.mode})
                    continue
            state = target / "state.npz"
            if overwrite and shard.main:  # every rank's state, from any number of processes
                for old in [state, *target.glob("state.rank*of*.npz")]:
                    old.unlink(missing_ok=True)
            shard.barrier()
            target.mkdir(parents=True, exist_ok=True)
            chosen = _neuron(neuron, m)
            if m == "occlusion":
                result = probe_occlusion(
                    model, layer, images, patch=patch, stride=stride, noise=noise, seed=seed,
                    top_k=min(top_k, len(images)) if chosen is not None else top_k, units=units, neuron=chosen,
                    threshold=threshold, batch_size=batch_size, engine=engine, device=device,
                    model_name=loaded.name, state_path=state, progress=progress and shard.main,
                    precision=precision, rank=shard.rank, world_size=shard.world)
            else:
                result = probe_gradient(
                    model, layer, images, position="center" if chosen in (None, "center") else None,
                    neuron=None if chosen in (None, "center") else chosen, noise_inputs=noise_inputs, seed=seed,
                    threshold=threshold, batch_size=batch_size, device=device, model_name=loaded.name,
                    rank=shard.rank, world_size=shard.world, protocol=protocol[0],
                    **({"input_size": protocol[1]} if protocol[0] == "replknet" else {}))
            if shard.main:  # only rank 0 holds the merged result
                result.save(target)
                if result.config.get("bf16_drift") is not None:
                    click.echo(f"{m} {layer}: bf16 drift from fp32 {result.config['bf16_drift']:.2e} "
                               "(max |change| difference over max |change|, first batch of the first image)",
                               err=True)
                rows.append({**result.table_row(), "method": m, "mode": result.mode})
                if "replknet" in result.config:  # RepLKNet's high-contribution area ratios
                    from erf.replknet import format_area_ratios

                    click.echo(f"{layer}: RepLKNet area ratios at {protocol[1]} px\n"
                               f"{format_area_ratios(result.config['replknet']['area_ratios'])}")
            shard.barrier()  # the result is on disk before any rank drops its accumulators
            rank_state_path(state, shard.rank, shard.world).unlink(missing_ok=True)
    if not shard.main:
        return
    with atomic_write(out / "table.json", "w") as f:
        json.dump({"model": loaded.name, "images": len(images), "rows": rows}, f, indent=1)
    _print_table(rows)
    click.echo(f"results in {out}")


main = probe_command

if __name__ == "__main__":  # pragma: no cover
    main()
