"""erf-figures: paper-style figures from ERF result folders and training run folders."""
from __future__ import annotations

import click

from cli._common import FOLDER, PATH, command, friendly_errors
from lab import FORMATS, render

__all__ = ["main"]


@command("erf-figures")
@click.argument("inputs", nargs=-1, required=True, type=PATH)
@click.option("--out", required=True, type=FOLDER, help="Folder for the figure files.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True)
@friendly_errors
def main(inputs, out, fmt):
    """Make every figure the INPUTS allow: erf-probe result folders, erf-train run folders, or folders holding them."""
    for path in render(inputs, out, fmt):
        click.echo(str(path))


if __name__ == "__main__":
    main()
