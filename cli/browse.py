"""erf-browse: a static site to browse every probed unit (overview, unit pages, side by side)."""
from __future__ import annotations

import click

from cli._common import friendly_errors
from lab.browse import BrowseConfig, write_browser

__all__ = ["main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder for the site (open OUT/index.html).")
@click.option("--tile", default=BrowseConfig.tile, show_default=True, help="Side of each top-K thumbnail in pixels.")
@click.option("--map-side", default=BrowseConfig.map_side, show_default=True,
              help="Side of each unit's ERF map picture in pixels.")
@click.option("--far-fraction", default=BrowseConfig.far_fraction, show_default=True,
              help="Far-field radius as a fraction of the shorter image side.")
@friendly_errors
def main(results, out, tile, map_side, far_fraction):
    """Write an ERF browser for RESULTS: erf-probe result folders, or folders holding them (erf-demo's probe/)."""
    cfg = BrowseConfig(tile=tile, map_side=map_side, far_fraction=far_fraction)
    site = write_browser(results, out, cfg=cfg, log=lambda m: click.echo(m, err=True))
    click.echo(str(site / "index.html"))


if __name__ == "__main__":
    main()
