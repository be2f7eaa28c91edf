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
