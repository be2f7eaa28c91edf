"""Files a fine-tuning run writes: resume state, the best checkpoint, and its metadata JSON.

Beside ``OUT.safetensors`` a run keeps ``OUT.safetensors.partial/`` while it works:
``state.pt`` (model, optimizer, scheduler, scaler, metrics after the last finished epoch) and
``best-eN.safetensors`` (the best weights so far, named by epoch so that ``state.pt`` always
names a file that exists). Every file is written to a temporary name and renamed, so a killed
run never leaves half a file. On success the best weights become ``OUT.safetensors``, the
metadata ``OUT.json``, and the work folder goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fvds.errors import BadInput

METADATA_FORMAT = "fvds-finetune/1"
STATE_FILE = "state.pt"


def metadata_path(checkpoint: str | Path) -> Path:
    """``ft.safetensors`` -> ``ft.json``."""
    return Path(checkpoint).with_suffix(".json")


def work_dir(checkpoint: str | Path) -> Path:
    p = Path(checkpoint)
    return p.with_name(p.name + ".partial")


def read_finetune_metadata(checkpoint_path: str | Path) -> dict[str, Any] | None:
    """The metadata `fvds finetune` wrote beside a checkpoint, or None.

    None also when the JSON is unreadable or describes other weights than the file now at
    ``checkpoint_path`` (its recorded file hash differs), so provenance is never misattributed.
    """
    ckpt = Path(checkpoint_path)
    meta_file = metadata_path(ckpt)
    if not (ckpt.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        return None
    if meta.get("checkpoint", {}).get("file_sha256") != file_sha256(ckpt):
        return None
    return meta


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: Path, overwrite: bool) -> None:
    """Bad input unless ``out`` is a ``.safetensors`` path this process can write."""
    if out.suffix != ".safetensors":
        raise BadInput(f"Output '{out}' must end in .safetensors (the checkpoint; its metadata "
                       f"goes to '{metadata_path(out).name}' beside it).")
    if out.is_dir():
        raise BadInput(f"Output '{out}' is a directory; give the path of the .safetensors file.")
    if out.exists() and not overwrite:
        raise BadInput(f"Output '{out}' already exists. Pass --overwrite to replace it, or "
                       "choose another path.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".fvds-probe-"):
            pass
    except OSError as e:
        raise BadInput(f"Output path '{out}' is not writable: {e.strerror or e} "
                       f"(folder '{out.parent}').") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """The resume state after an epoch; then best-weight files it no longer names go."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
    keep = state["best"]["file"]
    for stale in folder.glob("best-e*.safetensors"):
        if stale.name != keep:
            stale.unlink(missing_ok=True)


def load_state(folder: Path) -> dict[str, Any] | None:
    """The last saved resume state, or None when no epoch has finished yet."""
    f = folder / STATE_FILE
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"The resume state '{f}' of an interrupted run is unreadable "
                       f"({type(e).__name__}). Pass --fresh to discard it and start over.") \
            from None
    if not (folder / state["best"]["file"]).is_file():
        raise BadInput(f"The resume state in '{folder}' names best weights "
                       f"'{state['best']['file']}' that are missing. Pass --fresh to start over.")
    return state


def finish(folder: Path, best_file: str, out: Path, metadata: dict[str, Any]) -> None:
    """Publish the best weights as ``out`` and the metadata beside it; drop the work folder.

    The JSON goes first and records the weights' file hash: if the run dies between the two
    renames, :func:`read_finetune_metadata` sees that the JSON does not belong to ``out``.
    """
    best = folder / best_file
    metadata["checkpoint"]["file_sha256"] = file_sha256(best)
    text = json.dumps(metadata, indent=2) + "\n"
    atomic_write(metadata_path(out), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    os.replace(best, out)
    shutil.rmtree(folder, ignore_errors=True)


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
