"""fvds's renderer against torch-lucent 0.1.8, the reference implementation."""

from __future__ import annotations

import collections
from unittest import mock

import numpy as np
import pytest
import torch

from fvds.builder.render import objectives as O
from fvds.builder.render import param as P
from fvds.builder.render import transforms as T

lucent_param = pytest.importorskip("lucent.optvis.param")
lucent_transform = pytest.importorskip("lucent.optvis.transform")
lucent_objectives = pytest.importorskip("lucent.optvis.objectives")


@pytest.mark.parametrize("size", [32, 37, 100])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_fourier_image_matches_lucent(size, decorrelate):
    torch.manual_seed(size)
    params, image_f = lucent_param.image(size, batch=3, fft=True, decorrelate=decorrelate)
    ours = P.image_from_params(params[0].detach(), "fft", size, decorrelate)
    torch.testing.assert_close(ours, image_f().detach(), rtol=1e-6, atol=1e-6)


def test_initial_spectrum_matches_lucent_shape_and_scale():
    torch.manual_seed(0)
    params, _ = lucent_param.image(37, batch=1, fft=True)
    ours = P.init_params("fft", 37, [0], sd=0.01)
    assert ours.shape == params[0].shape
    # same generator, same seed, same noise
    torch.testing.assert_close(ours, params[0].detach())


def test_pixel_image_matches_lucent():
    torch.manual_seed(1)
    params, image_f = lucent_param.image(24, batch=2, fft=False, decorrelate=True)
    ours = P.image_from_params(params[0].detach(), "pixel", 24, True)
    torch.testing.assert_close(ours, image_f().detach())


def _with_draw(value, fn, x):
    with mock.patch("numpy.random.choice", return_value=value):
        return fn(x)


@pytest.mark.parametrize("shift", [(0, 0), (3, 5), (7, 1)])
def test_jitter_matches_lucent(shift):
    x = torch.rand(2, 3, 40, 40)
    with mock.patch("numpy.random.choice", side_effect=list(shift)):
        ref = lucent_transform.jitter(8)(x)
    torch.testing.assert_close(T.translate(x, *shift), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("angle", [-10, -3, 0, 7, 10])
def test_rotate_matches_lucent(angle):
    x = torch.rand(2, 3, 45, 45)
    ref = _with_draw(angle, lucent_transform.random_rotate([angle]), x)
    torch.testing.assert_close(T.rotate(x, angle), ref, rtol=0, atol=5e-5)


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.0, 1.06, 1.19])
def test_scale_matches_lucent(factor):
    x = torch.rand(2, 3, 88, 88)
    ref = _with_draw(factor, lucent_transform.random_scale([factor]), x)
    out = T.scale(x, factor)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", ["lucent", "seed"])
def test_pad_and_normalize_match_lucent(name):
    ts = T.TRANSFORM_SETS[name]
    x = torch.rand(1, 3, 20, 20)
    ref = lucent_transform.pad(ts.pad, mode=ts.pad_mode, constant_value=ts.pad_value)(x)
    torch.testing.assert_close(T.pad(x, ts), ref)
    torch.testing.assert_close(T.normalize(x), lucent_transform.normalize()(x))


def _closure_values(fn) -> dict:
    return {name: cell.cell_contents
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False)}


def test_lucent_set_has_lucents_parameters():
    std = lucent_transform.standard_transforms
    ts = T.TRANSFORM_SETS["lucent"]
    assert _closure_values(std[0])["w"] == ts.pad
    assert _closure_values(std[1])["d"] == ts.jitter
    assert list(_closure_values(std[2])["scales"]) == list(ts.scales)
    assert collections.Counter(_closure_values(std[3])["angles"]) == collections.Counter(ts.angles)
    assert _closure_values(std[4])["d"] == ts.jitter2


@pytest.mark.parametrize("name", ["lucent", "seed"])
def test_draws_have_lucents_distribution(name):
    """Each parameter is uniform over the same values as lucent's np.random.choice draws."""
    ts = T.TRANSFORM_SETS[name]
    rng = np.random.default_rng(0)
    n = 20000
    draws = [T.sample(ts, rng) for _ in range(n)]
    expected = {
        "shift1": {(x, y): 1 / ts.jitter**2 for x in range(ts.jitter) for y in range(ts.jitter)},
        "scale": {s: c / len(ts.scales) for s, c in collections.Counter(ts.scales).items()},
        "angle": {a: c / len(ts.angles) for a, c in collections.Counter(ts.angles).items()},
        "shift2": {(x, y): 1 / ts.jitter2**2 for x in range(ts.jitter2)
                   for y in range(ts.jitter2)},
    }
    for field, probs in expected.items():
        counts = collections.Counter(getattr(d, field) for d in draws)
        assert set(counts) == set(probs), field
        for value, p in probs.items():
            # within 5 standard deviations of a binomial count
            assert abs(counts[value] - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1, (field, value)


def test_objectives_match_lucent():
    acts = torch.randn(1, 6, 7, 9)
    hook = lambda layer: acts  # noqa: E731  (lucent objectives take a layer -> tensor lookup)
    for unit in (0, 4):
        u = torch.tensor([unit])
        ref_n = lucent_objectives.neuron("x", unit)(hook)
        ref_c = lucent_objectives.channel("x", unit)(hook)
        torch.testing.assert_close(-O.neuron(acts, u).sum(), ref_n)
        torch.testing.assert_close(-O.channel(acts, u).sum(), ref_c)


def test_batched_objective_drives_unit_i_with_image_i():
    acts = torch.randn(3, 5, 4, 4)
    units = torch.tensor([4, 0, 2])
    vals = O.channel(acts, units)
    for i, u in enumerate(units.tolist()):
        torch.testing.assert_close(vals[i], acts[i, u].mean())


def test_full_render_matches_lucent_given_the_same_noise(tiny_model, render_cfg):
    """The whole loop (parametrisation, transforms, normalisation, resize, objective, Adam)
    reproduces lucent's render_vis, unit by unit, inside a batch."""
    import timm

    from fvds.builder.render import render_units
    from fvds.builder.render.reference import lucent_render

    cfg = render_cfg.model_copy(update={"steps": 5, "transforms": "lucent"})
    units = [1, 3, 6]
    ours = render_units(tiny_model, "layer1.0.conv2", units, cfg, seed=0)
    for i, unit in enumerate(units):
        fresh = timm.create_model("test_resnet")  # as a lucent user would: params trainable
        fresh.load_state_dict(tiny_model.state_dict())
        ref = lucent_render(fresh.eval(), "layer1.0.conv2", unit, cfg, seed=0)
        diff = np.abs(ref.astype(int) - ours.images[i].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (unit, diff.max(), diff.mean())
