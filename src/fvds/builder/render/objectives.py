"""Objectives: the value a unit reaches, per image, from the target layer's output.

``acts`` is (B, C, H, W) and ``units`` (B,) holds the channel image i must drive. The
per-image values are summed into the loss, so each image gets exactly the gradient it would
get alone (the model is in eval mode, so images in a batch never interact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def neuron(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The unit's pre-activation at the centre position (what the seed's code optimised).

    Follows lucent's indexing: row ``W // 2``, column ``H // 2`` (the bottom-right of the
    central 2x2 for even sizes).
    """
    _, _, h, w = acts.shape
    batch = torch.arange(acts.shape[0], device=acts.device)
    return acts[batch, units, w // 2, h // 2]


def channel(acts: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The unit's pre-activation averaged over all positions."""
    batch = torch.arange(acts.shape[0], device=acts.device)
    return acts[batch, units].mean(dim=(-2, -1))


OBJECTIVES: dict[str, Objective] = {"neuron": neuron, "channel": channel}
