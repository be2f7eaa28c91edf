"""Activation maximisation of many units of one layer at once.

A job is (stage, layer, units). Image i of the batch drives unit ``units[i]``; the forward
pass stops at the target layer; model parameters get no gradients. On CUDA the model runs in
bf16 autocast and channels_last; the image parametrisation stays fp32.

Seeding: the job's seed depends on (global seed, layer) and each unit's initial noise on
(job seed, unit), never on the stage or the batch. So the same unit starts from the same noise
and sees the same transforms in every stage (a controlled comparison through training), and a
unit's image does not depend on which other units shared its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fvds.builder.render import param as P
from fvds.builder.render import transforms as T
from fvds.builder.render.objectives import OBJECTIVES
from fvds.errors import BadInput


@dataclass(frozen=True)
class JobResult:
    layer: str
    units: list[int]
    images: np.ndarray  # (B, size, size, 3) uint8 RGB
    activations: np.ndarray  # (B,) float32: objective on the stored image, no transforms
    seed: int  # the job's seed


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and platforms."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; bad input for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise BadInput(f"Device '{name}' is not available on this machine (available: "
                       f"{', '.join(have)}, auto).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"Device '{name}' is not available on this machine (available: "
                       f"{', '.join(have)}, auto).")
    return dev


class _Stop(Exception):
    """Raised by the target layer's hook: nothing after it runs."""


@contextmanager
def truncated(model: nn.Module, layer: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function image -> target layer output that runs the model only up to that layer."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise BadInput(f"Layer '{layer}' is not a module of {type(model).__name__}.")
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(out)
        raise _Stop

    handle = module.register_forward_hook(hook)

    def features(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        try:
            model(x)
        except _Stop:
            return captured[0]
        raise RuntimeError(f"Layer '{layer}' did not run in the forward pass.")

    try:
        yield features
    finally:
        handle.remove()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a frozen model to the device, channels_last on CUDA."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def numerics(cfg, device: torch.device) -> str:
    """The kind of device and precision a job renders with, e.g. ``cuda bf16``: images made
    under different numerics differ slightly, so one dataset uses one."""
    return f"{device.type} {'bf16' if _autocast_dtype(cfg, device) else 'fp32'}"


def _autocast_dtype(cfg, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def render_units(model: nn.Module, layer: str, units: list[int], cfg, seed: int,
                 device: torch.device | None = None) -> JobResult:
    """Render ``units`` of ``layer`` together; ``cfg`` is a :class:`fvds.config.RenderConfig`.

    ``model`` must already be on ``device`` (see :func:`prepare_model`) and frozen.
    """
    device = device or next(model.parameters()).device
    job_seed = derive_seed(seed, layer)
    ts = T.TRANSFORM_SETS[cfg.transforms]
    rng = np.random.default_rng(job_seed)
    unit_t = torch.as_tensor(units, device=device)
    objective = OBJECTIVES[cfg.objective]
    amp = _autocast_dtype(cfg, device)
    channels_last = device.type == "cuda"

    params = P.init_params(cfg.param, cfg.size, [derive_seed(job_seed, u) for u in units],
                           cfg.init_sd).to(device).requires_grad_(True)
    opt = torch.optim.Adam([params], lr=cfg.lr)

    def model_input(img: torch.Tensor) -> torch.Tensor:
        x = T.resize(T.normalize(img), cfg.model_input_size)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    with truncated(model, layer) as features:
        for _ in range(cfg.steps):
            img = P.image_from_params(params, cfg.param, cfg.size, cfg.decorrelate)
            x = model_input(T.apply(img, ts, T.sample(ts, rng)))
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                acts = features(x)
            loss = -objective(acts.float(), unit_t).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    with torch.no_grad():
        img = P.image_from_params(params, cfg.param, cfg.size, cfg.decorrelate)
        images = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
    images = images.numpy()
    # The activation is measured on the stored (quantised) image, so anyone can reproduce it
    # from the PNG.
    return JobResult(layer=layer, units=list(units), images=images,
                     activations=activation_of(model, layer, units, images, cfg), seed=job_seed)


def activation_of(model: nn.Module, layer: str, units: list[int], images: np.ndarray, cfg,
                  ) -> np.ndarray:
    """The objective reached by given uint8 images (B, H, W, 3), without random transforms."""
    device = next(model.parameters()).device
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255
    x = T.resize(T.normalize(x), cfg.model_input_size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), truncated(model, layer) as features:
        acts = features(x)
    return OBJECTIVES[cfg.objective](acts.float(), torch.as_tensor(units, device=device)
                                     ).cpu().numpy().astype(np.float32)
