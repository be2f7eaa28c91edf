from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fvds.builder import models
from fvds.builder.models import create_model, load_stage, state_dict_sha256
from fvds.config import StageConfig
from fvds.errors import BadInput, FvdsError

TINY = "test_resnet"


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model(TINY, "random", seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after), "creating a model must not consume the global RNG"
    b = create_model(TINY, "random", seed=1)
    c = create_model(TINY, "random", seed=2)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256(c)


def test_models_are_frozen_and_in_eval_mode(tiny_model):
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip(tmp_path, suffix):
    src = create_model(TINY, "random", num_classes=5, seed=7)
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    # num_classes is read from the checkpoint's classifier when the stage does not give it
    loaded = load_stage(TINY, StageConfig(name="finetuned", weights=str(path)))
    assert loaded.model.get_classifier().out_features == 5
    assert loaded.sha256 == state_dict_sha256(src)


def test_wrapped_torch_checkpoint(tmp_path):
    src = create_model(TINY, "random", seed=3)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
                "epoch": 4}, path)
    assert state_dict_sha256(create_model(TINY, str(path))) == state_dict_sha256(src)


def test_mismatched_checkpoint_lists_the_mismatches(tmp_path):
    state = dict(create_model(TINY, "random", num_classes=5).state_dict())
    del state["conv1.0.weight"]
    state["extra.bias"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(BadInput) as err:
        create_model(TINY, str(path), num_classes=10)
    msg = str(err.value)
    assert "missing: conv1.0.weight" in msg
    assert "unexpected: extra.bias" in msg
    assert "fc.weight (5, " in msg and "!= (10, " in msg


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_missing_checkpoint(tmp_path, content):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput, match="x.pth"):
        create_model(TINY, str(path))


def test_non_state_dict_pickle(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(BadInput, match="not a state dict"):
        create_model(TINY, str(path))


def test_unknown_model_names_close_matches():
    with pytest.raises(BadInput, match="seresnext50_32x4d"):
        create_model("seresnext50_32x4", "random")


def test_timm_weights_resolve_to_the_hub_without_downloading(monkeypatch, tmp_path):
    source = models.pretrained_source("seresnext50_32x4d")
    assert source == "hf-hub:timm/seresnext50_32x4d.racm_in1k"
    # Offline and with an empty cache, loading must fail with a message, not download.
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FvdsError, match="pretrained weights for 'test_resnet'"):
        create_model(TINY, "timm")
