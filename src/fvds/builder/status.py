"""Where a build stands, read from its work area alone: ``fvds status OUT``.

It reads part footers only and changes nothing, so it is safe to run while any number of
processes render into the area. The ETA comes from two measurements: each part records its
render seconds (the speed of one worker, per FLOP-unit of work, since jobs differ in cost by
depth) and the parts finished in the last minutes (how many workers are busy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fvds.builder.plan import Job, make_plan
from fvds.builder.workarea import WorkArea
from fvds.schemas.manifest import MANIFEST

WINDOW_S = 600.0  # how far back finished jobs count towards the current rate


@dataclass(frozen=True)
class StageProgress:
    name: str
    jobs_done: int
    jobs: int
    units_done: int
    units: int


@dataclass(frozen=True)
class WorkStatus:
    out: Path
    stages: tuple[StageProgress, ...]
    failed: tuple[dict, ...]  # failure records (job, error, traceback, where, time)
    work_left_s: float | None  # device-seconds the missing jobs need at the measured speed
    busy_workers: float  # workers busy over the last WINDOW_S, from the parts they finished
    eta_s: float | None  # work_left_s / busy_workers, when both are known
    assembled: bool  # the dataset folder is newer than every part

    @property
    def jobs_done(self) -> int:
        return sum(s.jobs_done for s in self.stages)

    @property
    def jobs(self) -> int:
        return sum(s.jobs for s in self.stages)


def work_status(out: Path, now: float | None = None) -> WorkStatus:
    work = WorkArea(Path(out).expanduser().resolve())
    plan = make_plan(work.load_config())
    now = time.time() if now is None else now
    done: dict[str, tuple[float | None, float]] = {}  # job id -> (render seconds, finished at)
    for job in plan.jobs:
        info = work.part_info(job)
        if info is not None:
            seconds = float(info["seconds"]) if "seconds" in info else None
            try:
                finished = work.part_path(job).stat().st_mtime
            except FileNotFoundError:  # a broken part, just removed by a rendering process
                continue
            done[job.id] = (seconds, finished)
    stages = tuple(
        StageProgress(s.name, sum(j.id in done for j in plan.jobs_of(s.name)),
                      len(plan.jobs_of(s.name)),
                      sum(len(j.units) for j in plan.jobs_of(s.name) if j.id in done),
                      sum(len(j.units) for j in plan.jobs_of(s.name)))
        for s in plan.config.stages)

    missing = [j for j in plan.jobs if j.id not in done]
    timed = {i: v for i, v in done.items() if v[0] is not None}
    work_left = eta = None
    busy = 0.0
    if timed:
        start = min(t - s for s, t in timed.values())
        window = min(WINDOW_S, now - start)
        cutoff = now - window
        # the part of each recent job's render time that fell inside the window
        busy = sum(min(s, t - cutoff) for s, t in timed.values() if t >= cutoff) / window \
            if window > 0 else 0.0
        if missing:
            flops = plan.layer_flops
            by_id = {j.id: j for j in plan.jobs}

            def cost(job: Job) -> float:
                return flops[job.layer.name] * len(job.units)

            per_cost = sum(s for s, _ in timed.values()) / sum(cost(by_id[i]) for i in timed)
            work_left = per_cost * sum(cost(j) for j in missing)
            eta = work_left / busy if busy > 0 else None
        else:
            work_left = 0.0
    manifest = work.out / MANIFEST
    newest = max((t for _, t in done.values()), default=0.0)
    assembled = manifest.exists() and not missing and manifest.stat().st_mtime >= newest
    return WorkStatus(work.out, stages, tuple(work.failures()), work_left, busy, eta, assembled)
