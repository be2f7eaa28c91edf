"""The settings of one fine-tuning run, validated when made."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fvds.errors import BadInput

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Changing these between an interrupted run and its rerun would not change the result, so a
# resume accepts them; every other field must match the run that wrote the resume state.
# The data is compared by its fingerprint instead, so a moved folder still resumes.
RESUME_FREE = ("device", "workers", "data", "out")


@dataclass(frozen=True)
class FinetuneConfig:
    # --- what to train
    data: str  # image folder (one sub-folder per class), local dataset folder or Hub dataset id
    out: str  # the .safetensors to write; its metadata goes to the .json beside it
    model: str = "seresnext50_32x4d"  # timm model name
    weights: str = "timm"  # base weights: "timm" (pretrained), "random" or a checkpoint path
    num_classes: int | None = None  # if given, must agree with the classes found in the data
    # --- data
    image_column: str | None = None  # dataset column with the images (None: the Image column)
    label_column: str | None = None  # dataset column with the labels (None: the ClassLabel one)
    train_split: str = "train"  # dataset split trained on
    val_split: str | None = None  # None: validation/valid/val if present, else held out
    val_fraction: float = 0.2  # held out of each class when the data has no validation split
    data_revision: str | None = None  # Hub dataset revision (branch, tag or commit)
    image_size: int | None = None  # train/eval side in pixels (None: the model's pretrained size)
    # --- optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4  # peak AdamW learning rate, reached after the warm-up
    weight_decay: float = 0.05
    warmup_epochs: int = 1  # linear warm-up, then cosine decay to min_lr
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    freeze_epochs: int = 0  # train only the new head for this many epochs first
    # --- run
    seed: int = 0  # seeds the new head, the validation hold-out, shuffling and augmentation
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: Precision = "auto"  # auto: mixed precision (bf16, else fp16) on CUDA, fp32 elsewhere
    workers: int = 4  # data-loading processes (0: load in the training process)

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_epochs", "freeze_epochs", "workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.num_classes is not None and self.num_classes < 2:
            problems.append(f"num_classes must be >= 2 (got {self.num_classes})")
        if self.image_size is not None and self.image_size < 16:
            problems.append(f"image_size must be >= 16 pixels (got {self.image_size})")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be between 0 and 1 (got {self.val_fraction})")
        if not self.lr > 0 or self.min_lr < 0 or self.weight_decay < 0:
            problems.append(f"lr must be > 0, min_lr and weight_decay >= 0 (got lr={self.lr}, "
                            f"min_lr={self.min_lr}, weight_decay={self.weight_decay})")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)} "
                            f"(got {self.precision!r})")
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            problems.append(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if not self.data:
            problems.append("data is required (an image folder or a dataset id)")
        if problems:
            raise BadInput("Invalid fine-tuning settings: " + "; ".join(problems) + ".")

    @property
    def out_path(self) -> Path:
        return Path(self.out).expanduser()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run that wrote its state."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE}
