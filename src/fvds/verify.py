"""``fvds verify``: is a dataset folder what its manifest and card say, and does it load?

Checks, each reported by file name: the manifest's files exist with their sizes and SHA-256;
no data file is unlisted; every shard has the schema of ``Features`` and rows of its stage;
rows per stage agree with the manifest and the card; ids are unique; and
``datasets.load_dataset(folder, config)`` returns those rows for every config.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

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
            try:
                table = pq.read_table(shard, columns=["id", "stage"])
                got_schema = pq.read_schema(shard)
            except Exception as e:
                problems.append(f"{rel}: unreadable parquet ({type(e).__name__})")
                continue
            if not got_schema.remove_metadata().equals(expected.remove_metadata()):
                problems.append(f"{rel}: schema differs from the dataset's Features")
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
    problems += _check_card(folder, rows_expected)
    if load and not problems:
        problems += _check_loads(folder, rows_expected)
    return problems


def _check_card(folder: Path, rows: dict[str, int]) -> list[str]:
    from huggingface_hub import DatasetCard

    try:
        data = DatasetCard.load(folder / "README.md").data.to_dict()
    except Exception as e:
        return [f"README.md: card YAML unreadable ({type(e).__name__})"]
    problems = []
    configs = {c["config_name"] for c in data.get("configs", [])}
    if configs != {"all", *rows}:
        problems.append(f"README.md: configs {sorted(configs)} != all + stages {sorted(rows)}")
    for info in data.get("dataset_info", []):
        name = info.get("config_name")
        n = sum(rows.values()) if name == "all" else rows.get(name)
        card_n = info.get("splits", [{}])[0].get("num_examples")
        if card_n != n:
            problems.append(f"README.md: dataset_info says {card_n} rows for '{name}', "
                            f"the shards hold {n}")
    return problems


def _check_loads(folder: Path, rows: dict[str, int]) -> list[str]:
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    problems = []
    with tempfile.TemporaryDirectory(prefix="fvds-verify-") as cache:
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
