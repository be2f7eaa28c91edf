"""Shared fixtures: tiny models and configs, and a guard that keeps tests off the network."""

from __future__ import annotations

import socket

import pytest
import torch

from fvds.builder.models import create_model
from fvds.config import load_config

TINY_MODEL = "test_resnet"  # timm's 0.5M-parameter test network, 15 conv layers


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Any connection outside 127.0.0.1 fails: nothing in the tests may download."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1", "::1", "localhost"
        ):
            raise ConnectionRefusedError(f"tests may not connect to {address!r}")
        return real_connect(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    return create_model(TINY_MODEL, "random", seed=0)


def tiny_render_overrides(**extra) -> dict:
    """Render settings small enough for a test: 32 px, 6 steps."""
    base = {"render.size": 32, "render.model_input_size": 32, "render.steps": 6,
            "render.batch_size": 4, "render.device": "cpu"}
    base.update(extra)
    return base


@pytest.fixture()
def render_cfg():
    return load_config(overrides=tiny_render_overrides()).render


def tiny_config_overrides(**extra) -> dict:
    """A whole build in seconds: timm's test_resnet, 3 layers x 3 units, 32 px, 3 steps."""
    base = {"model.name": TINY_MODEL, "units.layers": ["conv1.0", "layer1.0.conv2",
                                                       "layer2.0.conv2"],
            "units.per_layer": 3, **tiny_render_overrides(**{"render.steps": 3,
                                                             "render.batch_size": 2}),
            "embedding.pixels_size": 8, "dataset.shard_rows": 5, "dataset.row_group_rows": 2,
            "dataset.name": "fvds-tiny"}
    base.update(extra)
    return base


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 5-class head checkpoint of the tiny model, as `fvds finetune` would write."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "tiny-finetuned.safetensors"
    model = create_model(TINY_MODEL, "random", num_classes=5, seed=11)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def tiny_config(checkpoint, **extra):
    stages = [{"name": "random", "weights": "random"},
              {"name": "finetuned", "weights": str(checkpoint)}]
    return load_config(overrides={**tiny_config_overrides(**extra), "stages": stages})


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_checkpoint):
    """A finished dataset folder: two stages (random, finetuned) x 3 layers x 3 units."""
    from fvds.builder.pipeline import build

    out = tmp_path_factory.mktemp("tiny") / "dataset"
    build(tiny_config(tiny_checkpoint), out, quiet=True, log=lambda m: None)
    return out
