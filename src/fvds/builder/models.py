"""Models at a training stage: timm architecture + weights from `random`, `timm` or a checkpoint.

Every model comes back in eval mode with frozen parameters, and every stage's weights are
identified by a SHA-256 of the state dict, so a dataset says exactly which weights it shows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fvds.errors import BadInput, FvdsError, close_matches

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class LoadedStage:
    name: str
    model: nn.Module
    weights: str  # as configured: random | timm | path
    sha256: str  # fingerprint of the state dict


def check_model_name(name: str) -> None:
    """Bad input unless timm knows the architecture."""
    import timm

    if not timm.is_model(name):
        raise BadInput(f"Unknown timm model '{name}'." + close_matches(name, timm.list_models())
                       + " See timm.list_models() for every name.")


def create_model(name: str, weights: str, num_classes: int | None = None, seed: int = 0,
                 ) -> nn.Module:
    """A frozen eval-mode timm model with weights from ``random``, ``timm`` or a checkpoint path.

    ``random`` is seeded and leaves the global RNG untouched, so the same seed gives the same
    weights in every process.
    """
    import timm

    check_model_name(name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
    elif weights == "timm":
        model = _create_pretrained(name, kwargs)
    else:
        state = load_state_dict(weights)
        if num_classes is None:
            num_classes = _head_size(name, state)
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
        check_state_dict(model, state, source=weights)
        model.load_state_dict(state)
    return freeze(model)


def _create_pretrained(name: str, kwargs: dict) -> nn.Module:
    import timm

    cfg = pretrained_source(name)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # offline, gated, or a network failure: say what was tried
        raise FvdsError(
            f"Could not load timm's pretrained weights for '{name}' from {cfg} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "They download through the Hugging Face Hub cache: go online once, or set "
            "HF_HUB_OFFLINE=0, or give a local checkpoint path as the stage's weights."
        ) from None


def pretrained_source(name: str) -> str:
    """Where timm would fetch pretrained weights for ``name`` (a Hub id or URL)."""
    import timm

    check_model_name(name)
    with torch.device("meta"):
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if not source:
        raise BadInput(f"timm has no pretrained weights for '{name}'. Use weights = 'random' "
                       "or a checkpoint path.")
    return f"hf-hub:{source}" if "://" not in str(source) and "/" in str(source) else str(source)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (loaded with ``weights_only``)."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"Checkpoint '{p}' does not exist. Stage weights are 'random', 'timm' or "
                       f"the path of a {'/'.join(CHECKPOINT_SUFFIXES)} state dict "
                       "(`fvds finetune` writes one).")
    if p.is_dir():
        raise BadInput(f"Checkpoint '{p}' is a directory; give a state-dict file.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"Checkpoint '{p}' could not be read as a state dict "
                       f"({type(e).__name__}). Accepted: .safetensors, or a torch .pth/.pt "
                       "holding a dict of tensors.") from None
    # Training scripts often wrap the weights; unwrap the common envelopes.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BadInput(f"Checkpoint '{p}' is not a state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _head_size(name: str, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes a checkpoint's classifier was trained for, if it has one."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    head = model.pretrained_cfg.get("classifier")
    weight = state.get(f"{head}.weight") if isinstance(head, str) else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                     show: int = 5) -> None:
    """Bad input listing the first missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch (checkpoint != model)", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{label}: {', '.join(items[:show])}{more}")
    raise BadInput(f"Checkpoint '{source}' does not match the model "
                   f"{type(model).__name__}: " + "; ".join(parts) + ". Check the model name "
                   "and num_classes of the stage.")


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict's names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_stage(model_name: str, stage, seed: int = 0) -> LoadedStage:
    """The model of one configured stage (``fvds.config.StageConfig``), fingerprinted."""
    model = create_model(model_name, stage.weights, stage.num_classes, seed=seed)
    return LoadedStage(stage.name, model, stage.weights, state_dict_sha256(model))


def check_stage_weights(stage) -> None:
    """Fail fast, before any rendering, on a stage whose checkpoint is missing or unreadable."""
    if stage.weights in ("random", "timm"):
        return
    if not Path(stage.weights).exists():
        raise BadInput(
            f"Stage '{stage.name}': checkpoint '{stage.weights}' does not exist. Weights are "
            "'random', 'timm' or a checkpoint path. To make a fine-tuned checkpoint run "
            "`fvds finetune --model MODEL --weights timm --data YOUR_DATA --out PATH`, then "
            f"give --stage {stage.name}=PATH (with the other stages) or set the path in "
            "the config.")


def check_checkpoint(model_name: str, stage) -> None:
    """Bad input, before any work, unless a checkpoint stage's file loads into the model."""
    import timm

    check_stage_weights(stage)
    if not stage.is_checkpoint:
        return
    state = load_state_dict(stage.weights)
    num_classes = stage.num_classes or _head_size(model_name, state)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):  # shapes only
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    check_state_dict(model, state, source=stage.weights)
