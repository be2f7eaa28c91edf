"""``fvds explore``: a static HTML explorer of a dataset folder or Hub repo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fvds.commands._common import QuietOpt, console, handle_errors, out

SourceArg = Annotated[str, typer.Argument(
    help="A dataset folder made by `fvds build`, or a Hub dataset ORG/NAME[@REVISION].",
    show_default=False)]
SiteOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Folder to write the site to (new, empty, or an earlier site).")]
NeighboursOpt = Annotated[int, typer.Option(
    "--neighbours", min=1, max=64, help="Nearest neighbours listed per unit and stage.")]


@handle_errors
def explore(source: SourceArg, out_dir: SiteOpt = Path("fvds-site"),
            neighbours: NeighboursOpt = 8, quiet: QuietOpt = False) -> None:
    """Write a static site: the UMAP map, a page per layer and per unit (open index.html)."""
    from fvds.explore import build_site

    report = build_site(source, out_dir, neighbours=neighbours, quiet=quiet,
                        log=lambda m: console.print(m, highlight=False))
    out(str(report.index))
