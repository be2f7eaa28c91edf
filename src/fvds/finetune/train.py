"""The fine-tuning run: base weights + a new head, trained with timm's own pieces.

AdamW from ``create_optimizer_v2`` (no weight decay on biases and norms), a per-step cosine
schedule with linear warm-up from ``create_scheduler_v2``, label-smoothed cross-entropy,
train/eval transforms from the model's pretrained config (``resolve_data_config`` +
``create_transform``), mixed precision on CUDA. The best epoch by validation accuracy (ties:
lower validation loss) is the result.

Seeding: the new head, the hold-out and each epoch's shuffling and augmentation derive from
(seed, epoch), and the global RNGs are restored afterwards. The random state at an epoch
boundary is therefore a function of the epoch number: a resumed run continues exactly where the
interrupted one stopped with nothing but model, optimizer, scheduler and scaler restored.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from fvds.builder.models import (
    check_model_name,
    create_model,
    load_state_dict,
    pretrained_source,
    state_dict_sha256,
)
from fvds.builder.render.optimize import derive_seed, resolve_device
from fvds.errors import BadInput
from fvds.finetune import checkpoint as ckpt
from fvds.finetune.config import FinetuneConfig
from fvds.finetune.data import LabelledImages, load_labelled_images


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # label-smoothed, mean over the epoch's samples
    train_accuracy: float  # on augmented training images
    val_loss: float  # plain cross-entropy
    val_accuracy: float
    lr: float  # learning rate at the end of the epoch
    seconds: float
    frozen_backbone: bool  # only the head was trained


@dataclass(frozen=True)
class FinetuneResult:
    checkpoint: Path
    metadata: dict[str, Any]  # as written to the JSON beside the checkpoint
    resumed_from: int  # epochs already done when this call started (0: a fresh run)

    @property
    def best_val_accuracy(self) -> float:
        return self.metadata["best_val_accuracy"]


def run_finetune(cfg: FinetuneConfig, *, overwrite: bool = False, fresh: bool = False,
                 progress: bool = True, console: Console | None = None,
                 on_epoch_end: Callable[[EpochMetrics], None] | None = None,
                 ) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` and write ``cfg.out`` plus its JSON.

    Resumes from the last finished epoch when an interrupted run of the same configuration
    left its state beside ``cfg.out`` (``fresh`` discards it). All input is checked before
    any training starts; bad input raises :class:`~fvds.errors.BadInput`.
    """
    console = console or Console(stderr=True)
    cfg = _absolute_paths(cfg)
    out = cfg.out_path.resolve()
    ckpt.check_output(out, overwrite)
    device = resolve_device(cfg.device)
    amp = _amp_dtype(cfg.precision, device)
    check_model_name(cfg.model)
    if cfg.weights not in ("timm", "random") and not Path(cfg.weights).is_file():
        load_state_dict(cfg.weights)  # bad input naming the path, before the data is read
    folder = ckpt.work_dir(out)
    if fresh:
        ckpt.discard(folder)
    state = ckpt.load_state(folder)
    if state is not None:
        _check_resumable(state, cfg, folder)

    with _bars(console, progress) as bars:
        task = bars.add_task("checking images", total=None, loss="") if bars else None
        data = load_labelled_images(
            cfg, on_item=(lambda done, total: bars.update(task, completed=done, total=total))
            if bars else None)
    if state is not None and _content(state["data"]) != _content(data.fingerprint):
        raise BadInput(f"The data '{cfg.data}' changed since the interrupted run in "
                       f"'{folder}' began (fingerprint {_short(state['data'])} -> "
                       f"{_short(data.fingerprint)}). Pass --fresh to start over on it.")
    _log_data(console, cfg, data)

    model, base_sha = build_model(cfg, len(data.classes))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    data_cfg = _data_config(model, cfg.image_size)
    train_loader, val_loader, generator = _loaders(data, data_cfg, cfg, device)

    optimizer, scheduler, scaler, criterion = _optimisation(model, cfg, len(train_loader),
                                                            device, amp)
    metrics: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start, num_updates = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        metrics, best = state["metrics"], state["best"]
        start, num_updates = state["epoch"], state["num_updates"]
        scheduler.step_update(num_updates)
        console.print(f"Resuming from epoch {start} of {cfg.epochs} (state in '{folder}').",
                      highlight=False, soft_wrap=True)

    weights_meta = {"format": "pt", "fvds.model": cfg.model,
                    "fvds.classes": json.dumps(data.classes)}
    try:
        with _bars(console, progress) as bars:
            for epoch in range(start, cfg.epochs):
                frozen = epoch < cfg.freeze_epochs
                _set_trainable(model, frozen)
                t0 = time.perf_counter()
                task = bars.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(train_loader),
                                     loss="") if bars else None
                tick = (lambda loss, t=task: bars.update(t, advance=1, loss=f"loss {loss:.4f}")
                        ) if bars else None
                with _rng_scope(derive_seed(cfg.seed, "epoch", epoch), device):
                    generator.manual_seed(derive_seed(cfg.seed, "loader", epoch))
                    train_loss, train_acc, num_updates = _train_epoch(
                        model, train_loader, criterion, optimizer, scheduler, scaler, device,
                        amp, num_updates, tick)
                val_loss, val_acc = evaluate(model, val_loader, device, amp)
                m = EpochMetrics(epoch + 1, train_loss, train_acc, val_loss, val_acc,
                                 optimizer.param_groups[0]["lr"], time.perf_counter() - t0,
                                 frozen)
                metrics.append(dataclasses.asdict(m))
                improved = best is None or (val_acc, -val_loss) > (best["val_accuracy"],
                                                                    -best["val_loss"])
                if improved:
                    best = {"epoch": m.epoch, "val_accuracy": val_acc, "val_loss": val_loss,
                            "file": f"best-e{m.epoch}.safetensors"}
                    folder.mkdir(parents=True, exist_ok=True)
                    ckpt.save_weights(folder / best["file"], model.state_dict(), weights_meta)
                ckpt.save_state(folder, {
                    "config": cfg.resume_key(), "data": data.fingerprint, "epoch": epoch + 1,
                    "num_updates": num_updates, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "metrics": metrics, "best": best})
                console.print(
                    f"epoch {m.epoch}/{cfg.epochs}: train loss {train_loss:.4f}, "
                    f"val loss {val_loss:.4f}, val accuracy {val_acc:.4f}"
                    + (" (best)" if improved else "") + (" [head only]" if frozen else ""),
                    highlight=False, soft_wrap=True)
                if on_epoch_end is not None:
                    on_epoch_end(m)
    except BaseException:
        if metrics:
            console.print(f"Stopped. {len(metrics)} finished epoch(s) are saved in "
                          f"'{folder}': rerun the same command to resume.",
                          highlight=False, soft_wrap=True)
        raise

    assert best is not None  # epochs >= 1, so at least one epoch ran or was restored
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / best["file"])))
    metadata = _metadata(cfg, data, data_cfg, metrics, best, base_sha, state_dict_sha256(model),
                         out, device, amp, resumed=state is not None)
    ckpt.finish(folder, best["file"], out, metadata)
    console.print(f"Best validation accuracy {best['val_accuracy']:.4f} at epoch "
                  f"{best['epoch']}: wrote '{out}' and '{ckpt.metadata_path(out).name}'.",
                  highlight=False, soft_wrap=True)
    return FinetuneResult(out, metadata, resumed_from=0 if state is None else state["epoch"])


def build_model(cfg: FinetuneConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The base model with a ``num_classes`` head, trainable; and the base weights' SHA-256.

    The fingerprint is of the base weights as a build loads them (original head included), so
    it equals the ``sha256`` a build records for the stage made from the same weights.
    """
    model = create_model(cfg.model, cfg.weights, seed=cfg.seed)
    base_sha = state_dict_sha256(model)
    if getattr(model, "num_classes", None) != num_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "head"))
            model.reset_classifier(num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train(), base_sha


def evaluate(model: nn.Module, loader, device: torch.device, amp: torch.dtype | None,
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = _to_device(x, y, device)
            with _autocast(device, amp):
                logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1)


# --- pieces of the run

def _absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """Local paths recorded absolute, so the metadata says which files were used."""
    if cfg.weights not in ("timm", "random"):
        cfg = dataclasses.replace(cfg, weights=str(Path(cfg.weights).expanduser().resolve()))
    if Path(cfg.data).expanduser().exists():
        cfg = dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))
    return cfg


def _optimisation(model: nn.Module, cfg: FinetuneConfig, updates_per_epoch: int,
                  device: torch.device, amp: torch.dtype | None):
    """timm's AdamW (no decay on biases and norms), per-step cosine schedule with warm-up,
    label-smoothed loss; a gradient scaler that only acts under fp16."""
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr / 100, min_lr=cfg.min_lr, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    criterion = (LabelSmoothingCrossEntropy(cfg.label_smoothing) if cfg.label_smoothing > 0
                 else nn.CrossEntropyLoss())
    return optimizer, scheduler, scaler, criterion


def _train_epoch(model, loader, criterion, optimizer, scheduler, scaler, device, amp,
                 num_updates: int, tick) -> tuple[float, float, int]:
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        x, y = _to_device(x, y, device)
        with _autocast(device, amp):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        num_updates += 1
        scheduler.step_update(num_updates)
        loss_sum += loss.item() * len(y)
        correct += (logits.detach().argmax(1) == y).sum().item()
        total += len(y)
        if tick is not None:
            tick(loss.item())
    return loss_sum / max(total, 1), correct / max(total, 1), num_updates


def _set_trainable(model: nn.Module, head_only: bool) -> None:
    """Head only: the backbone gets no gradients (AdamW skips it, weight decay included) and
    its batch-norm statistics stay as they are."""
    head = model.get_classifier()
    for p in model.parameters():
        p.requires_grad_(not head_only)
    if head_only:
        model.eval()
        for p in head.parameters():
            p.requires_grad_(True)
        head.train()
    else:
        model.train()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device):
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


@contextmanager
def _rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch, numpy and random (timm's transforms use all three) for a block, then put
    the caller's generators back: library code must not leave the global RNG changed."""
    py, npy = random.getstate(), np.random.get_state()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class _Images(torch.utils.data.Dataset):
    def __init__(self, items, opener, transform) -> None:
        self.items, self.opener, self.transform = items, opener, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item, label = self.items[i]
        return self.transform(self.opener(item)), label


def _data_config(model: nn.Module, image_size: int | None) -> dict[str, Any]:
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=model)
    if image_size is not None:
        data_cfg["input_size"] = (3, image_size, image_size)
    return data_cfg


def _loaders(data: LabelledImages, data_cfg: dict[str, Any], cfg: FinetuneConfig,
             device: torch.device):
    from timm.data import create_transform

    train_tf = create_transform(**data_cfg, is_training=True)
    val_tf = create_transform(**data_cfg, is_training=False)
    generator = torch.Generator()
    common = {"batch_size": cfg.batch_size, "num_workers": cfg.workers,
              "pin_memory": device.type == "cuda"}
    # Dropping a ragged last batch avoids a batch of one, which batch norm cannot train on.
    train = torch.utils.data.DataLoader(
        _Images(data.train, data.opener, train_tf), shuffle=True, generator=generator,
        drop_last=len(data.train) > cfg.batch_size, **common)
    # A loader without a generator of its own draws its workers' seed from the global RNG.
    val = torch.utils.data.DataLoader(_Images(data.val, data.opener, val_tf), shuffle=False,
                                      generator=torch.Generator().manual_seed(0), **common)
    return train, val, generator


@contextmanager
def _bars(console: Console, enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                  console=console) as bars:
        yield bars


def _check_resumable(state: dict[str, Any], cfg: FinetuneConfig, folder: Path) -> None:
    then, now = state["config"], cfg.resume_key()
    if then == now:
        return
    diffs = [f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(then) | set(now))
             if then.get(k) != now.get(k)]
    raise BadInput(f"An interrupted run in '{folder}' used other settings ({'; '.join(diffs)}). "
                   "Rerun with its settings to resume it, or pass --fresh to discard it and "
                   "start over.")


def _log_data(console: Console, cfg: FinetuneConfig, data: LabelledImages) -> None:
    console.print(f"Data '{cfg.data}': {len(data.classes)} classes "
                  f"({', '.join(data.classes)}), {len(data.train)} training and {len(data.val)} "
                  f"validation images (validation: {data.val_from}).",
                  highlight=False, soft_wrap=True)
    if data.unlabelled:
        console.print(f"Left out {data.unlabelled} dataset row(s) without a label.",
                      highlight=False, soft_wrap=True)
    if data.skipped:
        shown = ", ".join(data.skipped[:5]) + (" ..." if len(data.skipped) > 5 else "")
        console.print(f"Skipped {len(data.skipped)} unreadable image(s): {shown}",
                      highlight=False, soft_wrap=True)


def _content(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """What identifies the data, less where it lies: a moved folder still resumes."""
    return {k: v for k, v in fingerprint.items() if k != "path"}


def _short(fingerprint: dict[str, Any]) -> str:
    value = fingerprint.get("sha256") or fingerprint.get("revision") or fingerprint.get("splits")
    return str(value)[:16]


def _metadata(cfg: FinetuneConfig, data: LabelledImages, data_cfg: dict[str, Any],
              metrics: list[dict[str, Any]], best: dict[str, Any], base_sha: str, sha: str,
              out: Path, device: torch.device, amp: torch.dtype | None, resumed: bool,
              ) -> dict[str, Any]:
    import timm

    from fvds import __version__

    source = pretrained_source(cfg.model) if cfg.weights == "timm" else None
    return {
        "format": ckpt.METADATA_FORMAT,
        "model": cfg.model,
        "num_classes": len(data.classes),
        "classes": data.classes,  # names, in the order of the head's outputs
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "best_val_loss": best["val_loss"],
        "epochs": metrics,
        "checkpoint": {"file": out.name, "sha256": sha},  # file_sha256 is added on writing
        "base_weights": {"weights": cfg.weights, "source": source, "sha256": base_sha},
        "data": {"source": cfg.data, "fingerprint": data.fingerprint,
                 "validation": data.val_from, "classes": data.counts(),
                 "skipped_unreadable": len(data.skipped),
                 "skipped_examples": data.skipped[:20],
                 "skipped_unlabelled": data.unlabelled},
        "input": {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
        "config": cfg.to_dict(),
        "run": {"device": str(device), "resumed": resumed,
                "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "versions": {"fvds": __version__, "torch": torch.__version__,
                     "timm": timm.__version__},
    }
