"""The rows of a dataset as the explorer holds them: small per-row columns and the embeddings
in memory, the images written out as files as the rows stream past (``img/`` and, for large
images, smaller copies in ``thumb/``), so memory never holds more than a batch of PNGs."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvds.errors import BadInput, FvdsError
from fvds.explore.source import Source

THUMB = 96  # px: the side of the copies shown in grids and neighbour lists
# Images up to this side are their own thumbnails: a 96 px copy of the paper's 100 px images
# would double the site's size to save 8% of the pixels.
THUMB_FROM = 3 * THUMB // 2


def needs_thumb(side: int) -> bool:
    return side > THUMB_FROM


def slug(name: str) -> str:
    """A file-name-safe form of a layer or stage name (module paths already are). A leading dot
    is escaped too: a name ".." read from someone's Hub repo must not climb out of the site."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return "_" + safe if safe.startswith(".") or not safe else safe


@dataclass
class Units:
    id: np.ndarray  # (N,) str
    stage: np.ndarray  # (N,) str
    layer: np.ndarray  # (N,) str
    layer_index: np.ndarray  # (N,) int
    unit: np.ndarray  # (N,) int
    layer_units: np.ndarray  # (N,) int
    activation: np.ndarray  # (N,) float
    xy: np.ndarray  # (N, 2) joint UMAP coordinates
    embeddings: np.ndarray  # (N, D)
    image_size: np.ndarray  # (N,) px side of the stored image

    def __len__(self) -> int:
        return len(self.id)

    def key(self, i: int) -> str:
        """``<layer>/<unit>``: a unit, whatever the stage; names its page."""
        return f"{slug(str(self.layer[i]))}/{int(self.unit[i])}"

    def img(self, i: int) -> str:
        """Site-relative path of the row's image."""
        return f"img/{slug(str(self.stage[i]))}/{self.key(i)}.png"

    def thumb(self, i: int) -> str:
        """Site-relative path of its small copy (the image itself when already small)."""
        if not needs_thumb(int(self.image_size[i])):
            return self.img(i)
        return f"thumb/{slug(str(self.stage[i]))}/{self.key(i)}.png"


def collect(source: Source, site: Path, advance: Callable[[int], None] = lambda n: None) -> Units:
    """Read every row of ``source``; write each image (once) under ``site``."""
    from PIL import Image

    cols: dict[str, list] = {k: [] for k in ("id", "stage", "layer", "layer_index", "unit",
                                             "layer_units", "activation", "umap_x", "umap_y",
                                             "image_size")}
    embeddings = []
    for table in source.batches():
        d = {k: table.column(k).to_pylist() for k in ("id", "stage", "layer", "layer_index",
                                                      "unit", "layer_units", "activation",
                                                      "umap_x", "umap_y")}
        emb = table.column("embedding").combine_chunks()
        embeddings.append(np.asarray(emb.flatten().to_numpy(zero_copy_only=False),
                                     np.float32).reshape(len(table), -1))
        for i, image in enumerate(table.column("image").to_pylist()):
            png = image["bytes"] if image else None
            if png is None:
                raise FvdsError(f"row {d['id'][i]} has no image bytes")
            rel = f"{slug(d['stage'][i])}/{slug(d['layer'][i])}/{int(d['unit'][i])}.png"
            _write(site / "img" / rel, png)
            im = Image.open(io.BytesIO(png))  # reads the header only
            side = max(im.size)
            if needs_thumb(side):
                small = im.convert("RGB")
                small.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                small.save(buf, format="PNG", optimize=True)
                _write(site / "thumb" / rel, buf.getvalue())
            cols["image_size"].append(side)
        for k, v in d.items():
            cols[k].extend(v)
        advance(len(table))
    if not cols["id"]:
        raise BadInput(f"{source.label} holds no rows")
    return Units(
        id=np.array(cols["id"], dtype=object), stage=np.array(cols["stage"], dtype=object),
        layer=np.array(cols["layer"], dtype=object),
        layer_index=np.array(cols["layer_index"], np.int64),
        unit=np.array(cols["unit"], np.int64), layer_units=np.array(cols["layer_units"], np.int64),
        activation=np.array(cols["activation"], np.float32),
        xy=np.stack([np.array(cols["umap_x"], np.float32),
                     np.array(cols["umap_y"], np.float32)], axis=1),
        embeddings=np.concatenate(embeddings), image_size=np.array(cols["image_size"], np.int64))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
