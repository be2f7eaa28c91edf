"""The work area ``OUT/.fvds/``: one part file per finished job, and the identity of the run.

A part is complete or absent: it is written under a temporary name, fsynced, then renamed.
A rerun skips parts that read back with the expected rows, and re-renders missing or broken
ones. The render identity (everything that changes a rendered pixel) is recorded on the first
run; a later run with a different one is refused, naming what differs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fvds.builder.plan import Job
from fvds.config import Config
from fvds.errors import BadInput

PART_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("stage", pa.string()),
    ("model", pa.string()),
    ("layer", pa.string()),
    ("layer_index", pa.int32()),
    ("unit", pa.int32()),
    ("layer_units", pa.int32()),
    ("image", pa.binary()),  # PNG bytes
    ("activation", pa.float32()),
    ("seed", pa.int64()),
    ("steps", pa.int32()),
    ("image_size", pa.int32()),
])


def render_identity(config: Config) -> dict[str, Any]:
    """The part of the config that determines the rendered parts.

    The device is left out so that a build can move between machines; embedding, projection
    and dataset settings only change assembly, which reruns from the parts.
    """
    data = config.to_dict()
    render = {k: v for k, v in data["render"].items() if k != "device"}
    return {"seed": data["seed"], "model": data["model"], "stages": data["stages"],
            "units": data["units"], "render": render}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_out_dir(out: Path) -> Path:
    """Bad input unless ``out`` is (or can become) a writable folder; touches nothing."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out '{out}' is a file; give a folder (it is created if missing).")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"--out '{out}' is not writable (no write permission on '{probe}').")
    if out.exists() and any(out.iterdir()) and not (out / ".fvds").is_dir() \
            and not (out / "fvds.json").exists():
        raise BadInput(f"--out '{out}' is a non-empty folder that fvds did not make; give an "
                       "empty or new folder, or the folder of an earlier build to resume it.")
    return out.resolve()


class WorkArea:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / ".fvds"
        self.parts = self.root / "parts"
        self.identity_file = self.root / "render.json"

    def check_identity(self, config: Config) -> None:
        """Refuse a config whose rendering differs from the one this work area was made with."""
        if not self.identity_file.exists():
            return
        old = _flatten(json.loads(self.identity_file.read_text()))
        new = _flatten(json.loads(json.dumps(render_identity(config))))
        diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
        if diff:
            raise BadInput(
                f"'{self.out}' was built with a different configuration; resuming it would mix "
                f"two datasets. Differences: {'; '.join(diff)}. Use the original settings, or "
                "a new --out folder.")

    def claim(self, config: Config) -> None:
        self.check_identity(config)
        if not self.identity_file.exists():
            atomic_write_bytes(self.identity_file,
                               json.dumps(render_identity(config), indent=2).encode())

    def part_path(self, job: Job) -> Path:
        return self.parts / job.part

    def is_done(self, job: Job) -> bool:
        """True when the job's part exists and reads back with its rows; a broken part is
        removed so that it is rendered again."""
        path = self.part_path(job)
        if not path.exists():
            return False
        try:
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except Exception:
            path.unlink(missing_ok=True)
            return False
        if ids != [f"{job.stage}/{job.layer.name}/{u}" for u in job.units]:
            path.unlink(missing_ok=True)
            return False
        return True

    def write_part(self, job: Job, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(self.part_path(job), buf.getvalue())

    def read_part(self, job: Job) -> pa.Table:
        return pq.read_table(self.part_path(job))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def part_table(job: Job, model_name: str, result, steps: int) -> pa.Table:
    """A job's rows as they are stored in its part."""
    n = len(job.units)
    return pa.table({
        "id": [f"{job.stage}/{job.layer.name}/{u}" for u in job.units],
        "stage": [job.stage] * n,
        "model": [model_name] * n,
        "layer": [job.layer.name] * n,
        "layer_index": [job.layer.index] * n,
        "unit": list(job.units),
        "layer_units": [job.layer.channels] * n,
        "image": [png_bytes(img) for img in result.images],
        "activation": result.activations.tolist(),
        "seed": [result.seed] * n,
        "steps": [steps] * n,
        "image_size": [int(result.images.shape[1])] * n,
    }, schema=PART_SCHEMA)
