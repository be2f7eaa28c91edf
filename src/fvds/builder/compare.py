"""Cross-stage comparison: how much each unit's visualization changes between stages, and how
strongly the projection clusters by layer.

Pure functions over per-row arrays in plan order (stage, layer, unit), used by the build (the
`comparison` table, the card and ``fvds.json``) and by ``fvds explore``.

- ``unit_cosines``: for every unit present in two stages, the cosine similarity of its
  ``embedding`` in each pair of stages; the build and the explorer give it embeddings
  ``centered`` on the mean of all rows.
- ``layer_summaries``: mean / median cosine per layer and pair, and the layers that change most.
- ``layer_clustering``: leave-one-out k-NN accuracy of predicting a row's layer (and its depth
  bin) from its 2-D UMAP coordinates, per stage, next to the majority-class baseline. It puts a
  number on the seed's observation that visualizations cluster by layer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pyarrow as pa

from fvds.schemas import rows as schema

KNN_K = 5
DEPTH_BINS = 4  # shallow / ... / deep: coarser than layers, robust to neighbouring layers mixing


@dataclass(frozen=True)
class RowKeys:
    """What identifies each row, in plan order."""
    stage: np.ndarray  # (N,) str
    layer: np.ndarray  # (N,) str
    layer_index: np.ndarray  # (N,) int
    unit: np.ndarray  # (N,) int

    def of_stage(self, stage: str) -> dict[tuple[str, int], int]:
        """(layer, unit) -> row index, for the rows of one stage."""
        rows = np.flatnonzero(self.stage == stage)
        return {(str(self.layer[i]), int(self.unit[i])): int(i) for i in rows}


@dataclass(frozen=True)
class UnitCosines:
    """The comparison table as columns (see ``schemas.rows.COMPARISON_COLUMNS``)."""
    layer: np.ndarray
    layer_index: np.ndarray
    unit: np.ndarray
    stage_a: np.ndarray
    stage_b: np.ndarray
    cosine: np.ndarray

    def __len__(self) -> int:
        return len(self.cosine)

    def to_arrow(self) -> pa.Table:
        arrow = schema.comparison_arrow_schema()
        cols = {"layer": self.layer.tolist(), "layer_index": self.layer_index,
                "unit": self.unit, "stage_a": self.stage_a.tolist(),
                "stage_b": self.stage_b.tolist(), "cosine": self.cosine}
        return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in arrow],
                                    schema=arrow)


def normalized(embeddings: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Unit-length rows (float32); an all-zero vector stays zero instead of becoming NaN."""
    e = np.asarray(embeddings[rows] if rows is not None else embeddings, dtype=np.float32)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norm, 1e-12)


def centered(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings minus their mean over all rows of every stage. What all visualizations share
    (the grey of the background, the mean colour: pixel embeddings are all positive) would
    otherwise put every cosine near 1 and rank layers by brightness, not by what they show."""
    e = np.asarray(embeddings, dtype=np.float32)
    return e - e.mean(axis=0, keepdims=True)


def stage_pairs(stages: list[str]) -> list[tuple[str, str]]:
    """Every pair of stages, earlier stage first (config order: random -> ... -> fine-tuned)."""
    return list(combinations(stages, 2))


def unit_cosines(embeddings: np.ndarray, keys: RowKeys, stages: list[str]) -> UnitCosines:
    """Cosine of each unit's embedding between each pair of stages it appears in."""
    parts: list[tuple] = []
    for a, b in stage_pairs(stages):
        rows_a, rows_b = keys.of_stage(a), keys.of_stage(b)
        common = [k for k in rows_a if k in rows_b]  # stage a's order: layer, then unit
        if not common:
            continue
        ia = np.array([rows_a[k] for k in common])
        ib = np.array([rows_b[k] for k in common])
        cos = np.einsum("ij,ij->i", normalized(embeddings, ia), normalized(embeddings, ib))
        parts.append((keys.layer[ia], keys.layer_index[ia], keys.unit[ia],
                      np.full(len(common), a, dtype=object), np.full(len(common), b, dtype=object),
                      np.clip(cos, -1.0, 1.0).astype(np.float32)))
    if not parts:
        empty = np.array([], dtype=object)
        return UnitCosines(empty, np.array([], np.int32), np.array([], np.int32), empty, empty,
                           np.array([], np.float32))
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    return UnitCosines(cols[0].astype(object), cols[1].astype(np.int32),
                       cols[2].astype(np.int32), cols[3], cols[4], cols[5])


def layer_summaries(cos: UnitCosines, most_changed: int = 3) -> list[dict]:
    """Per pair of stages: mean / median / min cosine per layer (depth order) and the layers
    whose units change most (lowest mean cosine)."""
    out = []
    pairs = list(dict.fromkeys(zip(cos.stage_a.tolist(), cos.stage_b.tolist(), strict=True)))
    for a, b in pairs:
        in_pair = (cos.stage_a == a) & (cos.stage_b == b)
        layers = []
        for idx in np.unique(cos.layer_index[in_pair]):
            m = in_pair & (cos.layer_index == idx)
            c = cos.cosine[m].astype(np.float64)
            layers.append({"layer": str(cos.layer[m][0]), "layer_index": int(idx),
                           "units": int(m.sum()), "mean": round(float(c.mean()), 4),
                           "median": round(float(np.median(c)), 4),
                           "min": round(float(c.min()), 4)})
        ranked = sorted(layers, key=lambda r: (r["mean"], r["layer_index"]))
        out.append({"stage_a": a, "stage_b": b, "units": int(in_pair.sum()),
                    "mean": round(float(cos.cosine[in_pair].astype(np.float64).mean()), 4),
                    "layers": layers,
                    "changed_most": [r["layer"] for r in ranked[:most_changed]]})
    return out


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float | None:
    """Leave-one-out k-NN accuracy: each row's label predicted by the majority of its k nearest
    other rows (ties go to the label met first, i.e. the closest). None below two rows."""
    from sklearn.neighbors import NearestNeighbors

    n = len(points)
    if n < 2:
        return None
    k = min(k, n - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    hits = 0
    for i, row in enumerate(idx):
        # the row itself is usually first, but duplicate points can put it anywhere
        neigh = [j for j in row if j != i][:k]
        votes = Counter(labels[neigh].tolist())
        best = max(votes.values())
        pred = next(labels[j] for j in neigh if votes[labels[j]] == best)
        hits += int(pred == labels[i])
    return hits / n


def majority_rate(labels: np.ndarray) -> float | None:
    """The chance baseline: accuracy of always predicting the most frequent label."""
    if len(labels) == 0:
        return None
    return Counter(labels.tolist()).most_common(1)[0][1] / len(labels)


def depth_bins(layer_index: np.ndarray, bins: int = DEPTH_BINS) -> np.ndarray:
    """Consecutive layers grouped into ``min(bins, layers)`` depth bins of near-equal size."""
    order = np.unique(layer_index)
    bins = min(bins, len(order))
    rank = np.searchsorted(order, layer_index)
    return (rank * bins) // max(len(order), 1)


def layer_clustering(coords: np.ndarray, keys: RowKeys, stages: list[str],
                     k: int = KNN_K) -> dict[str, dict]:
    """Per stage (on the joint projection, neighbours within the stage): k-NN accuracy of the
    layer and of the depth bin from (umap_x, umap_y), with the majority-class baselines."""
    bins = depth_bins(keys.layer_index)
    out = {}
    for stage in stages:
        m = keys.stage == stage
        pts = np.asarray(coords[m], dtype=np.float64)

        def score(labels: np.ndarray, pts=pts) -> float | None:
            acc = knn_accuracy(pts, labels, k)
            return None if acc is None else round(acc, 4)

        chance = majority_rate(keys.layer_index[m])
        bin_chance = majority_rate(bins[m])
        out[stage] = {
            "rows": int(m.sum()), "k": k,
            "layer_accuracy": score(keys.layer_index[m]),
            "layer_chance": None if chance is None else round(chance, 4),
            "depth_bins": int(len(np.unique(bins))),
            "depth_accuracy": score(bins[m]),
            "depth_chance": None if bin_chance is None else round(bin_chance, 4),
        }
    return out


@dataclass(frozen=True)
class Comparison:
    """Everything the build stores about the comparison."""
    cosines: UnitCosines
    summaries: list[dict]
    clustering: dict[str, dict]

    def manifest(self) -> dict:
        """The `comparison` field of fvds.json."""
        return {"rows": len(self.cosines),
                "file": schema.COMPARISON_SHARD if len(self.cosines) else None,
                "embedding_cosine": self.summaries,
                "layer_clustering": {"method": f"leave-one-out {KNN_K}-NN on (umap_x, umap_y) "
                                               "within each stage; chance = majority class",
                                     "stages": self.clustering}}


def compare(embeddings: np.ndarray, coords: np.ndarray, keys: RowKeys,
            stages: list[str]) -> Comparison:
    cos = unit_cosines(centered(embeddings), keys, stages)
    return Comparison(cos, layer_summaries(cos), layer_clustering(coords, keys, stages))
