"""`fvds finetune`: make a fine-tuned stage's checkpoint from base weights and labelled images.

    from fvds.finetune import FinetuneConfig, run_finetune
    run_finetune(FinetuneConfig(data="my_images/", out="ft.safetensors", epochs=10))

writes ``ft.safetensors`` (loadable as a build stage's weights) and ``ft.json`` (classes,
per-epoch metrics, fingerprints of base weights and data, the full config), which
:func:`read_finetune_metadata` reads back for the dataset card. Modules: :mod:`.config` (the
run's settings), :mod:`.data` (image folders and datasets), :mod:`.train` (the loop),
:mod:`.checkpoint` (resume state, atomic files, metadata).
"""

from importlib import import_module
from typing import Any

# Imported on first use, so that `fvds --help` does not pay for torch.
_EXPORTS = {
    "metadata_path": "checkpoint", "read_finetune_metadata": "checkpoint",
    "FinetuneConfig": "config", "LabelledImages": "data", "load_labelled_images": "data",
    "EpochMetrics": "train", "FinetuneResult": "train", "build_model": "train",
    "evaluate": "train", "run_finetune": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"fvds.finetune.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fvds.finetune' has no attribute {name!r}")
