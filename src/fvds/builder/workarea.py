"""The work area ``OUT/.fvds/``: one part file per finished job, and the identity of the run.

A part is complete or absent: it is written under a temporary name, fsynced, then renamed.
A rerun skips parts that read back with the expected rows, and re-renders missing or broken
ones. The render identity (everything that changes a rendered pixel) is recorded on the first
run; a later run with a different one is refused, naming what differs.

Several processes (shards, devices, machines on a shared filesystem) may work in one area at
once. Each takes a job's lock (``locks/``, flock: the kernel drops it when a process dies, so a
kill -9 leaves no stale lock) before rendering it, so two processes never render the same job
together; and since every file is renamed into place, nothing they write can interleave.
Besides the parts the area holds the full config (``config.json``, for ``fvds assemble`` and
``fvds status``), each stage's weight fingerprint (``stages/``), and a record per failed job
(``failed/``) until a rerun renders it.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fvds.builder.plan import Job
from fvds.config import Config
from fvds.errors import BadInput, FvdsError

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise FvdsError(f"Cannot write '{path}': {e.strerror}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a folder removed underneath
        Path(tmp).unlink(missing_ok=True)
        raise FvdsError(f"Cannot write '{path}': {e.strerror}.") from None
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
        self.config_file = self.root / "config.json"
        self.failed = self.root / "failed"
        self.stages = self.root / "stages"
        self.locks = self.root / "locks"
        self.numerics_file = self.root / "numerics.json"

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
        # The latest run's full config wins: only settings outside the render identity (dataset
        # version, embedding, UMAP, device) can differ, and those belong to the next assembly.
        atomic_write_bytes(self.config_file, json.dumps(config.to_dict(), indent=2).encode())

    def load_config(self) -> Config:
        """The config of the latest build in this area."""
        if not self.config_file.exists():
            raise BadInput(f"'{self.out}' holds no fvds build ('{self.config_file}' is missing); "
                           "give the --out folder of an `fvds build`.")
        return Config.from_dict(json.loads(self.config_file.read_text()))

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

    def write_part(self, job: Job, table: pa.Table, info: dict[str, str] | None = None) -> None:
        """Write a job's part; ``info`` (render seconds, device, host) goes in the Parquet
        footer as ``fvds.*`` keys, where ``fvds status`` reads it without loading rows."""
        if info:
            meta = {**(table.schema.metadata or {}),
                    **{f"fvds.{k}".encode(): str(v).encode() for k, v in info.items()}}
            table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(self.part_path(job), buf.getvalue())

    def read_part(self, job: Job) -> pa.Table:
        return pq.read_table(self.part_path(job))

    def part_info(self, job: Job) -> dict[str, str] | None:
        """The ``info`` a part was written with, or None when the part is missing or
        unreadable; reads the footer only and, unlike :meth:`is_done`, never deletes."""
        try:
            meta = pq.read_schema(self.part_path(job)).metadata or {}
        except (OSError, pa.ArrowException):
            return None
        return {k.decode()[5:]: v.decode() for k, v in meta.items() if k.startswith(b"fvds.")}

    def clear_temp(self, job: Job) -> None:
        """Remove temporary files a killed writer of this job left; call with its lock held."""
        path = self.part_path(job)
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)

    # -- locks -------------------------------------------------------------------------------
    def job_lock(self, job: Job) -> FileLock:
        return FileLock(self.locks / (job.part.removesuffix(".parquet") + ".lock"))

    def assembly_lock(self) -> FileLock:
        return FileLock(self.locks / "assemble.lock")

    # -- failed jobs ---------------------------------------------------------------------------
    def failure_path(self, job: Job) -> Path:
        return self.failed / (job.part.removesuffix(".parquet") + ".json")

    def record_failure(self, job: Job, error: str, detail: str, where: str) -> None:
        record = {"job": job.id, "part": job.part, "error": error, "traceback": detail,
                  "where": where, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_bytes(self.failure_path(job), json.dumps(record, indent=2).encode())

    def clear_failure(self, job: Job) -> None:
        self.failure_path(job).unlink(missing_ok=True)

    def failures(self) -> list[dict[str, str]]:
        """Records of jobs whose last attempt failed, in path order."""
        out = []
        for path in sorted(self.failed.rglob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # removed by a rerun that rendered the job meanwhile
        return out

    # -- numerics -------------------------------------------------------------------------------
    def check_numerics(self, numerics: str) -> None:
        """Bad input if parts here were rendered with other numerics (kind of device and
        precision, e.g. ``cpu fp32`` vs ``cuda bf16``) than ``numerics``."""
        old = self.recorded_numerics()
        if old is not None and old != numerics:
            raise BadInput(self._numerics_message(numerics, old))

    def record_numerics(self, numerics: str) -> None:
        """Record the numerics of the first part; refuse parts made with others."""
        old = self.recorded_numerics()
        if old is None:
            atomic_write_bytes(self.numerics_file, json.dumps({"numerics": numerics}).encode())
        elif old != numerics:
            raise FvdsError(self._numerics_message(numerics, old))

    def recorded_numerics(self) -> str | None:
        if not self.numerics_file.exists():
            return None
        return json.loads(self.numerics_file.read_text())["numerics"]

    def _numerics_message(self, new: str, old: str) -> str:
        return (f"The parts in '{self.out}' were rendered as '{old}' and this run renders as "
                f"'{new}': one dataset's images come from one kind of device and precision, so "
                f"that a rerun reproduces them. Render the rest as '{old}' (--device, --devices, "
                "render.precision), or build into a new --out.")

    # -- stage fingerprints --------------------------------------------------------------------
    def stage_record(self, name: str) -> dict | None:
        path = self.stages / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def record_stage(self, name: str, meta: dict) -> None:
        """Record a stage's weights (``sha256`` and provenance) the first time a process loads
        them; refuse weights that differ from the recorded ones, since the parts already
        rendered show the old weights."""
        old = self.stage_record(name)
        if old is None:
            atomic_write_bytes(self.stages / f"{name}.json", json.dumps(meta, indent=2).encode())
        elif old["sha256"] != meta["sha256"]:
            raise FvdsError(
                f"Stage '{name}': its weights changed since parts of '{self.out}' were rendered "
                f"(sha256 {old['sha256'][:12]}... then, {meta['sha256'][:12]}... now, weights "
                f"{meta['weights']!r}). Restore the original weights, or build into a new --out.")


class FileLock:
    """An exclusive advisory lock (flock) on a file. The kernel releases it when the holder
    exits, however it exits; lock files are never deleted, since a process could otherwise lock
    an unlinked file while another locks its replacement."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock; with ``wait=False`` return False at once if another holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as e:  # ENOLCK, ENOSYS...: e.g. Lustre mounted without -o flock
            os.close(fd)
            raise FvdsError(
                f"Cannot lock '{self.path}': {e.strerror}. Builds need file locks (flock) in "
                "--out so that processes sharing it never render a job twice; use a folder on "
                "a filesystem that supports them (local disk, NFSv4, Lustre with -o flock).") \
                from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
