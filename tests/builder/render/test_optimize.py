from __future__ import annotations

import numpy as np
import pytest
import torch

from fvds.builder.render import activation_of, render_units, resolve_device, truncated
from fvds.builder.render.optimize import derive_seed
from fvds.errors import BadInput

LAYER = "layer1.0.conv2"


def test_result_shapes_and_provenance(tiny_model, render_cfg):
    r = render_units(tiny_model, LAYER, [0, 3, 5], render_cfg, seed=0)
    assert r.images.shape == (3, 32, 32, 3) and r.images.dtype == np.uint8
    assert r.activations.shape == (3,) and r.activations.dtype == np.float32
    assert r.units == [0, 3, 5] and r.seed == derive_seed(0, LAYER)
    # the stored activation is what the stored image reaches, reproducible from the PNG
    np.testing.assert_allclose(activation_of(tiny_model, LAYER, r.units, r.images, render_cfg),
                               r.activations, rtol=1e-5, atol=1e-6)


def test_same_inputs_give_identical_bytes(tiny_model, render_cfg):
    a = render_units(tiny_model, LAYER, [1, 2], render_cfg, seed=5)
    b = render_units(tiny_model, LAYER, [1, 2], render_cfg, seed=5)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.activations.tobytes() == b.activations.tobytes()
    c = render_units(tiny_model, LAYER, [1, 2], render_cfg, seed=6)
    assert a.images.tobytes() != c.images.tobytes()


def test_batch_equals_units_rendered_one_at_a_time(tiny_model, render_cfg):
    units = [0, 4, 7, 9]
    batch = render_units(tiny_model, LAYER, units, render_cfg, seed=0)
    for i, u in enumerate(units):
        alone = render_units(tiny_model, LAYER, [u], render_cfg, seed=0)
        np.testing.assert_allclose(alone.activations[0], batch.activations[i], rtol=1e-3,
                                   atol=1e-4)
        assert np.abs(alone.images[0].astype(int) - batch.images[i].astype(int)).max() <= 1


@pytest.mark.parametrize("objective", ["neuron", "channel"])
def test_optimisation_raises_the_objective(tiny_model, render_cfg, objective):
    cfg0 = render_cfg.model_copy(update={"objective": objective, "steps": 1, "lr": 1e-9})
    cfg = render_cfg.model_copy(update={"objective": objective, "steps": 24})
    units = [0, 1, 2, 3]
    start = render_units(tiny_model, "layer2.0.conv2", units, cfg0, seed=0).activations
    end = render_units(tiny_model, "layer2.0.conv2", units, cfg, seed=0).activations
    # a random network has dead units; the rest must climb
    assert (end > start).sum() >= 3 and end.sum() > start.sum() + 0.1, (start, end)


def test_forward_stops_at_the_target_layer(tiny_model, render_cfg):
    ran = []
    later = dict(tiny_model.named_modules())["layer2.0.conv1"]
    handle = later.register_forward_hook(lambda *a: ran.append(1))
    try:
        render_units(tiny_model, LAYER, [0], render_cfg, seed=0)
    finally:
        handle.remove()
    assert ran == []
    # the truncated output is the layer's real output
    x = torch.rand(2, 3, 32, 32)
    full = {}
    h = dict(tiny_model.named_modules())[LAYER].register_forward_hook(
        lambda m, i, o: full.setdefault("out", o))
    with torch.no_grad():
        tiny_model(x)
    h.remove()
    with torch.no_grad(), truncated(tiny_model, LAYER) as features:
        assert torch.equal(features(x), full["out"])
    # and no hook is left behind
    assert not dict(tiny_model.named_modules())[LAYER]._forward_hooks


def test_pixel_param_and_no_transforms(tiny_model, render_cfg):
    cfg = render_cfg.model_copy(update={"param": "pixel", "transforms": "none"})
    r = render_units(tiny_model, LAYER, [0, 1], cfg, seed=0)
    assert r.images.shape == (2, 32, 32, 3)


def test_unavailable_device_is_bad_input():
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(BadInput, match="cuda:7"):
        resolve_device("cuda:7")
    assert resolve_device("cpu").type == "cpu"
