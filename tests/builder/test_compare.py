"""Cross-stage comparison: the pure functions, and what the build stores (the `comparison`
table and config, the card section, the manifest field, and `fvds verify` over them)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from fvds.builder.compare import (
    RowKeys,
    compare,
    depth_bins,
    knn_accuracy,
    layer_clustering,
    layer_summaries,
    majority_rate,
    unit_cosines,
)
from fvds.schemas import rows as schema
from fvds.verify import verify_dataset

UNITS = 9  # tiny_dataset: 3 layers x 3 units per stage


def keys_for(stages, layers=("a", "b"), units=(0, 1)) -> RowKeys:
    """Plan order: stage, layer, unit."""
    rows = [(s, la, i, u) for s in stages for i, la in enumerate(layers) for u in units]
    return RowKeys(*(np.array(c) for c in zip(*rows, strict=True)))


def test_unit_cosines_pair_each_unit_across_every_pair_of_stages():
    keys = keys_for(["random", "pretrained", "finetuned"])
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 6)).astype(np.float32)
    emb = np.concatenate([base, 3 * base, -base])  # same direction, scaled, opposite
    cos = unit_cosines(emb, keys, ["random", "pretrained", "finetuned"])
    assert len(cos) == 3 * 4
    pairs = list(dict.fromkeys(zip(cos.stage_a, cos.stage_b, strict=True)))
    assert pairs == [("random", "pretrained"), ("random", "finetuned"),
                     ("pretrained", "finetuned")]
    by_pair = {p: cos.cosine[(cos.stage_a == p[0]) & (cos.stage_b == p[1])] for p in pairs}
    np.testing.assert_allclose(by_pair[("random", "pretrained")], 1.0, atol=1e-6)
    np.testing.assert_allclose(by_pair[("random", "finetuned")], -1.0, atol=1e-6)
    assert cos.layer.tolist()[:4] == ["a", "a", "b", "b"] and cos.unit.tolist()[:4] == [0, 1, 0, 1]
    table = cos.to_arrow()
    assert table.schema.equals(schema.comparison_arrow_schema())


def test_units_missing_from_a_stage_and_single_stage_builds():
    keys = keys_for(["random", "finetuned"])
    keep = ~((keys.stage == "finetuned") & (keys.layer == "b") & (keys.unit == 1))
    partial = RowKeys(keys.stage[keep], keys.layer[keep], keys.layer_index[keep],
                      keys.unit[keep])
    emb = np.ones((int(keep.sum()), 3), np.float32)
    assert len(unit_cosines(emb, partial, ["random", "finetuned"])) == 3
    one = keys_for(["random"])
    assert len(unit_cosines(np.ones((4, 3)), one, ["random"])) == 0
    assert unit_cosines(np.zeros((8, 3)), keys, ["random", "finetuned"]).cosine.tolist() == [0] * 4


def test_layer_summaries_rank_the_layers_that_change_most():
    keys = keys_for(["random", "finetuned"], layers=("a", "b", "c"), units=(0, 1))
    e = np.eye(6, dtype=np.float32)
    later = e.copy()
    later[2:4] = e[2:4] + e[[3, 2]]  # layer b: cosine 1/sqrt(2); layer c: orthogonal
    later[4:6] = e[[0, 1]]
    summary = layer_summaries(unit_cosines(np.concatenate([e, later]), keys,
                                           ["random", "finetuned"]))
    (pair,) = summary
    means = {r["layer"]: r["mean"] for r in pair["layers"]}
    assert means == {"a": 1.0, "b": pytest.approx(0.7071, abs=1e-4), "c": 0.0}
    assert pair["changed_most"] == ["c", "b", "a"]
    assert [r["layer_index"] for r in pair["layers"]] == [0, 1, 2]


def test_knn_accuracy_and_baselines():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    clustered = rng.normal(size=(60, 2)) * 0.1 + labels[:, None] * 10
    assert knn_accuracy(clustered, labels) == 1.0
    shuffled = rng.normal(size=(60, 2))
    assert knn_accuracy(shuffled, labels) < 0.7
    assert majority_rate(labels) == pytest.approx(1 / 3)
    assert knn_accuracy(np.zeros((1, 2)), np.array([0])) is None
    assert depth_bins(np.array([0, 1, 2, 3, 4, 5, 6, 7])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert depth_bins(np.array([3, 3, 9])).tolist() == [0, 0, 1]


def test_layer_clustering_is_per_stage():
    keys = keys_for(["random", "finetuned"], layers=("a", "b", "c"), units=tuple(range(8)))
    rng = np.random.default_rng(2)
    coords = np.where((keys.stage == "random")[:, None],
                      keys.layer_index[:, None] * 10.0 + rng.normal(size=(48, 2)) * 0.1,
                      rng.normal(size=(48, 2)))
    got = layer_clustering(coords, keys, ["random", "finetuned"])
    assert got["random"]["layer_accuracy"] == 1.0 and got["random"]["rows"] == 24
    assert got["finetuned"]["layer_accuracy"] < 0.8
    assert got["random"]["layer_chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert compare(np.ones((48, 2)), coords, keys, ["random", "finetuned"]).manifest()[
        "layer_clustering"]["stages"] == got


def test_the_build_stores_the_comparison(tiny_dataset):
    assert verify_dataset(tiny_dataset) == []
    shard = tiny_dataset / schema.COMPARISON_SHARD
    table = pq.read_table(shard)
    assert table.schema.remove_metadata().equals(
        schema.comparison_arrow_schema().remove_metadata())
    assert table.num_rows == UNITS
    assert set(table.column("stage_a").to_pylist()) == {"random"}
    assert set(table.column("stage_b").to_pylist()) == {"finetuned"}
    assert all(-1.0 <= c <= 1.0 for c in table.column("cosine").to_pylist())

    manifest = json.loads((tiny_dataset / "fvds.json").read_text())
    cmp = manifest["comparison"]
    assert cmp["rows"] == UNITS and cmp["file"] == schema.COMPARISON_SHARD
    assert schema.COMPARISON_SHARD in manifest["files"]
    assert set(cmp["layer_clustering"]["stages"]) == {"random", "finetuned"}
    assert [p["stage_a"] for p in cmp["embedding_cosine"]] == ["random"]

    card = DatasetCard.load(tiny_dataset / "README.md")
    configs = {c["config_name"]: c for c in card.data.to_dict()["configs"]}
    assert configs["comparison"]["data_files"] == [
        {"split": "train", "path": "comparison/*.parquet"}]
    infos = {i["config_name"]: i for i in card.data.to_dict()["dataset_info"]}
    assert infos["comparison"]["splits"][0]["num_examples"] == UNITS
    assert infos["all"]["splits"][0]["num_examples"] == 2 * UNITS  # `all` does not include it
    for text in ("## Cross-stage comparison", "`random` → `finetuned`",
                 "Layers that change most", "Do visualizations cluster by layer?",
                 'load_dataset("ORG/fvds-tiny", "comparison"', "## Explore the dataset",
                 "fvds explore ORG/fvds-tiny@v0.1.0 --out site/", "| `stage_a` | string |"):
        assert text in card.text, text


def test_verify_checks_the_comparison_table(tiny_dataset, tmp_path):
    broken = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, broken)
    (broken / schema.COMPARISON_SHARD).unlink()
    problems = verify_dataset(broken, load=False)
    assert f"{schema.COMPARISON_SHARD}: listed in fvds.json but missing" in problems
    assert "comparison/: no shards, fvds.json says 9 rows" in problems


def test_a_stage_cannot_be_named_comparison():
    from pydantic import ValidationError

    from fvds.config import StageConfig

    with pytest.raises(ValidationError, match="comparison"):
        StageConfig(name="comparison")


def test_the_build_compares_embeddings_centred_on_their_mean():
    """Pixel embeddings share a large positive part (the grey background): raw cosines would
    all be ~1. After centring, a unit whose picture is kept scores 1 and an inverted one < 0."""
    keys = keys_for(["random", "finetuned"], layers=("a", "b"), units=(0, 1))
    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 16)).astype(np.float32)
    later = np.concatenate([s[:2], -s[2:]])  # layer a kept, layer b inverted
    emb = 100.0 + np.concatenate([s, later])
    assert unit_cosines(emb, keys, ["random", "finetuned"]).cosine.min() > 0.99  # raw
    (pair,) = compare(emb, np.zeros((8, 2)), keys, ["random", "finetuned"]).summaries
    means = {r["layer"]: r["mean"] for r in pair["layers"]}
    assert means["a"] == pytest.approx(1.0, abs=1e-4) and means["b"] < 0
    assert pair["changed_most"][0] == "b"
