"""`fvds finetune`: make the fine-tuned stage's checkpoint from base weights and labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fvds.commands._common import QuietOpt, console, handle_errors, out
from fvds.finetune.config import FinetuneConfig

_DEFAULTS = FinetuneConfig(data="-", out="-")
_DATA = "Data"
_TRAIN = "Training"


@handle_errors
def finetune(
    data: Annotated[str, typer.Option(
        help="Labelled images: a folder with one sub-folder per class (or train/ and val/ "
             "folders of those), a dataset folder, or a Hugging Face dataset id.",
        rich_help_panel=_DATA)],
    out_path: Annotated[Path, typer.Option(
        "--out", help="The checkpoint to write (.safetensors); its metadata goes to the .json "
                      "beside it.")],
    model: Annotated[str, typer.Option(help="timm model name.")] = _DEFAULTS.model,
    weights: Annotated[str, typer.Option(
        help="Base weights: timm (pretrained), random, or a checkpoint path.")
    ] = _DEFAULTS.weights,
    num_classes: Annotated[int | None, typer.Option(
        help="Expected number of classes; must agree with the data. Default: from the data.",
        rich_help_panel=_DATA)] = None,
    image_column: Annotated[str | None, typer.Option(
        help="Dataset column with the images. Default: the Image column.",
        rich_help_panel=_DATA)] = None,
    label_column: Annotated[str | None, typer.Option(
        help="Dataset column with the labels. Default: the ClassLabel column, else 'label'.",
        rich_help_panel=_DATA)] = None,
    train_split: Annotated[str, typer.Option(
        help="Dataset split to train on.", rich_help_panel=_DATA)] = _DEFAULTS.train_split,
    val_split: Annotated[str | None, typer.Option(
        help="Dataset split to validate on. Default: validation/valid/val if the data has "
             "one, else a held-out part of the training split.", rich_help_panel=_DATA)] = None,
    val_fraction: Annotated[float, typer.Option(
        help="Share of each class held out for validation when the data has no validation "
             "split.", rich_help_panel=_DATA)] = _DEFAULTS.val_fraction,
    data_revision: Annotated[str | None, typer.Option(
        help="Hub dataset revision (branch, tag or commit).", rich_help_panel=_DATA)] = None,
    image_size: Annotated[int | None, typer.Option(
        help="Image side in pixels for training and validation. Default: the model's "
             "pretrained input size.", rich_help_panel=_DATA)] = None,
    epochs: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)
                          ] = _DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option(
        help="Peak AdamW learning rate (after the warm-up, then cosine decay).",
        rich_help_panel=_TRAIN)] = _DEFAULTS.lr,
    weight_decay: Annotated[float, typer.Option(
        help="AdamW weight decay (not applied to biases and norms).", rich_help_panel=_TRAIN)
    ] = _DEFAULTS.weight_decay,
    warmup_epochs: Annotated[int, typer.Option(min=0, rich_help_panel=_TRAIN)
                             ] = _DEFAULTS.warmup_epochs,
    min_lr: Annotated[float, typer.Option(
        help="Learning rate at the end of the cosine decay.", rich_help_panel=_TRAIN)
    ] = _DEFAULTS.min_lr,
    label_smoothing: Annotated[float, typer.Option(
        help="Label smoothing of the training loss.", rich_help_panel=_TRAIN)
    ] = _DEFAULTS.label_smoothing,
    freeze_epochs: Annotated[int, typer.Option(
        min=0, help="Train only the new head for this many epochs first.",
        rich_help_panel=_TRAIN)] = _DEFAULTS.freeze_epochs,
    seed: Annotated[int, typer.Option(
        help="Seeds the new head, the validation hold-out, shuffling and augmentation.",
        rich_help_panel=_TRAIN)] = _DEFAULTS.seed,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")
                      ] = _DEFAULTS.device,
    precision: Annotated[str, typer.Option(
        help="auto (mixed precision on CUDA, fp32 elsewhere), fp32, bf16 or fp16.")
    ] = _DEFAULTS.precision,
    workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")
                       ] = _DEFAULTS.workers,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing checkpoint at --out.")
                         ] = False,
    fresh: Annotated[bool, typer.Option(
        help="Discard an interrupted run's saved state instead of resuming it.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a timm model on labelled images: the fine-tuned stage's checkpoint.

    Writes the best epoch's weights (new head included) to --out, and a JSON
    beside it with class names, per-epoch metrics and fingerprints of the base
    weights and the data. Give the checkpoint to `fvds build` as a stage's
    weights (--stage finetuned=PATH). An interrupted run resumes from its last
    finished epoch when rerun with the same options.
    """
    cfg = FinetuneConfig(
        data=data, out=str(out_path), model=model, weights=weights, num_classes=num_classes,
        image_column=image_column, label_column=label_column, train_split=train_split,
        val_split=val_split, val_fraction=val_fraction, data_revision=data_revision,
        image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, min_lr=min_lr,
        label_smoothing=label_smoothing, freeze_epochs=freeze_epochs, seed=seed, device=device,
        precision=precision, workers=workers)  # type: ignore[arg-type]  # checked by the config
    from fvds.finetune.train import run_finetune

    result = run_finetune(cfg, overwrite=overwrite, fresh=fresh, progress=not quiet,
                          console=console)
    out(str(result.checkpoint))
