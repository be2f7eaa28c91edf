"""Assembly: stream the parts into ``data/<stage>/train-NNNNN-of-NNNNN.parquet``.

Parts are read one at a time and written out in row groups, so memory holds one part and one
row group whatever the number of rows. Shards carry the Arrow schema of the ``Features``, so
``load_dataset`` decodes the image column and sees a fixed-length embedding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fvds.builder.plan import Plan
from fvds.builder.workarea import WorkArea
from fvds.schemas import rows as schema


@dataclass(frozen=True)
class Projection:
    """Per-row vectors and coordinates, in plan order (stage, layer, unit)."""
    embeddings: np.ndarray  # (N, D) float32, may be a memmap
    coords: np.ndarray  # (N, 2) float32
    stage_coords: np.ndarray | None  # (N, 2) per-stage fits, or None


def shard_name(stage: str, index: int, count: int) -> str:
    return f"data/{stage}/train-{index:05d}-of-{count:05d}.parquet"


def iter_stage_parts(plan: Plan, work: WorkArea, stage: str) -> Iterator[pa.Table]:
    for job in plan.jobs_of(stage):
        yield work.read_part(job)


def assemble(plan: Plan, work: WorkArea, proj: Projection, dest: Path) -> dict[str, int]:
    """Write every stage's shards under ``dest``; returns rows per stage."""
    cfg = plan.config.dataset
    arrow = schema.arrow_schema(proj.embeddings.shape[1], proj.stage_coords is not None)
    rows: dict[str, int] = {}
    offset = 0
    for stage in plan.config.stages:
        n = sum(len(j.units) for j in plan.jobs_of(stage.name))
        writer = _StageWriter(dest, stage.name, n, arrow, cfg.shard_rows, cfg.row_group_rows)
        for part in iter_stage_parts(plan, work, stage.name):
            writer.write(_to_rows(part, proj, offset, arrow))
            offset += part.num_rows
        writer.close()
        rows[stage.name] = n
    return rows


class _StageWriter:
    """Rows in, shards of ``shard_rows`` out, each in row groups of ``group_rows``."""

    def __init__(self, dest: Path, stage: str, total: int, arrow: pa.Schema, shard_rows: int,
                 group_rows: int):
        self.dest, self.stage, self.arrow = dest, stage, arrow
        self.shard_rows, self.group_rows = shard_rows, group_rows
        self.count = max(1, math.ceil(total / shard_rows))
        self.shard, self.in_shard = -1, 0
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            if self.writer is None or self.in_shard == self.shard_rows:
                self._next_shard()
            take = min(batch.num_rows, self.shard_rows - self.in_shard)
            self.pending.append(batch.slice(0, take))
            self.in_shard += take
            batch = batch.slice(take)
            if sum(b.num_rows for b in self.pending) >= self.group_rows:
                self._flush()

    def _flush(self) -> None:
        if self.pending and self.writer is not None:
            table = pa.Table.from_batches(self.pending, schema=self.arrow)
            self.writer.write_table(table, row_group_size=self.group_rows)
            self.pending = []

    def _next_shard(self) -> None:
        self.close()
        self.shard += 1
        self.in_shard = 0
        path = self.dest / shard_name(self.stage, self.shard, self.count)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, self.arrow, compression="zstd")

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _to_rows(part: pa.Table, proj: Projection, offset: int, arrow: pa.Schema) -> pa.RecordBatch:
    n = part.num_rows
    sl = slice(offset, offset + n)
    emb = np.ascontiguousarray(proj.embeddings[sl], dtype=np.float32)
    d = emb.shape[1]
    columns = {name: part.column(name) for name in part.column_names if name != "image"}
    columns["image"] = pa.StructArray.from_arrays(
        [part.column("image").combine_chunks(), pa.nulls(n, pa.string())],
        names=["bytes", "path"])
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d)
    columns["umap_x"] = pa.array(proj.coords[sl, 0], pa.float32())
    columns["umap_y"] = pa.array(proj.coords[sl, 1], pa.float32())
    if proj.stage_coords is not None:
        columns["umap_stage_x"] = pa.array(proj.stage_coords[sl, 0], pa.float32())
        columns["umap_stage_y"] = pa.array(proj.stage_coords[sl, 1], pa.float32())
    arrays = [columns[f.name].combine_chunks() if isinstance(columns[f.name], pa.ChunkedArray)
              else columns[f.name] for f in arrow]
    return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, arrow, strict=True)],
                                      schema=arrow)
