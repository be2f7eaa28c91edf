"""``fvds push``: publish a dataset folder as one commit on a Hugging Face dataset repo, tagged
``v<version>``, so that anyone can ``load_dataset("ORG/NAME", "all", revision="v1.0.0")``.

The order of operations is what makes a push safe to interrupt and to rerun:

1. everything local first (version, ``fvds verify``, the card's version): no network yet;
2. the repo's refs: a tag that exists refuses the push before anything is written;
3. create the repo (or branch) if missing, then one commit with every file of the folder (and
   deletions of files the branch has but the folder does not);
4. tag *that commit's sha* (not the branch, which may have moved).

The tag is the last write, so an interrupted push never leaves a tag; a rerun finds the files
already committed (the Hub reports their oids), makes no new commit, and tags the branch head.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fvds.errors import BadInput, FvdsError
from fvds.schemas.manifest import (
    MANIFEST,
    dataset_files,
    manifest_bytes,
    read_manifest,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, HfApi

SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")  # as fvds.config accepts
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
KEEP_ON_HUB = {".gitattributes"}  # the Hub's own file in every repo: never deleted by a push
CARD = "README.md"


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative, POSIX
    size: int


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    version: str
    tag: str
    revision: str  # the branch the commit went to
    config: str  # the card's default config, for the load_dataset line
    files: tuple[LocalFile, ...]
    dry_run: bool = False
    commit_sha: str | None = None  # None for a dry run
    commit_url: str | None = None
    created_repo: bool = False
    changed: bool = True  # False: the branch already held these files (a rerun)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def load_line(self) -> str:
        return (f'load_dataset("{self.repo_id}", "{self.config}", '
                f'revision="{self.tag}")')


@dataclass
class _Prepared:
    folder: Path
    name: str
    config: str
    files: list[LocalFile]
    overrides: dict[str, bytes] = field(default_factory=dict)  # path -> content to push instead


def version_tag(version: str) -> str:
    """``v1.2.3`` for ``1.2.3``; anything not X.Y.Z is bad input."""
    if not SEMVER.fullmatch(version):
        raise BadInput(f"--version {version!r} is not a semantic version: give X.Y.Z with "
                       "non-negative integers and no leading zeros or 'v' (e.g. 1.0.0); "
                       "the tag is then v1.0.0.")
    return f"v{version}"


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise BadInput(f"--repo {repo_id!r} is not a Hub repo id: give ORG/NAME (letters, "
                       "digits, '-', '_', '.'), e.g. my-lab/fvds-seresnext50.")


def check_branch(revision: str) -> None:
    # A tag-like or fully qualified name would make a branch that reads as a published version.
    if not revision or revision.startswith("refs/") or re.fullmatch(r"v?" + SEMVER.pattern,
                                                                      revision):
        raise BadInput(f"--revision {revision!r} is not a branch name: give a branch such as "
                       "main or dev (the version tag is made from --version).")


def prepare(folder: Path, repo_id: str, version: str) -> _Prepared:
    """All the checks that need no network, and the exact files to push."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"dataset folder {str(folder)!r} does not exist: give the --out folder "
                       "of `fvds build`.")
    from fvds.verify import verify_dataset

    problems = verify_dataset(folder)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:10])
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise BadInput(f"{folder} fails `fvds verify` ({len(problems)} problem(s)); nothing was "
                       f"pushed. Fix or rebuild it first:\n{shown}{more}")
    manifest = read_manifest(folder)
    dataset = manifest.get("config", {}).get("dataset", {})
    recorded = dataset.get("version")
    if recorded != version:
        raise BadInput(
            f"--version {version} differs from the version the folder was built as "
            f"({recorded}): the card and {MANIFEST} must state the version they are published "
            f"under. Rebuild with `fvds build ... --out {folder} --dataset-version {version}` "
            "(it reuses the rendered parts and only re-assembles), or push --version "
            f"{recorded}.")
    card = (folder / CARD).read_text(encoding="utf-8")
    if not re.search(rf"\bversion\W+{re.escape(version)}\b", card, flags=re.IGNORECASE):
        raise BadInput(f"{folder / CARD} does not state version {version}; rebuild the folder "
                       f"with `fvds build ... --dataset-version {version}`.")
    name = dataset.get("name") or folder.name
    rel = [*dataset_files(folder), MANIFEST]
    files = [LocalFile(p, (folder / p).stat().st_size) for p in sorted(rel)]
    prepared = _Prepared(folder, name, _default_config(card), files)
    _name_repo_in_card(prepared, card, manifest, repo_id)
    return prepared


def _default_config(card: str) -> str:
    from huggingface_hub import DatasetCard

    configs = DatasetCard(card).data.to_dict().get("configs") or []
    names = [c.get("config_name") for c in configs]
    default = next((c.get("config_name") for c in configs if c.get("default")), None)
    return default or ("all" if "all" in names else (names[0] if names else "default"))


def _name_repo_in_card(prep: _Prepared, card: str, manifest: dict, repo_id: str) -> None:
    """The card is rendered before anyone knows the repo, so its ``load_dataset`` lines say
    ``ORG/<name>``; the pushed card names the real repo, and the pushed ``fvds.json`` gets the
    matching checksum, so the commit verifies as a whole. The local folder is left untouched."""
    placeholder = f'"ORG/{prep.name}"'
    if placeholder not in card or f'"{repo_id}"' == placeholder:
        return
    import hashlib

    new_card = card.replace(placeholder, f'"{repo_id}"').encode("utf-8")
    entry = manifest.get("files", {}).get(CARD)
    if entry is None:  # not a manifest this code understands: push the folder as it is
        return
    entry.update(sha256=hashlib.sha256(new_card).hexdigest(), bytes=len(new_card))
    prep.overrides = {CARD: new_card, MANIFEST: manifest_bytes(manifest)}
    prep.files = [LocalFile(f.path, len(prep.overrides[f.path])) if f.path in prep.overrides
                  else f for f in prep.files]


def push_dataset(folder: Path, repo_id: str, version: str, *, token: str | None = None,
                 private: bool = False, revision: str = "main", dry_run: bool = False,
                 progress: bool = True) -> PushResult:
    """Publish ``folder`` (made by ``fvds build``) to the dataset repo ``repo_id`` as one commit
    on ``revision`` tagged ``v<version>``. Bad input, a refused token or an existing tag raise
    :class:`BadInput` before anything is uploaded; a network failure raises :class:`FvdsError`
    and leaves no tag, so rerunning the same call completes the push."""
    tag = version_tag(version)
    check_repo_id(repo_id)
    check_branch(revision)
    prep = prepare(folder, repo_id, version)
    result = PushResult(repo_id, version, tag, revision, prep.config, tuple(prep.files),
                        dry_run=dry_run)
    if dry_run:
        return result

    from huggingface_hub import HfApi, get_token

    from fvds import __version__

    token = token or get_token()
    if not token:
        raise BadInput("no Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or "
                       "pass --token (a token with write access to "
                       f"{repo_id.split('/')[0]}).")
    api = HfApi(token=token, library_name="fvds", library_version=__version__)
    with _hub_errors(repo_id, revision, token):
        return _push(api, prep, result, private=private, progress=progress)


def _push(api: HfApi, prep: _Prepared, result: PushResult, *, private: bool,
          progress: bool) -> PushResult:
    from dataclasses import replace

    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id, tag, revision = result.repo_id, result.tag, result.revision
    created = False
    try:
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        _create_repo(api, repo_id, private)
        created = True
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
    existing = {t.name: t.target_commit for t in refs.tags}
    if tag in existing:
        raise BadInput(f"{repo_id} already has tag {tag} (commit {existing[tag][:12]}); a "
                       "published version is never overwritten. Rebuild with a new "
                       "--dataset-version and push that version.")
    branches = {b.name: b.target_commit for b in refs.branches}
    if revision not in branches:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        branches[revision] = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    parent = branches[revision]

    operations = _operations(api, prep, repo_id, parent, progress)
    with _hub_progress(progress):
        info = api.create_commit(
            repo_id, operations, repo_type="dataset", revision=revision, parent_commit=parent,
            commit_message=f"Publish {prep.name} {tag}",
            commit_description=f"Dataset folder made by fvds, published with `fvds push` "
                               f"as version {result.version}.")
    api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="dataset",
                   tag_message=f"{prep.name} {result.version}")
    return replace(result, commit_sha=info.oid, commit_url=info.commit_url,
                   created_repo=created, changed=info.oid != parent)


def _create_repo(api: HfApi, repo_id: str, private: bool) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 403:
            raise BadInput(f"dataset repo {repo_id} does not exist, and this token may not "
                           f"create it under '{repo_id.split('/')[0]}' (403): create the repo "
                           "on the Hub or use a token with write access to that "
                           "namespace.") from None
        raise


def _operations(api: HfApi, prep: _Prepared, repo_id: str, parent: str,
                progress: bool) -> list:
    """An add for every local file (hashed here, with a progress bar: the slow part of a big
    folder) and a delete for every file on the branch that the folder no longer has, so the
    tagged commit holds exactly the folder."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile

    ops: list[CommitOperationAdd | CommitOperationDelete] = []
    with _bytes_progress(progress, sum(f.size for f in prep.files), "hash") as advance:
        for f in prep.files:
            content = prep.overrides.get(f.path)
            ops.append(CommitOperationAdd(
                f.path, content if content is not None else str(prep.folder / f.path)))
            advance(f.size)
    local = {f.path for f in prep.files}
    remote = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", revision=parent,
                                                 recursive=True) if isinstance(e, RepoFile)]
    ops += [CommitOperationDelete(p) for p in sorted(remote)
            if p not in local and p not in KEEP_ON_HUB]
    return ops


@contextmanager
def _bytes_progress(enabled: bool, total: int, label: str) -> Iterator:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    # A bar only where someone watches: piped into a log it would only add blank lines.
    with Progress(TextColumn(f"{label:<8}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not (enabled and console.is_terminal)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub draws its own upload bars (LFS/Xet files); --quiet turns them off."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub uses (requests, httpx or
    httpx2, depending on its version)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextmanager
def _hub_errors(repo_id: str, revision: str, token: str) -> Iterator[None]:
    """Hub failures as short messages: auth and missing things are bad input (exit 2), the
    rest failed work (exit 1). The token is scrubbed from every message."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def scrub(text: str) -> str:
        return text.replace(token, "***")

    rerun = "Nothing was tagged; rerun the same command to finish the push."
    try:
        yield
    except (BadInput, FvdsError):
        raise
    except RepositoryNotFoundError:
        raise BadInput(f"dataset repo {repo_id} was not found, or this token cannot see it: "
                       "check --repo and that the token belongs to an account with access."
                       ) from None
    except RevisionNotFoundError:
        raise BadInput(f"branch {revision!r} was not found on {repo_id} and could not be "
                       "created: check --revision.") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        detail = scrub(e.server_message or str(e)).strip().splitlines()
        detail_s = f": {detail[0]}" if detail else ""
        if status == 401:
            raise BadInput("the Hub refused the token (401): it is invalid or expired. Log in "
                           "again with `hf auth login`, set HF_TOKEN, or pass --token.") from None
        if status == 403:
            raise BadInput(f"this token has no write access to {repo_id} (403){detail_s}. Use "
                           "a token with the write role for that namespace.") from None
        if status == 412:
            raise FvdsError(f"{repo_id}@{revision} changed while pushing (someone else "
                            f"committed). {rerun}") from None
        raise FvdsError(f"the Hub answered {status}{detail_s}. {rerun}") from None
    except ValueError as e:
        # The client checks the card's YAML with the Hub before uploading anything.
        if not str(e).startswith("Invalid metadata"):
            raise
        raise BadInput(f"the Hub rejected the card's YAML: {scrub(str(e))}") from None
    except _network_errors() as e:
        raise FvdsError(f"network error while pushing to {repo_id} "
                        f"({type(e).__name__}: {scrub(str(e)) or 'no answer'}). {rerun}"
                        ) from None

