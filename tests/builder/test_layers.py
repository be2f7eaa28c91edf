from __future__ import annotations

import pytest
import timm
import torch

from fvds.builder.layers import conv_layers, select_layers, select_units
from fvds.builder.models import create_model
from fvds.config import SEED_LAYERS
from fvds.errors import BadInput


def test_conv_layers_in_forward_order(tiny_model):
    layers = conv_layers(tiny_model)
    modules = dict(tiny_model.named_modules())
    assert [layer.index for layer in layers] == list(range(len(layers)))
    assert all(isinstance(modules[layer.name], torch.nn.Conv2d) for layer in layers)
    assert all(layer.channels == modules[layer.name].out_channels for layer in layers)
    names = [layer.name for layer in layers]
    assert names.index("layer1.0.conv1") < names.index("layer1.0.conv2") < names.index(
        "layer2.0.conv1")


def test_seed_layer_set_of_seresnext50_is_49_layers():
    with torch.device("meta"):  # shapes only: no weights are initialised
        model = timm.create_model("seresnext50_32x4d")
    chosen = select_layers(conv_layers(model), SEED_LAYERS)
    names = [layer.name for layer in chosen]
    assert len(names) == 49
    assert names[0] == "conv1" and names[-1] == "layer4.2.conv3"
    assert not any(".se." in n or "downsample" in n for n in names)
    assert [layer.index for layer in chosen] == sorted(layer.index for layer in chosen)


def test_glob_that_matches_nothing_names_close_layers(tiny_model):
    with pytest.raises(BadInput) as err:
        select_layers(conv_layers(tiny_model), ["layer1.0.conv9"])
    assert "'layer1.0.conv9'" in str(err.value)
    assert "layer1.0.conv1" in str(err.value)


def test_exclude_globs(tiny_model):
    chosen = select_layers(conv_layers(tiny_model), ["layer*"], exclude=["*downsample*"])
    assert chosen and not any("downsample" in layer.name for layer in chosen)
    with pytest.raises(BadInput, match="remove every selected layer"):
        select_layers(conv_layers(tiny_model), ["layer1.*"], exclude=["layer1.*"])


@pytest.mark.parametrize("how", ["first", "random"])
def test_units_are_identical_across_stages(how):
    stage_a = create_model("test_resnet", "random", seed=0)
    stage_b = create_model("test_resnet", "random", seed=99)
    for la, lb in zip(conv_layers(stage_a), conv_layers(stage_b), strict=True):
        ua, ub = select_units(la, 5, how, seed=4), select_units(lb, 5, how, seed=4)
        assert ua == ub and ua == sorted(ua) and len(set(ua)) == len(ua)
        assert len(ua) == min(5, la.channels) and all(0 <= u < la.channels for u in ua)


def test_random_units_depend_on_seed_and_cap_at_channels(tiny_model):
    layer = max(conv_layers(tiny_model), key=lambda layer: layer.channels)
    assert select_units(layer, 8, "random", 1) != select_units(layer, 8, "random", 2)
    assert select_units(layer, 10_000, "random", 1) == list(range(layer.channels))
