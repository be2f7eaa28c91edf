"""The ``fvds`` command line: composes the command modules under :mod:`fvds.commands`."""

from __future__ import annotations

from typing import Annotated

import typer

from fvds import __version__
from fvds.commands import build as build_cmd
from fvds.commands import explore as explore_cmd
from fvds.commands import finetune as finetune_cmd
from fvds.commands import push as push_cmd
from fvds.commands import scale as scale_cmd

app = typer.Typer(
    name="fvds",
    help="Build and publish datasets of feature visualizations of a CNN across training stages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fvds {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """fvds: feature-visualization datasets."""


app.command("build")(build_cmd.build)
app.command("plan")(build_cmd.plan)
app.command("verify")(build_cmd.verify)
app.command("finetune")(finetune_cmd.finetune)
app.command("push")(push_cmd.push)
app.command("assemble")(scale_cmd.assemble)
app.command("status")(scale_cmd.status)
app.command("explore")(explore_cmd.explore)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
