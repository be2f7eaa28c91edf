"""What every command shares: option aliases, error handling, the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from fvds.errors import FvdsError

console = Console(stderr=True, soft_wrap=True)  # messages stay greppable: no hard wraps

F = TypeVar("F", bound=Callable[..., Any])

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Logs only, no progress bars.")]
DirArg = Annotated[Path, typer.Argument(help="A dataset folder made by `fvds build`.")]


def handle_errors(fn: F) -> F:
    """Turn fvds errors into a short message and exit code (2 bad input, 1 failed work)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FvdsError as e:
            label = "Bad input" if e.exit_code == 2 else "Error"
            console.print(f"[bold red]{label}:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def out(text: str) -> None:
    """Results go to stdout (pipe-able); progress and messages to stderr."""
    sys.stdout.write(text + "\n")


@contextmanager
def progress_bars(quiet: bool, *, label_width: int, unit: str = "") -> Iterator[Any]:
    """The long phases' rich progress bars on the console (stderr); ``quiet`` hides them."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn(f"{{task.description:<{label_width}}}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, disable=quiet,
                  transient=False) as progress:
        yield progress
