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

import click

from cli._common import BATCH_SIZE, FOLDER, PATH, check_resume_flags, command, friendly_errors
from cli.rf import list_layers_option
from erf.distributed import join_process_group
from erf.images import MAX_PIXELS, images_from_dataset, load_images
from erf.models import load_model
from erf.occlusion import ENGINES, NOISE_KINDS, PRECISIONS
from erf.runner import PROTOCOLS, ProbeSettings, format_table, run_probe

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
    return _ints(text, "--neuron", (3,))


@list_layers_option
@command("erf-probe", show_default=True)
@click.argument("model_spec", metavar="MODEL")
@click.option("--weights", help="torchvision weights name or a local state-dict file (torchvision names and builders)")
@click.option("--layer", "layers", multiple=True, required=True, help="layer to probe (module path or fx node); repeatable")
@click.option("--images", "images_dir", type=PATH, help="folder of PNG/JPEG images")
@click.option("--dataset", help="dataset spec instead of --images: scenes, camvid:PATH, voc:PATH, ...")
@click.option("--split", default="val", help="dataset split for --dataset")
@click.option("--max-images", type=click.IntRange(min=1), help="probe only the first N images")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS,
              help="refuse larger images before decoding them")
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
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="luo",
              help="gradient: Luo et al. 2016, or RepLKNet's (ReLU'd centre, positive gradient, area-ratio table)")
@click.option("--protocol-size", type=int, default=1024, help="replknet: side the images are resized to (paper: 1024)")
@click.option("--threshold", type=float, default=0.5, help="ERF size: pixels above this fraction of the max")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", help="occlusion forward passes")
@click.option("--batch-size", type=BATCH_SIZE, default=32,
              help="occluded copies (or gradient inputs) per pass; auto: the largest that fits the device's memory")
@click.option("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
              help="occlusion forward passes; bf16 reports its drift from fp32 (gradient runs in fp32)")
@click.option("--seed", type=int, default=0, help="occluder noise, N-random units, noise inputs")
@click.option("--out", "out_dir", required=True, type=FOLDER, help="output folder")
@click.option("--overwrite", is_flag=True, help="replace the results in an existing output folder")
@click.option("--resume", is_flag=True, help="continue an interrupted run in the output folder")
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
@friendly_errors
def probe_command(model_spec, weights, layers, images_dir, dataset, split, max_images, max_pixels, resize, on_bad,
                  method, out_dir, overwrite, resume, progress, **options):
    """Probe the empirical receptive fields of MODEL's layers and print TRF against ERF per layer.

    MODEL is a torchvision model name (random init unless --weights), module:function
    returning an nn.Module, or a checkpoint written by erf-train.
    """
    check_resume_flags(overwrite, resume)
    if (images_dir is None) == (dataset is None):
        raise click.UsageError("give exactly one of --images DIR and --dataset SPEC")
    size = _ints(resize, "--resize", (1, 2))
    size = None if size is None else (size * 2 if len(size) == 1 else size)
    settings = ProbeSettings(**{**options, "neuron": _neuron(options["neuron"], method)})
    loaded = load_model(model_spec, weights=weights)
    if images_dir is not None:
        images = load_images(images_dir, resize=size, mean=loaded.mean, std=loaded.std, on_bad=on_bad,
                             limit=max_images, max_pixels=max_pixels)
    else:
        from parsenet.data import build_dataset

        images = images_from_dataset(build_dataset(dataset, split, train=False), limit=max_images, resize=size,
                                     prefix=split)
    shard = join_process_group()  # a single process outside torchrun
    try:
        rows = run_probe(loaded.model, images, layers, out=out_dir, settings=settings, model_name=loaded.name,
                         methods=["occlusion", "gradient"] if method == "both" else [method], overwrite=overwrite,
                         resume=resume, progress=progress, shard=shard, log=lambda m: click.echo(m, err=True))
    finally:
        shard.leave()
    if shard.main:
        click.echo(format_table(rows))
        click.echo(f"results in {out_dir}")


main = probe_command

if __name__ == "__main__":  # pragma: no cover
    main()
