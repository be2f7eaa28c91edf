"""Peak memory of assembly for N and 4N rows: it must not grow with the number of rows.

Synthetic parts (noise PNGs, which compress worst) are written into a work area, then a fresh
process runs only ``assemble`` while a sampler thread records its peak anonymous memory
(RssAnon: heap and Arrow buffers; the embeddings memmap's file pages are page cache, and
UMAP needs the embeddings in memory anyway).

    python benchmarks/bench_assembly.py --rows 2000 8000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _config(rows: int):
    from fvds.config import load_config

    layers = max(1, rows // 64)
    return load_config(overrides={
        "model.name": "test_resnet", "units.layers": ["*"], "units.per_layer": 64,
        "render.size": 64, "render.batch_size": 64, "dataset.shard_rows": 1000,
        "stages": [{"name": f"s{i}", "weights": "random"} for i in range(layers)]})


def _plan(rows: int):
    """A plan of ``rows`` units: stages of one layer with 64 units each."""
    from fvds.builder.layers import Layer
    from fvds.builder.plan import Job, Plan

    cfg = _config(rows)
    layer = Layer("layer4.0.conv2", 10, 64)
    jobs = tuple(Job(s.name, layer, tuple(range(64)), 0) for s in cfg.stages)
    return Plan(cfg, (layer,), {layer.name: tuple(range(64))}, jobs)


def setup(rows: int, out: Path) -> None:
    from fvds.builder.render.optimize import JobResult
    from fvds.builder.workarea import WorkArea, part_table

    plan = _plan(rows)
    work = WorkArea(out)
    rng = np.random.default_rng(0)
    for job in plan.jobs:
        images = rng.integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
        result = JobResult(job.layer.name, list(job.units), images,
                           rng.normal(size=64).astype(np.float32), 0)
        work.write_part(job, part_table(job, "test_resnet", result, 512))
    emb = np.lib.format.open_memmap(out / "emb.npy", mode="w+", dtype=np.float32,
                                    shape=(plan.total_units, 3072))
    emb[:] = rng.normal(size=emb.shape).astype(np.float32)
    emb.flush()


def measure(rows: int, out: Path) -> dict:
    from fvds.builder.assemble import Projection, assemble
    from fvds.builder.workarea import WorkArea

    plan = _plan(rows)
    emb = np.load(out / "emb.npy", mmap_mode="r")
    coords = np.zeros((plan.total_units, 2), np.float32)
    base = _rss_anon_kib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_kib())
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    rows_out = assemble(plan, WorkArea(out), Projection(emb, coords, None), out / "dataset")
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    return {"rows": sum(rows_out.values()), "seconds": round(seconds, 2),
            "peak_extra_mib": round((peak[0] - base) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--child", nargs=2, metavar=("ROWS", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), Path(args.child[1]))))
        return
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as d:
            setup(rows, Path(d))
            # a fresh process, so that setup's allocations do not hide assembly's peak
            res = subprocess.run([sys.executable, __file__, "--child", str(rows), d],
                                 check=True, capture_output=True, text=True)
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(json.dumps({"rows_ratio": round(b["rows"] / a["rows"], 1),
                          "peak_ratio": round(b["peak_extra_mib"] / max(a["peak_extra_mib"],
                                                                         0.1), 2)}))


if __name__ == "__main__":
    main()
