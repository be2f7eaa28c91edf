"""Embeddings: the vector each visualization is projected from.

``pixels`` is the seed's choice (the flattened image, optionally downsampled), which groups
images by colour and layout. ``encoder`` uses the pooled penultimate features of a reference
timm model, which describe content rather than raw colour.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from fvds.config import EmbeddingConfig


def describe(cfg: EmbeddingConfig) -> str:
    if cfg.method == "pixels":
        side = f"downsampled to {cfg.pixels_size} px" if cfg.pixels_size else "at full size"
        return f"pixels: the RGB image {side}, flattened, scaled to [0, 1]"
    return (f"encoder: pooled penultimate features of timm '{cfg.encoder_model}' "
            f"(weights: {cfg.encoder_weights}) on the image resized to {cfg.encoder_input_size} px")


class Embedder:
    """Turns batches of PNG bytes into float32 vectors of a fixed dimension."""

    def __init__(self, cfg: EmbeddingConfig, device: torch.device, seed: int = 0):
        self.cfg = cfg
        self.device = device
        self.model = None
        if cfg.method == "encoder":
            from fvds.builder.models import create_model

            self.model = create_model(cfg.encoder_model, cfg.encoder_weights, seed=seed)
            self.model = self.model.to(device)
            data_cfg = self.model.pretrained_cfg
            self.mean = torch.tensor(data_cfg.get("mean", (0.485, 0.456, 0.406)),
                                     device=device)[None, :, None, None]
            self.std = torch.tensor(data_cfg.get("std", (0.229, 0.224, 0.225)),
                                    device=device)[None, :, None, None]

    def __call__(self, pngs: Iterable[bytes]) -> np.ndarray:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
        if self.cfg.method == "pixels":
            side = self.cfg.pixels_size
            if side:
                images = [im.resize((side, side), Image.BILINEAR) for im in images]
            arr = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])
            return arr.reshape(len(images), -1)
        return self._encode(images)

    @torch.no_grad()
    def _encode(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        size = self.cfg.encoder_input_size
        for i in range(0, len(images), self.cfg.batch_size):
            chunk = images[i:i + self.cfg.batch_size]
            x = torch.from_numpy(np.stack([np.asarray(im) for im in chunk])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
            feats = self.model.forward_head(self.model.forward_features((x - self.mean) / self.std),
                                            pre_logits=True)
            out.append(feats.flatten(1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)
