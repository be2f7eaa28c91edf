"""``fvds.json``: what a dataset folder was made from and what it holds.

Resolved config, library versions, each stage's weights and fingerprint, rows per stage, and
the SHA-256 and size of every other file, which ``fvds verify`` checks.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

MANIFEST = "fvds.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_files(folder: Path) -> list[str]:
    """The files of a dataset folder (what goes to the Hub): everything but dot-paths and the
    manifest itself, sorted."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and rel.as_posix() != MANIFEST:
            out.append(rel.as_posix())
    return sorted(out)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("fvds", "torch", "timm", "numpy", "datasets", "huggingface_hub", "pyarrow",
                "umap-learn", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def build_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    files = {rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
             for rel in dataset_files(folder)}
    return {"format": 1, **fields, "files": files}


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
