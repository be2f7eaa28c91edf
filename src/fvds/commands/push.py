"""`fvds push`: publish a dataset folder as one commit on the Hub, tagged v<version>."""

from __future__ import annotations

from typing import Annotated

import typer

from fvds.commands._common import DirArg, QuietOpt, console, handle_errors, out
from fvds.publish import PushResult, push_dataset

RepoOpt = Annotated[str, typer.Option("--repo", help="Dataset repo on the Hub, ORG/NAME; "
                                                     "created if it does not exist.")]
VersionOpt = Annotated[str, typer.Option(
    "--version", help="Semantic version X.Y.Z the folder was built as; tagged vX.Y.Z.")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", show_default=False,
    help="Hub token with write access. Default: HF_TOKEN, else the stored login "
         "(`hf auth login`).")]
PrivateOpt = Annotated[bool, typer.Option(
    "--private", help="Create the repo private (an existing repo keeps its visibility).")]
RevisionOpt = Annotated[str, typer.Option(
    "--revision", help="Branch to commit to; created from main if missing.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Check the folder and list what would be uploaded; contact no one.")]


@handle_errors
def push(
    folder: DirArg,
    repo: RepoOpt,
    version: VersionOpt,
    token: TokenOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = "main",
    dry_run: DryRunOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Publish a dataset folder made by `fvds build` as a versioned Hugging Face dataset."""
    try:
        result = push_dataset(folder, repo, version, token=token, private=private,
                              revision=revision, dry_run=dry_run, progress=not quiet)
    except KeyboardInterrupt:
        # The tag is the last write: whatever was interrupted, the version is not published.
        console.print(f"Push interrupted: v{version} is not tagged on {repo}; rerun the same "
                      "command to finish it.")
        raise
    _report(result)


def _report(result: PushResult) -> None:
    if result.dry_run:
        for f in result.files:
            out(f"{_size(f.size):>10}  {f.path}")
        out(f"{_size(result.total_bytes):>10}  total, {len(result.files)} files "
            f"(dry run: would commit to {result.repo_id}@{result.revision} and tag "
            f"{result.tag}; nothing was uploaded)")
        return
    if result.created_repo:
        console.print(f"Created dataset repo {result.repo_id}.")
    if not result.changed:
        console.print(f"{result.repo_id}@{result.revision} already held these files; tagged "
                      "its head.")
    out(f"Published {result.repo_id} {result.tag} ({len(result.files)} files, "
        f"{_size(result.total_bytes)}).")
    out(f"Commit: {result.commit_url}")
    out(f"Load it: {result.load_line}")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
