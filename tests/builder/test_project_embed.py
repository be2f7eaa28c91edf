from __future__ import annotations

import numpy as np
import pytest
import torch

from fvds.builder.embed import Embedder
from fvds.builder.project import project
from fvds.builder.workarea import png_bytes
from fvds.config import EmbeddingConfig, UmapConfig


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_projection_works_for_a_handful_of_rows(n):
    x = np.random.default_rng(0).normal(size=(n, 20)).astype(np.float32)
    coords, used = project(x, UmapConfig(n_neighbors=15, pca=0))
    assert coords.shape == (n, 2) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    if n >= 4:
        assert used["method"] == "umap" and used["n_neighbors"] == min(15, n - 1)


def test_projection_is_reproducible_and_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 30)), rng.normal(8, 1, (20, 30))]).astype("f4")
    a, used = project(x, UmapConfig(pca=10))
    b, _ = project(x, UmapConfig(pca=10))
    np.testing.assert_array_equal(a, b)
    assert used["pca_components"] == 10
    c0, c1 = a[:20].mean(0), a[20:].mean(0)
    spread = max(a[:20].std(0).max(), a[20:].std(0).max())
    assert np.linalg.norm(c0 - c1) > 2 * spread


def _pngs(n, size=32):
    rng = np.random.default_rng(1)
    return [png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_pixel_embedding_is_the_downsampled_image():
    pngs = _pngs(3)
    full = Embedder(EmbeddingConfig(method="pixels", pixels_size=0), torch.device("cpu"))(pngs)
    small = Embedder(EmbeddingConfig(method="pixels", pixels_size=8), torch.device("cpu"))(pngs)
    assert full.shape == (3, 32 * 32 * 3) and small.shape == (3, 8 * 8 * 3)
    assert 0 <= full.min() and full.max() <= 1


def test_encoder_embedding_uses_pooled_features():
    cfg = EmbeddingConfig(method="encoder", encoder_model="test_resnet", encoder_weights="random",
                          encoder_input_size=32, batch_size=2)
    emb = Embedder(cfg, torch.device("cpu"))
    vecs = emb(_pngs(5))
    assert vecs.shape == (5, emb.model.num_features) and vecs.dtype == np.float32
    assert not np.allclose(vecs[0], vecs[1])
