"""`fvds finetune`: make a fine-tuned stage's checkpoint from base weights and labelled images.

    from fvds.finetune import FinetuneConfig, run_finetune
    run_finetune(FinetuneConfig(data="my_images/", out="ft.safetensors", epochs=10))

writes ``ft.safetensors`` (loadable as a build stage's weights) and ``ft.json`` (classes,
per-epoch metrics, fingerprints of base weights and data, the full config), which
:func:`read_finetune_metadata` reads back for the dataset card. Modules: :mod:`.config` (the
run's settings), :mod:`.data` (image folders and datasets), :mod:`.train` (the loop),
:mod:`.checkpoint` (resume state, atomic files, metadata).
"""

from fvds.finetune.checkpoint import metadata_path, read_finetune_metadata
from fvds.finetune.config import FinetuneConfig
from fvds.finetune.data import LabelledImages, load_labelled_images
from fvds.finetune.train import EpochMetrics, FinetuneResult, build_model, evaluate, run_finetune

__all__ = ["EpochMetrics", "FinetuneConfig", "FinetuneResult", "LabelledImages", "build_model",
           "evaluate", "load_labelled_images", "metadata_path", "read_finetune_metadata",
           "run_finetune"]
