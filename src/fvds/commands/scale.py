"""``fvds assemble`` and ``fvds status``: the two ends of a build spread over many processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fvds.commands._common import QuietOpt, console, handle_errors, out

OutArg = Annotated[Path, typer.Argument(help="The --out folder of an `fvds build`.")]


@handle_errors
def assemble(
    folder: OutArg,
    device: Annotated[str | None, typer.Option(
        "--device", help="Device for the embedding (default: the build's render.device).",
        show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Embed, project and write the dataset once every job is rendered (after sharded builds);
    refuses, listing them, while jobs are missing."""
    from fvds.builder.pipeline import assemble_work

    report = assemble_work(folder, device=device, quiet=quiet,
                           log=lambda m: console.print(m, highlight=False))
    out(str(report.out))


@handle_errors
def status(
    folder: OutArg,
    tracebacks: Annotated[bool, typer.Option(
        "--tracebacks", help="Print each failed job's full traceback.")] = False,
) -> None:
    """Jobs done per stage, failed jobs and why, time left at the measured rate."""
    from fvds.builder.status import work_status

    st = work_status(folder)
    out(f"{st.out}")
    out(f"  {'stage':<16}{'jobs':>12}{'units':>14}")
    for s in st.stages:
        out(f"  {s.name:<16}{f'{s.jobs_done}/{s.jobs}':>12}{f'{s.units_done}/{s.units}':>14}")
    pct = 100 * st.jobs_done / st.jobs if st.jobs else 100.0
    out(f"  {'total':<16}{f'{st.jobs_done}/{st.jobs}':>12}   ({pct:.0f}% of jobs)")
    if st.failed:
        out(f"failed jobs: {len(st.failed)} (a rerun retries them)")
        for f in st.failed:
            out(f"  {f['job']}: {f['error']} [{f['where']}, {f['time']}]")
            if tracebacks and f.get("traceback"):
                out("    " + f["traceback"].rstrip().replace("\n", "\n    "))
    if st.jobs_done < st.jobs:
        out("time left: " + _time_left(st))
    if st.assembled:
        out("dataset: assembled")
    elif st.jobs_done == st.jobs:
        out(f"dataset: not assembled; run `fvds assemble {st.out}`")


def _time_left(st) -> str:
    from fvds.builder.status import WINDOW_S
    from fvds.commands.build import _duration

    if st.work_left_s is None:
        return "unknown until a job is done"
    work = f"{_duration(st.work_left_s)} of device time"
    window = f"the last {WINDOW_S / 60:.0f} min"
    if st.eta_s is None:
        return f"{work}; no job finished in {window}, so no ETA (is a build running?)"
    return (f"{work}; ~{st.busy_workers:.1f} workers busy over {window} -> "
            f"ETA {_duration(st.eta_s)}")

