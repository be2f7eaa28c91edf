"""``fvds verify``: is a dataset folder what its manifest and card say, and does it load?

Checks, each reported by file name: the manifest's files exist with their sizes and SHA-256;
no data file is unlisted; every shard has the schema of ``Features`` and rows of its stage;
rows per stage agree with the manifest and the card; ids are unique; the `comparison` table
(cross-stage cosines, when the build has several stages) has its schema and rows; and
``datasets.load_dataset(folder, config)`` returns those rows for every config.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fvds.errors import BadInput
from fvds.schemas import rows as schema
from fvds.schemas.manifest import MANIFEST, dataset_files, read_manifest, sha256_file


def verify_dataset(folder: Path, *, load: bool = True) -> list[str]:
    """Problems found (empty: the folder is valid). Bad input if it is not a dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"'{folder}' is not a folder; give a dataset folder made by `fvds build`.")
    if not (folder / MANIFEST).exists():
        raise BadInput(f"'{folder}' has no {MANIFEST}: it is not a dataset folder made by "
                       "`fvds build` (or its build did not finish).")
    try:
        manifest = read_manifest(folder)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{MANIFEST}: not valid JSON ({e})"]

    problems: list[str] = []
    listed = manifest.get("files", {})
    for rel, meta in sorted(listed.items()):
        p = folder / rel
        if not p.exists():
            problems.append(f"{rel}: listed in {MANIFEST} but missing")
        elif p.stat().st_size != meta["bytes"] or sha256_file(p) != meta["sha256"]:
            problems.append(f"{rel}: checksum mismatch (the file was changed or damaged)")
    for rel in dataset_files(folder):
        if rel not in listed:
            problems.append(f"{rel}: not listed in {MANIFEST}")

    config = manifest["config"]
    per_stage = bool(config["umap"].get("per_stage"))
    expected = schema.arrow_schema(manifest["embedding"]["dim"], per_stage)
    rows_expected: dict[str, int] = manifest.get("rows", {})
    ids: set[str] = set()
    for stage in [s["name"] for s in config["stages"]]:
        shards = sorted((folder / "data" / stage).glob("*.parquet"))
        if not shards:
            problems.append(f"data/{stage}/: no shards")
            continue
        n = 0
        for shard in shards:
            rel = shard.relative_to(folder).as_posix()
            table = _read_shard(rel, shard, ["id", "stage"], expected, "the dataset's Features",
                                problems)
            if table is None:
                continue
            if set(table.column("stage").to_pylist()) - {stage}:
                problems.append(f"{rel}: holds rows of another stage")
            shard_ids = table.column("id").to_pylist()
            if ids & set(shard_ids) or len(set(shard_ids)) != len(shard_ids):
                problems.append(f"{rel}: duplicate ids")
            ids |= set(shard_ids)
            n += table.num_rows
        if n != rows_expected.get(stage):
            problems.append(f"data/{stage}/: {n} rows, {MANIFEST} says "
                            f"{rows_expected.get(stage)}")
    # the companion table of cross-stage cosines (absent in single-stage and older builds)
    cmp_rows = int((manifest.get("comparison") or {}).get("rows") or 0)
    problems += _check_comparison(folder, cmp_rows, list(rows_expected))
    problems += _check_card(folder, rows_expected, cmp_rows)
    if load and not problems:
        problems += _check_loads(folder, rows_expected, cmp_rows)
    return problems


def _check_comparison(folder: Path, n: int, stages: list[str]) -> list[str]:
    shards = sorted((folder / schema.COMPARISON_DIR).glob("*.parquet"))
    where = f"{schema.COMPARISON_DIR}/"
    if not n:
        return [f"{where}: {MANIFEST} records no comparison table, yet it holds shards"] \
            if shards else []
    if not shards:
        return [f"{where}: no shards, {MANIFEST} says {n} rows"]
    problems, got = [], 0
    expected = schema.comparison_arrow_schema().remove_metadata()
    for shard in shards:
        rel = shard.relative_to(folder).as_posix()
        table = _read_shard(rel, shard, ["stage_a", "stage_b"], expected,
                            "the comparison table's Features", problems)
        if table is None:
            continue
        unknown = (set(table.column("stage_a").to_pylist())
                   | set(table.column("stage_b").to_pylist())) - set(stages)
        if unknown:
            problems.append(f"{rel}: names stages not in the dataset: {sorted(unknown)}")
        got += table.num_rows
    if got != n:
        problems.append(f"{where}: {got} rows, {MANIFEST} says {n}")
    return problems


def _read_shard(rel: str, shard: Path, columns: list[str], expected: pa.Schema, what: str,
                problems: list[str]) -> pa.Table | None:
    """``columns`` of a shard, noting in ``problems`` a shard that is unreadable (None is
    returned) or whose schema is not ``expected``."""
    try:
        table = pq.read_table(shard, columns=columns)
        got_schema = pq.read_schema(shard)
    except Exception as e:
        problems.append(f"{rel}: unreadable parquet ({type(e).__name__})")
        return None
    if not got_schema.remove_metadata().equals(expected.remove_metadata()):
        problems.append(f"{rel}: schema differs from {what}")
    return table


def _check_card(folder: Path, rows: dict[str, int], cmp_rows: int = 0) -> list[str]:
    from huggingface_hub import DatasetCard

    try:
        data = DatasetCard.load(folder / "README.md").data.to_dict()
    except Exception as e:
        return [f"README.md: card YAML unreadable ({type(e).__name__})"]
    problems = []
    configs = {c["config_name"] for c in data.get("configs", [])}
    extra = ["comparison"] if cmp_rows else []
    if configs != {"all", *rows, *extra}:
        problems.append(f"README.md: configs {sorted(configs)} != all + stages {sorted(rows)}"
                        + (" + comparison" if extra else ""))
    counts = {"all": sum(rows.values()), **rows, **({"comparison": cmp_rows} if extra else {})}
    for info in data.get("dataset_info", []):
        name = info.get("config_name")
        n = counts.get(name)
        card_n = info.get("splits", [{}])[0].get("num_examples")
        if card_n != n:
            problems.append(f"README.md: dataset_info says {card_n} rows for '{name}', "
                            f"the shards hold {n}")
    return problems


def _check_loads(folder: Path, rows: dict[str, int], cmp_rows: int = 0) -> list[str]:
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    problems = []
    with tempfile.TemporaryDirectory(prefix="fvds-verify-") as cache:
        if cmp_rows:
            try:
                n = len(load_dataset(str(folder), "comparison", split="train", cache_dir=cache))
                if n != cmp_rows:
                    problems.append(f"load_dataset(..., 'comparison'): {n} rows, expected "
                                    f"{cmp_rows}")
            except Exception as e:
                problems.append(f"load_dataset(..., 'comparison') failed: {type(e).__name__}: "
                                f"{e}")
        for name in ["all", *rows]:
            want = sum(rows.values()) if name == "all" else rows[name]
            try:
                ds = load_dataset(str(folder), name, split="train", cache_dir=cache)
            except Exception as e:
                problems.append(f"load_dataset(..., '{name}') failed: {type(e).__name__}: {e}")
                continue
            if len(ds) != want:
                problems.append(f"load_dataset(..., '{name}'): {len(ds)} rows, expected {want}")
            elif want and not hasattr(ds[0]["image"], "convert"):
                problems.append(f"load_dataset(..., '{name}'): the image column does not "
                                "decode to PIL images")
    return problems
