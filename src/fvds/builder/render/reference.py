"""torch-lucent's ``render_vis`` for one unit, fed fvds's initial noise and transform draws.

The reference fvds is tested and benchmarked against: with the same noise, fvds's batched
renderer must give lucent's image, unit by unit. Needs torch-lucent 0.1.8 (the ``dev`` extra);
nothing else in fvds imports it.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from torch import nn

from fvds.builder.render import transforms as T
from fvds.builder.render.optimize import derive_seed
from fvds.errors import FvdsError


def lucent_render(model: nn.Module, layer: str, unit: int, cfg, seed: int,
                  matched: bool = True) -> np.ndarray:
    """The uint8 image (H, W, 3) lucent renders for ``unit`` of ``layer``.

    ``matched``: lucent starts from the noise fvds gives this unit and sees the transforms
    fvds draws for this layer; otherwise it draws its own (seeded by the unit).
    """
    try:
        from lucent.optvis import objectives, param, render
    except ImportError:
        raise FvdsError("The lucent reference needs torch-lucent: pip install -e '.[dev]'"
                        ) from None
    job_seed = derive_seed(seed, layer)
    objective = (objectives.neuron if cfg.objective == "neuron" else objectives.channel)(
        layer.replace(".", "_"), unit)

    def run() -> np.ndarray:
        images = render.render_vis(
            model, objective, param_f=lambda: param.image(cfg.size), thresholds=(cfg.steps,),
            show_image=False, progress=False, fixed_image_size=cfg.model_input_size)
        return (images[-1][0] * 255).round().clip(0, 255).astype(np.uint8)

    if not matched:
        torch.manual_seed(unit)
        np.random.seed(unit)
        return run()
    rng = np.random.default_rng(job_seed)
    ts = T.TRANSFORM_SETS[cfg.transforms]
    draws: list[float] = []
    for _ in range(cfg.steps):
        d = T.sample(ts, rng)  # in lucent's order of np.random.choice calls
        draws += [*d.shift1, d.scale, d.angle, *d.shift2]
    torch.manual_seed(derive_seed(job_seed, unit))  # lucent draws its spectrum from here
    with mock.patch("numpy.random.choice", side_effect=draws):
        return run()
