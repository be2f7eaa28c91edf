"""Robustness transforms, numerically as torch-lucent applies them (without kornia).

Each optimisation step draws one set of parameters (two jitters, a scale, an angle) from a
seeded generator and applies it to the whole batch, as lucent does for a batch. The draw
depends only on the job's seed and the step, so a unit sees the same sequence of transforms
whatever batch it is rendered in.

The geometry follows lucent exactly, quirks included: jitter is a shift of 0..d-1 pixels
(never negative), and kornia's warp normalises pixel coordinates with (size - 1) while
sampling with ``align_corners=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformSet:
    pad: int  # border added on every side
    pad_mode: str  # "constant" or "reflect"
    pad_value: float  # fill for "constant"
    jitter: int  # first jitter: shift by 0..jitter-1 px in x and y (0: off)
    scales: tuple[float, ...]  # drawn uniformly
    angles: tuple[float, ...]  # degrees, drawn uniformly
    jitter2: int  # final jitter (0: off)

    def describe(self) -> str:
        s = (f"pad {self.pad} ({self.pad_mode}), jitter {self.jitter}, "
             f"scale {min(self.scales):.2f}-{max(self.scales):.2f} ({len(self.scales)} values), "
             f"rotate {min(self.angles):g} to {max(self.angles):g} deg, jitter {self.jitter2}")
        return "none" if self == TRANSFORM_SETS["none"] else s


TRANSFORM_SETS: dict[str, TransformSet] = {
    # lucent.optvis.transform.standard_transforms
    "lucent": TransformSet(
        pad=12, pad_mode="constant", pad_value=0.5, jitter=8,
        scales=tuple(1 + (i - 5) / 50.0 for i in range(11)),
        angles=tuple(float(a) for a in list(range(-10, 11)) + 5 * [0]),
        jitter2=4),
    # the seed's published code
    "seed": TransformSet(
        pad=16, pad_mode="reflect", pad_value=0.0, jitter=8,
        scales=tuple(n / 100 for n in range(80, 120)),
        angles=tuple(float(a) for a in range(-10, 11)),
        jitter2=2),
    "none": TransformSet(pad=0, pad_mode="constant", pad_value=0.0, jitter=0, scales=(1.0,),
                         angles=(0.0,), jitter2=0),
}


@dataclass(frozen=True)
class Draw:
    """The random parameters of one step."""
    shift1: tuple[int, int]
    scale: float
    angle: float
    shift2: tuple[int, int]


def sample(ts: TransformSet, rng: np.random.Generator) -> Draw:
    """One step's parameters, in lucent's order of draws."""
    def shift(d: int) -> tuple[int, int]:
        return (int(rng.integers(d)), int(rng.integers(d))) if d > 1 else (0, 0)

    s1 = shift(ts.jitter)
    scale = float(ts.scales[rng.integers(len(ts.scales))])
    angle = float(ts.angles[rng.integers(len(ts.angles))])
    return Draw(s1, scale, angle, shift(ts.jitter2))


def pad(x: torch.Tensor, ts: TransformSet) -> torch.Tensor:
    if ts.pad <= 0:
        return x
    value = ts.pad_value if ts.pad_mode == "constant" else None
    return F.pad(x, [ts.pad] * 4, mode=ts.pad_mode, value=value)


def _warp(x: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """Warp by the pixel-space affine ``m`` (dst = m @ src), as kornia 0.4's warp_affine."""
    _, _, h, w = x.shape
    norm = np.array([[2.0 / (w - 1), 0, -1], [0, 2.0 / (h - 1), -1], [0, 0, 1]])
    m3 = np.vstack([m, [0, 0, 1]])
    theta = np.linalg.inv(norm @ m3 @ np.linalg.inv(norm))[:2]
    theta_t = torch.as_tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    if dx == 0 and dy == 0:
        return x
    return _warp(x, np.array([[1.0, 0, dx], [0, 1.0, dy]]))


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre (kornia's get_rotation_matrix2d convention)."""
    if degrees == 0:
        return x
    _, _, h, w = x.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a = np.deg2rad(degrees)
    cos, sin = np.cos(a), np.sin(a)
    m = np.array([[cos, sin, (1 - cos) * cx - sin * cy],
                  [-sin, cos, sin * cx + (1 - cos) * cy]])
    return _warp(x, m)


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize by ``factor`` (size rounded up), padding back when it shrank, as lucent does."""
    if factor == 1.0:
        return x
    h, w = x.shape[2:]
    new_h, new_w = (int(np.ceil(factor * d)) for d in (h, w))
    pad_x = max(0, int(np.ceil((w - new_w) / 2)))
    pad_y = max(0, int(np.ceil((h - new_h) / 2)))
    out = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=True)
    # lucent pads [pad_y, pad_x] * 2: left/right by pad_y, top/bottom by pad_x
    return F.pad(out, [pad_y, pad_x, pad_y, pad_x])


def apply(x: torch.Tensor, ts: TransformSet, draw: Draw) -> torch.Tensor:
    """pad -> jitter -> scale -> rotate -> jitter, lucent's standard pipeline."""
    x = pad(x, ts)
    x = translate(x, *draw.shift1)
    x = scale(x, draw.scale)
    x = rotate(x, draw.angle)
    return translate(x, *draw.shift2)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation, as for every timm model fvds renders."""
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to the model's input size (lucent's Upsample, align_corners=True)."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
