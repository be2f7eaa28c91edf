"""The seed's two figures: a grid of visualizations per stage (rows: layers from shallow to
deep; columns: units) and the joint UMAP, one panel per stage, coloured by layer depth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def grid_figure(path: Path, stage: str, rows: list[tuple[str, list[tuple[int, bytes]]]]) -> None:
    """``rows``: (layer, [(unit, png bytes), ...]) from shallow to deep."""
    plt = _pyplot()
    ncols = max(len(units) for _, units in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols + 1.6, 1.3 * len(rows)),
                             squeeze=False)
    for r, (layer, units) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(units):
                unit, png = units[c]
                ax.imshow(Image.open(io.BytesIO(png)).convert("RGB"))
                ax.set_title(str(unit), fontsize=7, pad=2)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(layer, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"Feature visualizations: {stage}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def umap_figure(path: Path, stages: list[str], stage_of_row: np.ndarray, coords: np.ndarray,
                depth: np.ndarray) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages) + 0.8, 4.2),
                             squeeze=False, sharex=True, sharey=True)
    vmin, vmax = float(depth.min()), float(max(depth.max(), depth.min() + 1))
    scatter = None
    for ax, stage in zip(axes[0], stages, strict=True):
        m = stage_of_row == stage
        scatter = ax.scatter(coords[m, 0], coords[m, 1], c=depth[m], cmap="viridis", s=8,
                             vmin=vmin, vmax=vmax, linewidths=0)
        ax.set_title(stage)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes[0].tolist(), label="layer depth (layer_index)")
    fig.suptitle("UMAP of feature visualizations, fitted jointly over all stages", y=1.03)
    fig.savefig(path, dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
