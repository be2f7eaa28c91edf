"""Nearest neighbours of every row in embedding space (cosine), within its stage and across
the other stages. Exact, in row chunks, so memory stays at a chunk x N block of similarities
(tens of thousands of rows take seconds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fvds.builder.compare import normalized

BLOCK_FLOATS = 1 << 24  # similarities held at once: 64 MB of float32


@dataclass(frozen=True)
class Neighbours:
    """Row indices (N, k) and their cosines, nearest first; -1 where fewer than k exist."""
    within: np.ndarray
    within_cos: np.ndarray
    across: np.ndarray
    across_cos: np.ndarray


def nearest(embeddings: np.ndarray, stage: np.ndarray, k: int = 8) -> Neighbours:
    """For each row, the k most cosine-similar other rows of its own stage (``within``) and of
    the other stages (``across``)."""
    e = normalized(embeddings)
    n = len(e)
    codes = np.unique(stage, return_inverse=True)[1]
    out = [np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32),
           np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)]
    chunk = max(1, BLOCK_FLOATS // max(n, 1))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        sim = e[lo:hi] @ e.T
        same = codes[lo:hi, None] == codes[None, :]
        sim_within = np.where(same, sim, -np.inf)
        sim_within[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # not itself
        for (idx, cos), s in ((out[0:2], sim_within), (out[2:4], np.where(same, -np.inf, sim))):
            top, val = _top_k(s, k)
            idx[lo:hi], cos[lo:hi] = top, val
    return Neighbours(*out)


def _top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest finite entries per row, largest first."""
    kk = min(k, sim.shape[1])
    part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    part, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    idx = np.full((len(sim), k), -1, np.int64)
    cos = np.zeros((len(sim), k), np.float32)
    ok = np.isfinite(vals)
    idx[:, :kk] = np.where(ok, part, -1)
    cos[:, :kk] = np.where(ok, vals, 0.0)
    return idx, cos
