"""Conv layers of a model in depth order, selection by globs, and the units chosen in each.

A layer is an ``nn.Conv2d`` named by its module path. Depth order is the order in which the
convs run in a forward pass (registration order can differ, e.g. a downsample branch), and
``layer_index`` is the position in that order among *all* conv layers, so it does not change
when the selection does.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fvds.errors import BadInput, close_matches


@dataclass(frozen=True)
class Layer:
    name: str  # module path, e.g. "layer2.0.conv2"
    index: int  # depth order among all conv layers
    channels: int  # output channels (units)


def conv_layers(model: nn.Module, probe_size: int = 64) -> list[Layer]:
    """Every ``nn.Conv2d`` of ``model`` in the order a forward pass runs them."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
               for n, m in convs.items()]
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            # a model built on the meta device runs shapes only: enumeration costs nothing
            device = p.device if p is not None else "cpu"
            model(torch.zeros(1, 3, probe_size, probe_size, device=device))
    except Exception:
        order = []  # a model that cannot run at this size: fall back to registration order
    finally:
        for h in handles:
            h.remove()
    seen = list(dict.fromkeys(order))
    seen += [n for n in convs if n not in seen]  # convs the probe did not reach
    return [Layer(n, i, convs[n].out_channels) for i, n in enumerate(seen)]


def select_layers(layers: list[Layer], include: tuple[str, ...] | list[str],
                  exclude: tuple[str, ...] | list[str] = ()) -> list[Layer]:
    """The layers matching any include glob and no exclude glob, in depth order.

    A glob that matches nothing is bad input naming it and the closest layer names.
    """
    names = [layer.name for layer in layers]
    for glob in include:
        if not fnmatch.filter(names, glob):
            raise BadInput(f"Layer glob '{glob}' matches no conv layer of the model."
                           + close_matches(glob, names)
                           + f" The model has {len(names)} conv layers, e.g. "
                           f"{', '.join(names[:4])}, ..., {names[-1]}.")
    chosen = [layer for layer in layers if any(fnmatch.fnmatchcase(layer.name, g)
                                               for g in include)]
    chosen = [layer for layer in chosen if not any(fnmatch.fnmatchcase(layer.name, g)
                                                   for g in exclude)]
    if not chosen:
        raise BadInput(f"The exclude globs {list(exclude)} remove every selected layer.")
    return chosen


def select_units(layer: Layer, per_layer: int, how: str, seed: int) -> list[int]:
    """``min(per_layer, channels)`` channel indices, sorted.

    Depends only on the layer and the seed, never on the stage's weights: the same units are
    rendered in every stage so that a unit can be followed through training.
    """
    k = min(per_layer, layer.channels)
    if how == "first":
        return list(range(k))
    if how == "random":
        rng = np.random.default_rng([seed, _stable_hash(layer.name)])
        return sorted(int(u) for u in rng.choice(layer.channels, size=k, replace=False))
    raise BadInput(f"Unit selection '{how}' is not one of: first, random.")


def _stable_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
