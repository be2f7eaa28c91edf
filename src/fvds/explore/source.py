"""Where the explorer reads rows from: a local dataset folder (its shards, with pyarrow) or a
Hub repo (``ORG/NAME[@REVISION]``, with ``datasets.load_dataset``).

Both yield the same Arrow batches of the row schema, image bytes undecoded, so the site is
built the same way from either. Every problem with the input is found in ``open_source``,
before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fvds.errors import BadInput, FvdsError
from fvds.schemas.manifest import MANIFEST, read_manifest

# What the site needs of a row: everything but the provenance columns.
COLUMNS = ("id", "stage", "layer", "layer_index", "unit", "layer_units", "image", "activation",
           "embedding", "umap_x", "umap_y")
BATCH_ROWS = 256  # rows held at once while images are written out
REPO_SPEC = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(@(?P<rev>[^\s@]+))?")


@dataclass
class Source:
    label: str  # the folder or repo@revision, as the pages name it
    title: str
    stages: list[str]  # in training order when known (the manifest's), else as met
    _batches: Iterator[pa.Table] | None = None
    _folder: Path | None = None

    def batches(self) -> Iterator[pa.Table]:
        if self._folder is not None:
            for stage in self.stages:
                for shard in sorted((self._folder / "data" / stage).glob("*.parquet")):
                    f = pq.ParquetFile(shard)
                    for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=list(COLUMNS)):
                        yield pa.Table.from_batches([batch])
        elif self._batches is not None:
            yield from self._batches


def open_source(spec: str) -> Source:
    """A dataset folder made by ``fvds build``, or ``ORG/NAME[@REVISION]`` on the Hub."""
    path = Path(spec).expanduser()
    if path.exists():
        return _local(path)
    m = REPO_SPEC.fullmatch(spec)
    if m is None:
        raise BadInput(f"'{spec}' is neither a folder nor a Hub dataset id: give a dataset "
                       "folder made by `fvds build`, or ORG/NAME[@REVISION], e.g. "
                       "my-lab/fvds-seresnext50@v1.0.0.")
    return _hub(m.group("repo"), m.group("rev"))


def _local(folder: Path) -> Source:
    if not folder.is_dir():
        raise BadInput(f"'{folder}' is a file; give a dataset folder made by `fvds build` "
                       "or ORG/NAME[@REVISION].")
    if not (folder / MANIFEST).is_file():
        raise BadInput(f"'{folder}' has no {MANIFEST}: it is not a dataset folder made by "
                       "`fvds build` (or its build did not finish).")
    try:
        manifest = read_manifest(folder)
        cfg = manifest["config"]
        stages = [s["name"] for s in cfg["stages"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise BadInput(f"'{folder / MANIFEST}' is not a valid fvds manifest ({type(e).__name__}:"
                       f" {e}); rebuild the folder with `fvds build`.") from None
    missing = [s for s in stages if not list((folder / "data" / s).glob("*.parquet"))]
    if missing:
        raise BadInput(f"'{folder}' has no shards for stage(s) {', '.join(missing)} under "
                       "data/<stage>/; run `fvds verify` on it.")
    ds = cfg.get("dataset", {})
    title = f"{ds.get('pretty_name') or folder.name} (v{ds.get('version', '?')})"
    return Source(label=str(folder), title=title, stages=stages, _folder=folder)


def _hub(repo: str, revision: str | None) -> Source:
    """Load the `all` config; the load happens here so that a wrong id or revision is bad
    input before the site folder is touched."""
    from datasets import load_dataset
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    label = f"{repo}@{revision}" if revision else repo
    try:
        ds = load_dataset(repo, "all", split="train", revision=revision)
    except RevisionNotFoundError as e:
        raise BadInput(f"revision {revision!r} of dataset {repo} was not found; give a tag "
                       f"such as v1.0.0, a branch or a commit ({type(e).__name__}).") from None
    except (DatasetNotFoundError, RepositoryNotFoundError, DataFilesNotFoundError,
            FileNotFoundError) as e:
        what = f"at revision {revision!r}" if revision else "on the Hub"
        raise BadInput(f"dataset {repo} was not found {what}, or it has no `all` config: give "
                       "the ORG/NAME[@REVISION] of a dataset made by fvds "
                       f"({type(e).__name__}).") from None
    except ValueError as e:
        # e.g. "BuilderConfig 'all' not found": a Hub dataset, but not one fvds made
        raise BadInput(f"dataset {label} has no `all` config; is it a dataset made by fvds? "
                       f"({e})") from None
    except (ConnectionError, TimeoutError, OSError) as e:
        raise FvdsError(f"could not reach the Hub for {label} ({type(e).__name__}: {e}).") \
            from None
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise BadInput(f"dataset {label} lacks the columns {', '.join(missing)}; it is not a "
                       "dataset made by fvds.")
    stages = list(dict.fromkeys(ds.unique("stage")))
    title = label
    manifest = _hub_manifest(repo, revision)
    if manifest:
        # the manifest knows the training order (random -> pretrained -> fine-tuned); the rows
        # come in the order of the shard paths, which is alphabetical
        order = [s["name"] for s in manifest.get("config", {}).get("stages", [])]
        stages = [s for s in order if s in stages] + [s for s in stages if s not in order]
        pretty = manifest.get("config", {}).get("dataset", {}).get("pretty_name")
        title = f"{pretty} ({label})" if pretty else label
    table = ds.with_format("arrow")
    batches = (table[i:i + BATCH_ROWS].select(list(COLUMNS))
               for i in range(0, len(ds), BATCH_ROWS))
    return Source(label=label, title=title, stages=stages, _batches=batches)


def _hub_manifest(repo: str, revision: str | None) -> dict | None:
    """The repo's fvds.json, or None: the rows alone are enough to build the site."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, MANIFEST, repo_type="dataset", revision=revision)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # a missing or unreadable manifest only costs the stage order
        return None
