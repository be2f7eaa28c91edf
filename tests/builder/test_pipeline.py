from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard

from conftest import tiny_config
from fvds.builder.pipeline import build
from fvds.builder.worker import Worker
from fvds.errors import BadInput
from fvds.schemas import COLUMNS
from fvds.verify import verify_dataset

QUIET = {"quiet": True, "log": lambda m: None}
UNITS = 3 * 3  # layers x units per stage


def _rows(folder, config="all"):
    ds = load_dataset(str(folder), config, split="train")
    return {r["id"]: r for r in ds}


def test_dataset_loads_with_every_column(tiny_dataset):
    ds = load_dataset(str(tiny_dataset), "all", split="train")
    assert len(ds) == 2 * UNITS
    assert set(ds.column_names) == {c.name for c in COLUMNS}
    row = ds[0]
    assert row["image"].size == (32, 32) and row["image"].mode == "RGB"
    assert row["id"] == f"{row['stage']}/{row['layer']}/{row['unit']}"
    dims = {len(e) for e in ds["embedding"]}
    assert dims == {8 * 8 * 3}
    assert ds.features["embedding"].length == 8 * 8 * 3
    assert len(set(ds["id"])) == len(ds)
    for stage in ("random", "finetuned"):
        part = load_dataset(str(tiny_dataset), stage, split="train")
        assert set(part["stage"]) == {stage} and len(part) == UNITS


def test_same_units_in_every_stage(tiny_dataset):
    rows = _rows(tiny_dataset)
    units = {s: sorted((r["layer"], r["unit"]) for r in rows.values() if r["stage"] == s)
             for s in ("random", "finetuned")}
    assert units["random"] == units["finetuned"]


def test_verify_passes_and_manifest_records_provenance(tiny_dataset):
    assert verify_dataset(tiny_dataset) == []
    manifest = json.loads((tiny_dataset / "fvds.json").read_text())
    assert manifest["rows"] == {"random": UNITS, "finetuned": UNITS}
    assert set(manifest["stages"]) == {"random", "finetuned"}
    assert all(len(s["sha256"]) == 64 for s in manifest["stages"].values())
    assert manifest["stages"]["random"]["sha256"] != manifest["stages"]["finetuned"]["sha256"]
    assert manifest["config"]["render"]["steps"] == 3
    assert "data/random/train-00000-of-00002.parquet" in manifest["files"]
    assert {"torch", "timm", "datasets"} <= set(manifest["versions"])


def test_card_yaml(tiny_dataset):
    card = DatasetCard.load(tiny_dataset / "README.md")
    data = card.data.to_dict()
    configs = {c["config_name"]: c for c in data["configs"]}
    # a config per stage, `all`, and the cross-stage table (see test_compare)
    assert set(configs) == {"all", "random", "finetuned", "comparison"}
    assert configs["all"]["default"] is True
    assert configs["finetuned"]["data_files"] == [
        {"split": "train", "path": "data/finetuned/*.parquet"}]
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert infos["all"]["splits"][0]["num_examples"] == 2 * UNITS
    assert infos["random"]["splits"][0]["num_examples"] == UNITS
    assert data["license"] and data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "Feature visualizations of test_resnet: random, finetuned"
    assert "&id" not in (tiny_dataset / "README.md").read_text()  # no YAML anchors
    for fig in ("figures/umap.png", "figures/grid_random.png", "figures/grid_finetuned.png"):
        assert (tiny_dataset / fig).exists() and fig in card.text
    assert 'load_dataset("ORG/fvds-tiny", "finetuned"' in card.text


def test_shards_have_small_row_groups_and_the_features_schema(tiny_dataset):
    for shard in (tiny_dataset / "data").rglob("*.parquet"):
        meta = pq.read_metadata(shard)
        assert all(meta.row_group(i).num_rows <= 2 for i in range(meta.num_row_groups))
        assert b"huggingface" in (pq.read_schema(shard).metadata or {})


def test_resume_after_interruption_renders_only_the_rest(tmp_path, tiny_checkpoint,
                                                         tiny_dataset, monkeypatch):
    cfg = tiny_config(tiny_checkpoint)
    out = tmp_path / "resumed"
    real = Worker.render
    calls = []

    def flaky(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(Worker, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, out, **QUIET)
    assert not (out / "fvds.json").exists()
    monkeypatch.setattr(Worker, "render", real)
    report = build(cfg, out, **QUIET)
    assert report.skipped_jobs == 3 and report.rendered_jobs == 12 - 3
    # identical to the uninterrupted build
    a, b = _rows(out), _rows(tiny_dataset)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["image"].tobytes() == b[k]["image"].tobytes()
        assert a[k]["activation"] == b[k]["activation"]
        np.testing.assert_array_equal(a[k]["embedding"], b[k]["embedding"])


def test_broken_part_is_rendered_again(tmp_path, tiny_checkpoint, tiny_dataset):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    part = next((out / ".fvds" / "parts" / "finetuned").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    report = build(tiny_config(tiny_checkpoint), out, **QUIET)
    assert report.rendered_jobs == 1 and report.skipped_jobs == 11
    assert verify_dataset(out) == []


def test_resume_with_a_different_config_is_refused_and_changes_nothing(tmp_path,
                                                                       tiny_checkpoint,
                                                                       tiny_dataset):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(BadInput, match=r"render\.steps: 3 -> 4"):
        build(tiny_config(tiny_checkpoint, **{"render.steps": 4}), out, **QUIET)
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_new_version_reuses_parts(tmp_path, tiny_checkpoint, tiny_dataset):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    report = build(tiny_config(tiny_checkpoint, **{"dataset.version": "1.1.0"}), out, **QUIET)
    assert report.rendered_jobs == 0
    assert json.loads((out / "fvds.json").read_text())["config"]["dataset"]["version"] == "1.1.0"
    assert "Version **1.1.0**" in (out / "README.md").read_text()


def test_verify_names_a_damaged_shard(tmp_path, tiny_dataset):
    out = tmp_path / "copy"
    shutil.copytree(tiny_dataset, out)
    shard = out / "data" / "random" / "train-00001-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_dataset(out)
    assert any("data/random/train-00001-of-00002.parquet" in p for p in problems)
    (out / "data" / "finetuned" / "train-00000-of-00002.parquet").unlink()
    assert any("train-00000-of-00002.parquet: listed in fvds.json but missing" in p
               for p in verify_dataset(out))
