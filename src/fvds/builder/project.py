"""The 2-D projection: UMAP fitted jointly over every row of every stage, so all stages
share one space (the seed's Fig. 2), with PCA first for wide embeddings."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fvds.config import UmapConfig


def project(x: np.ndarray, cfg: UmapConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Coordinates (N, 2) float32 and the parameters actually used (recorded in the card).

    Works for any number of rows: n_neighbors shrinks to fit a small dataset, and with fewer
    than four rows (too few for UMAP's graph) the coordinates are the first two principal
    components.
    """
    n = len(x)
    used: dict[str, Any] = {"method": "umap", "rows": n, "random_state": cfg.random_state,
                            "metric": cfg.metric, "min_dist": cfg.min_dist}
    x = np.asarray(x, dtype=np.float32)
    if cfg.pca and x.shape[1] > cfg.pca and n > cfg.pca:
        from sklearn.decomposition import PCA

        x = PCA(n_components=cfg.pca, random_state=cfg.random_state).fit_transform(x)
        used["pca_components"] = cfg.pca
    if n < 4:
        used["method"] = "pca (fewer than 4 rows)"
        return _pca2(x), used
    n_neighbors = min(cfg.n_neighbors, n - 1)
    used["n_neighbors"] = n_neighbors
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state, spectral init...
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=cfg.min_dist, metric=cfg.metric,
                            random_state=cfg.random_state, n_components=2,
                            init="spectral" if n > n_neighbors + 2 else "random")
        coords = reducer.fit_transform(x)
    return np.asarray(coords, dtype=np.float32), used


def _pca2(x: np.ndarray) -> np.ndarray:
    out = np.zeros((len(x), 2), dtype=np.float32)
    if len(x) < 2:
        return out
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    out[:, :k] = centred @ vt[:k].T
    return out
