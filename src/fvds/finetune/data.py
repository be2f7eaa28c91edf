"""Labelled images for fine-tuning: an image folder or a Hugging Face dataset.

Either source becomes the same thing, a :class:`LabelledImages`: class names, train and
validation items, and a fingerprint of the data. Every image is decoded once up front, so an
unreadable file is skipped and counted here instead of failing mid-epoch; a class that ends up
with no readable image is bad input.

* Image folder: ``ROOT/<class>/**/*.png`` (classes are the sorted sub-folder names), or
  ``ROOT/train/<class>/...`` with ``ROOT/val|valid|validation/<class>/...`` for a given split.
* A dataset saved with ``save_to_disk``, a local folder ``datasets.load_dataset`` reads
  (parquet, arrow, csv, json), or a Hub dataset id.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fvds.errors import BadInput, close_matches

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
VAL_SPLITS = ("validation", "valid", "val")
_DATASET_FILES = (".parquet", ".arrow", ".csv", ".json", ".jsonl", ".tsv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SHOW = 5  # items named in a message before "+N more"

# An item is a file path (image folder) or a row index into a dataset split.
Item = Any


@dataclass
class LabelledImages:
    classes: list[str]
    train: list[tuple[Item, int]]
    val: list[tuple[Item, int]]
    val_from: str  # how the validation set was obtained, for the metadata
    fingerprint: dict[str, Any]  # identifies the data: file hashes or dataset revision
    skipped: list[str] = field(default_factory=list)  # unreadable images, left out
    # Opens an item as an RGB PIL image; picklable, so data-loading workers can use it.
    opener: Callable[[Item], Image.Image] | None = None
    unlabelled: int = 0  # dataset rows without a label, left out

    def counts(self) -> dict[str, dict[str, int]]:
        tr = np.bincount([y for _, y in self.train], minlength=len(self.classes))
        va = np.bincount([y for _, y in self.val], minlength=len(self.classes))
        return {c: {"train": int(tr[i]), "val": int(va[i])} for i, c in enumerate(self.classes)}


def load_labelled_images(cfg, on_item: Callable[[int, int], None] | None = None,
                         ) -> LabelledImages:
    """The data named by ``cfg.data`` (a :class:`~fvds.finetune.FinetuneConfig`), checked.

    ``on_item(done, total)`` reports the decoding pass.
    """
    source = cfg.data
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            data = _from_dataset(_load_from_disk(path), cfg, {"kind": "save_to_disk",
                                                             "path": str(path.resolve())},
                                 on_item)
        elif _has_dataset_files(path):
            data = _from_dataset(_load_dataset(str(path), cfg), cfg,
                                 {"kind": "local_dataset", "path": str(path.resolve())}, on_item)
        else:
            data = _from_folder(path, cfg, on_item)
    elif path.exists():
        raise BadInput(f"Data '{source}' is a file. Give a folder with one sub-folder of images "
                       "per class, a dataset folder, or a Hugging Face dataset id.")
    elif _HUB_ID.match(source) and not source.startswith("."):
        data = _from_dataset(_load_dataset(source, cfg), cfg, _hub_fingerprint(source, cfg),
                             on_item)
    else:
        raise BadInput(f"Data folder '{source}' does not exist. Give a folder with one "
                       "sub-folder of images per class, a dataset folder, or a Hugging Face "
                       "dataset id (ORG/NAME).")
    if len(data.classes) < 2:
        raise BadInput(f"Data '{source}' has {len(data.classes)} class "
                       f"({', '.join(data.classes) or 'none'}); fine-tuning needs at least 2.")
    if not data.val:
        raise BadInput(f"Data '{source}' leaves no image for validation ({data.val_from}). "
                       "Give a validation split with images, or at least two images per class "
                       "to hold one out.")
    if cfg.num_classes is not None and cfg.num_classes != len(data.classes):
        raise BadInput(f"--num-classes {cfg.num_classes} disagrees with the data: '{source}' has "
                       f"{len(data.classes)} classes ({_listed(data.classes)}). Leave "
                       "--num-classes out to take the number from the data.")
    return data


# --- image folders

def _from_folder(root: Path, cfg, on_item) -> LabelledImages:
    train_root, val_root = _split_folders(root)
    class_dirs = _subdirs(train_root)
    if not class_dirs:
        loose = [p.name for p in train_root.iterdir() if _is_image_name(p)]
        hint = (f" It holds {len(loose)} image files directly: put them in one sub-folder "
                "per class." if loose else "")
        raise BadInput(f"Data folder '{train_root}' is empty: it has no class sub-folders "
                       f"(one sub-folder of images per class is expected).{hint}")
    classes = [d.name for d in class_dirs]
    files = {c: _image_files(d) for c, d in zip(classes, class_dirs, strict=True)}
    val_files: dict[str, list[Path]] = {}
    if val_root is not None:
        val_classes = [d.name for d in _subdirs(val_root)]
        unknown = [c for c in val_classes if c not in classes]
        if unknown:
            raise BadInput(f"Validation folder '{val_root}' has classes the training folder "
                           f"'{train_root}' lacks: {_listed(unknown)}." + close_matches(
                               unknown[0], classes))
        val_files = {c: _image_files(val_root / c) for c in val_classes}

    all_files = [f for fs in files.values() for f in fs] + [
        f for fs in val_files.values() for f in fs]
    readable, skipped = _check_images(all_files, _read_bytes, on_item, root)
    label = {c: i for i, c in enumerate(classes)}

    def kept(per_class: dict[str, list[Path]]) -> list[tuple[Item, int]]:
        return [(str(f), label[c]) for c, fs in per_class.items() for f in fs if f in readable]

    train, val = kept(files), kept(val_files)
    _check_classes_not_empty(classes, train, files, root, skipped)
    if val_root is None:
        train, val = hold_out(train, len(classes), cfg.val_fraction, cfg.seed)
        val_from = f"held out {cfg.val_fraction:g} of each class (seed {cfg.seed})"
    else:
        val_from = f"folder '{val_root.name}'"
    digest = hashlib.sha256()
    for f in sorted(readable, key=lambda p: str(p.relative_to(root))):
        digest.update(f"{f.relative_to(root).as_posix()}\t{readable[f]}\n".encode())
    fingerprint = {"kind": "image_folder", "path": str(root.resolve()), "files": len(readable),
                   "sha256": digest.hexdigest()}
    return LabelledImages(classes, train, val, val_from, fingerprint,
                          [str(p.relative_to(root)) for p in skipped], open_image_file)


def _split_folders(root: Path) -> tuple[Path, Path | None]:
    """``(root, None)``, or ``(root/train, root/val)`` for a folder already split."""
    names = {d.name: d for d in _subdirs(root)}
    val = next((names[n] for n in VAL_SPLITS if n in names), None)
    train = names.get("train")
    if train is not None and val is not None and _subdirs(train) and not any(
            _is_image_name(p) for p in train.iterdir()):
        return train, val
    return root, None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_name(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def open_image_file(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _check_classes_not_empty(classes: list[str], train: list[tuple[Item, int]],
                             files: dict[str, list[Any]], source: Any, skipped: list) -> None:
    have = np.bincount([y for _, y in train], minlength=len(classes))
    empty = [c for i, c in enumerate(classes) if have[i] == 0]
    if not empty:
        return
    details = [f"'{c}' ({len(files[c])} image file(s), none readable)" if files[c] else
               f"'{c}' (no image files)" for c in empty]
    raise BadInput(f"Data '{source}': {len(empty)} class(es) have no readable images: "
                   f"{_listed(details)}. Every class needs at least one image "
                   f"({', '.join(IMAGE_SUFFIXES)}); {len(skipped)} unreadable file(s) were "
                   "skipped in all.")


# --- datasets

def _load_from_disk(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:
        raise BadInput(f"Dataset folder '{path}' could not be loaded with "
                       f"datasets.load_from_disk ({type(e).__name__}: {_first_line(e)}).") from None


def _load_dataset(source: str, cfg):
    import datasets

    try:
        return datasets.load_dataset(source, revision=cfg.data_revision)
    except Exception as e:
        raise BadInput(f"Data '{source}' is neither an existing folder nor a dataset "
                       f"datasets.load_dataset could load ({type(e).__name__}: "
                       f"{_first_line(e)}). Give a folder with one sub-folder of images per "
                       "class, a dataset folder, or a Hub dataset id (online, or in the local "
                       "cache with HF_HUB_OFFLINE=1).") from None


def _hub_fingerprint(source: str, cfg) -> dict[str, Any]:
    revision = cfg.data_revision
    try:  # the commit the requested revision points at, when the Hub answers
        from huggingface_hub import HfApi

        revision = HfApi().dataset_info(source, revision=cfg.data_revision).sha
    except Exception:
        pass
    return {"kind": "hub", "id": source, "revision": revision or "main"}


def _has_dataset_files(path: Path) -> bool:
    candidates = list(path.iterdir()) + (list((path / "data").iterdir())
                                         if (path / "data").is_dir() else [])
    return any(p.is_file() and p.suffix.lower() in _DATASET_FILES for p in candidates)


def _from_dataset(ds, cfg, fingerprint: dict[str, Any], on_item) -> LabelledImages:
    import datasets

    if isinstance(ds, datasets.Dataset):  # a single split: train on it
        ds = datasets.DatasetDict({cfg.train_split: ds})
    name = fingerprint.get("id") or fingerprint.get("path")
    if cfg.train_split not in ds:
        raise BadInput(f"Dataset '{name}' has no split '{cfg.train_split}' (splits: "
                       f"{', '.join(ds)}). Name the one to train on with --train-split.")
    if cfg.val_split is not None and cfg.val_split not in ds:
        raise BadInput(f"Dataset '{name}' has no split '{cfg.val_split}' (splits: "
                       f"{', '.join(ds)}).")
    val_name = cfg.val_split or next((s for s in VAL_SPLITS if s in ds), None)
    train_ds = ds[cfg.train_split]
    image_col, label_col = _columns(train_ds, cfg, name)
    splits = {"train": train_ds} | ({"val": ds[val_name]} if val_name else {})
    for split, part in splits.items():
        missing = [c for c in (image_col, label_col) if c not in part.column_names]
        if missing:
            raise BadInput(f"Dataset '{name}' split '{split}' lacks column(s) "
                           f"{', '.join(missing)} (columns: {', '.join(part.column_names)}).")
    feature = train_ds.features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        to_index: Callable[[Any], int] = int
    else:
        values = sorted({v for part in splits.values() for v in part[label_col] if v is not None},
                        key=lambda v: (str(type(v)), v))
        classes = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        to_index = index.__getitem__

    opener = _DatasetOpener({s: p.select_columns([image_col]).cast_column(
        image_col, datasets.Image(decode=False)) for s, p in splits.items()}, image_col)
    # Rows without a label (None, or ClassLabel's -1) cannot be trained on: left out, counted.
    labels = [((s, i), y) for s, part in splits.items() for i, y in enumerate(part[label_col])]
    items = [(it, to_index(y)) for it, y in labels if y is not None and not (
        isinstance(feature, datasets.ClassLabel) and y < 0)]
    readable, skipped = _check_images([it for it, _ in items], opener.read_bytes, on_item, name)
    train = [(it, y) for it, y in items if it[0] == "train" and it in readable]
    val = [(it, y) for it, y in items if it[0] == "val" and it in readable]
    per_class: dict[str, list[Any]] = {c: [] for c in classes}
    for it, y in items:
        if it[0] == "train":
            per_class[classes[y]].append(it)
    _check_classes_not_empty(classes, train, per_class, name, skipped)
    if val_name is None:
        train, val = hold_out(train, len(classes), cfg.val_fraction, cfg.seed)
        val_from = f"held out {cfg.val_fraction:g} of each class of split '{cfg.train_split}' " \
                   f"(seed {cfg.seed})"
    else:
        val_from = f"split '{val_name}'"
    fingerprint = fingerprint | {
        "splits": {cfg.train_split: train_ds._fingerprint}
        | ({val_name: ds[val_name]._fingerprint} if val_name else {}),
        "image_column": image_col, "label_column": label_col}
    split_name = {"train": cfg.train_split, "val": val_name}
    return LabelledImages(classes, train, val, val_from, fingerprint,
                          [f"{split_name[s]}[{i}]" for s, i in skipped], opener,
                          unlabelled=len(labels) - len(items))


def _columns(ds, cfg, name: str) -> tuple[str, str]:
    import datasets

    cols = ds.column_names

    def pick(given: str | None, kind: type, fallback: str, what: str, option: str) -> str:
        if given is not None:
            if given not in cols:
                raise BadInput(f"Dataset '{name}' has no column '{given}' (columns: "
                               f"{', '.join(cols)})." + close_matches(given, cols))
            return given
        typed = [c for c in cols if isinstance(ds.features[c], kind)]
        if len(typed) == 1:
            return typed[0]
        if fallback in cols:
            return fallback
        raise BadInput(f"Dataset '{name}': cannot tell which column holds the {what} "
                       f"(columns: {', '.join(cols)}). Name it with {option}.")

    image_col = pick(cfg.image_column, datasets.Image, "image", "images", "--image-column")
    label_col = pick(cfg.label_column, datasets.ClassLabel, "label", "labels", "--label-column")
    if not isinstance(ds.features[image_col], datasets.Image):
        raise BadInput(f"Dataset '{name}' column '{image_col}' is not an image column (its "
                       f"feature is {ds.features[image_col]}). Name the image column with "
                       "--image-column.")
    return image_col, label_col


class _DatasetOpener:
    """Opens ``(split, row)`` items of undecoded Image columns; picklable for workers."""

    def __init__(self, splits: dict[str, Any], column: str) -> None:
        self.splits, self.column = splits, column

    def read_bytes(self, item: tuple[str, int]) -> bytes:
        value = self.splits[item[0]][item[1]][self.column]
        if value.get("bytes"):
            return value["bytes"]
        return Path(value["path"]).read_bytes()

    def __call__(self, item: tuple[str, int]) -> Image.Image:
        with Image.open(io.BytesIO(self.read_bytes(item))) as im:
            return im.convert("RGB")


# --- shared

def _check_images(items: Iterable[Item], read: Callable[[Item], bytes],
                  on_item: Callable[[int, int], None] | None, source: Any,
                  ) -> tuple[dict[Item, str], list[Item]]:
    """Decode every image once: ``({item: sha256 of its bytes}, [unreadable items])``."""
    items = list(items)
    readable: dict[Item, str] = {}
    skipped: list[Item] = []
    for done, (item, digest) in enumerate(_decode_all(items, read), start=1):
        if digest is None:
            skipped.append(item)
        else:
            readable[item] = digest
        if on_item is not None:
            on_item(done, len(items))
    return readable, skipped


def _decode_all(items: list[Item], read: Callable[[Item], bytes],
                ) -> Iterator[tuple[Item, str | None]]:
    for item in items:
        try:
            raw = read(item)
            with Image.open(io.BytesIO(raw)) as im:
                # JPEGs decode at reduced scale: every byte is still parsed, so truncated
                # files are caught, at a fraction of the cost of a full decode.
                im.draft("RGB", (64, 64))
                im.load()
        except Exception:  # PIL raises many types for broken files; all mean "unreadable"
            yield item, None
            continue
        yield item, hashlib.sha256(raw).hexdigest()


def hold_out(items: list[tuple[Item, int]], num_classes: int, fraction: float, seed: int,
             ) -> tuple[list[tuple[Item, int]], list[tuple[Item, int]]]:
    """A seeded, stratified split: ``fraction`` of each class to validation, at least one
    image when the class has two or more, never the last one."""
    rng = np.random.default_rng(seed)
    train: list[tuple[Item, int]] = []
    val: list[tuple[Item, int]] = []
    for c in range(num_classes):
        members = [it for it in items if it[1] == c]
        order = rng.permutation(len(members))
        n_val = min(max(round(len(members) * fraction), 1), len(members) - 1)
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return train, val


def _listed(values: list[str]) -> str:
    more = f" (+{len(values) - SHOW} more)" if len(values) > SHOW else ""
    return ", ".join(values[:SHOW]) + more


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""
