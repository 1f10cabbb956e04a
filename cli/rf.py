"""``erf-rf``: the theoretical receptive field of every layer of a model, as a table or JSON.

    erf-rf vgg16 --input-size 224 --json
    erf-rf resnet50 --layer layer3 --layer layer4
    erf-rf mypkg.nets:build --input-size 224x320
    erf-rf timm:vit_tiny_patch16_224 --list-layers
"""
from __future__ import annotations

import json
import re

import click

from cli._common import command, friendly_errors
from erf.graph import layer_names
from erf.models import load_model
from erf.rf import LayerRF, receptive_fields

__all__ = ["main", "parse_input_size", "format_table", "to_json", "list_layers_option"]

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*$")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"224x320"`` -> (224, 320) as (H, W).

    Example:
        >>> parse_input_size("224x320")
        (224, 320)
    """
    m = _SIZE.match(text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"malformed --input-size {text!r}; expected a positive integer like 224 or HxW like 224x320")
    h = int(m.group(1))
    return h, int(m.group(2)) if m.group(2) is not None else h


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _sides(p: tuple[float, float], sep: str = "x") -> str:
    """An (h, w) pair as text: one number when both agree (``11``), else ``11x7``."""
    return _num(p[0]) if p[0] == p[1] else f"{_num(p[0])}{sep}{_num(p[1])}"


def format_table(rfs: dict[str, LayerRF]) -> str:
    """One row per layer: name, output size, TRF, jump, centre of unit (0, 0), global flag."""
    head = ("layer", "size", "TRF", "jump", "centre(0,0)", "global")
    rows = [(name, f"{r.size[0]}x{r.size[1]}" + ("" if r.layout == "NCHW" else f" ({r.layout})"),
             _sides(r.rf) + ("" if r.exact else "*"), _sides(r.jump),
             f"({_num(r.start[0])}, {_num(r.start[1])})", "yes" if r.is_global else "")
            for name, r in rfs.items()]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *rows)]
    if any(not r.exact for r in rfs.values()):
        lines.append("* after a resampling layer or windowed attention: the smallest box that contains every unit's support")
    origins = sorted({r.global_from for r in rfs.values() if r.global_from})
    if origins:
        lines.append(f"global from: {'; '.join(origins)}")
    return "\n".join(lines)


def to_json(model: str, input_size: tuple[int, int], rfs: dict[str, LayerRF]) -> str:
    """JSON with the input size and one object per layer (the fields of :class:`~erf.rf.LayerRF`)."""
    layers = [{"name": name, "size": list(r.size), "rf": list(r.rf), "jump": list(r.jump), "start": list(r.start),
               "is_global": r.is_global, "exact": r.exact, "global_from": r.global_from, "layout": r.layout}
              for name, r in rfs.items()]
    return json.dumps({"model": model, "input_size": list(input_size), "layers": layers}, indent=1)


def list_layers_option(cmd: click.Command) -> click.Command:
    """Give a command taking MODEL a ``--list-layers`` flag: print every name ``--layer`` accepts and exit.

    The flag is handled before the command's own checks, so no other option (``--layer``,
    ``--images``) is needed with it.
    """
    cmd.params.append(click.Option(["--list-layers"], is_flag=True, expose_value=False,
                                   help="print the layer names --layer accepts (module paths, then fx node names) and exit"))
    parse = cmd.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        if "--list-layers" not in args or any(a in ("-h", "--help") for a in args):
            return parse(ctx, args)
        opts, _, _ = cmd.make_parser(ctx).parse_args(args=[a for a in args if a != "--list-layers"])
        spec = opts.get("model", opts.get("model_spec"))
        if spec is None:
            raise click.UsageError("--list-layers lists the layers of MODEL; give MODEL", ctx=ctx)
        try:
            names = layer_names(load_model(spec, device="meta").model)  # names do not depend on weights
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        click.echo("\n".join(names))
        ctx.exit(0)

    cmd.parse_args = parse_args
    return cmd


@list_layers_option
@command("erf-rf")
@click.argument("model")
@click.option("--input-size", "input_size", default=None, metavar="N|HxW",
              help="input size in pixels [default: the model's natural size, else 224]")
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="report only this layer (module path or fx node name); repeatable")
@click.option("--weights", default=None,
              help="torchvision weights name (IMAGENET1K_V1, DEFAULT), pretrained (timm), or a local state-dict file; TRFs do not depend on it")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@friendly_errors
def main(model: str, input_size: str | None, layers: tuple[str, ...], weights: str | None, as_json: bool) -> None:
    """Theoretical receptive field, jump and centre of every layer of MODEL.

    MODEL is a torchvision classification model name (vgg16, resnet50, ...),
    timm:NAME (pip install 'erf-toolkit[timm]'), a 'module.path:function' builder,
    or a training checkpoint (.pt).
    """
    size = parse_input_size(input_size) if input_size is not None else None
    # weights do not change a TRF: without them, build on the meta device (no memory, no init time)
    loaded = load_model(model, weights=weights, device="meta" if weights is None else None)
    size = size or loaded.input_size or (224, 224)
    rfs = receptive_fields(loaded.model, size, list(layers) or None)
    click.echo(to_json(loaded.name, size, rfs) if as_json else format_table(rfs))


if __name__ == "__main__":
    main()
