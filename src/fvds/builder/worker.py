"""The one worker every launcher runs: a job in, a part out.

A :class:`Worker` lives in whatever process renders (the build process, one process per
device, a Ray worker). It builds each stage's model itself from the config, the first time a
job of that stage comes, and keeps it, so a launcher ships only the config and job ids, never a
model. :meth:`Worker.render` is pure (no file is written) and :meth:`Worker.try_render` turns
an error into a :class:`Failed` value; :func:`settle` puts either into the work area (a part,
or a failure record), wherever the work area is: in the rendering process for local launchers,
in the driver for Ray, whose workers need no shared filesystem for the parts.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from fvds.builder.models import load_stage, pretrained_source
from fvds.builder.plan import Job, Plan
from fvds.builder.render import numerics, prepare_model, render_units
from fvds.builder.workarea import WorkArea, part_table
from fvds.config import Config, StageConfig
from fvds.errors import FvdsError


@dataclass(frozen=True)
class Rendered:
    job: Job
    table: pa.Table  # the part's rows
    seconds: float  # render time of this job alone
    stage: dict  # the stage's weight record (sha256, provenance), see stage_meta
    device: str
    numerics: str  # device kind and precision, see fvds.builder.render.numerics


@dataclass(frozen=True)
class Failed:
    job: Job
    error: str  # one line: exception type and first line of its message
    detail: str  # the traceback
    where: str  # host, process and device

    @classmethod
    def of(cls, job: Job, error: BaseException, at: str) -> Failed:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return cls(job, f"{type(error).__name__}: {first}".rstrip(": "),
                   "".join(traceback.format_exception(error)), at)


class Worker:
    """Renders jobs of one plan on one device, loading each stage's model once."""

    def __init__(self, plan: Plan, device: torch.device):
        self.plan, self.device = plan, device
        # All stages stay loaded: launchers hand out jobs longest-first, which interleaves
        # stages, and a build has a handful of stages.
        self._models: dict[str, tuple[torch.nn.Module, dict]] = {}

    def model(self, stage: str) -> tuple[torch.nn.Module, dict]:
        if stage not in self._models:
            cfg = self.plan.config
            loaded = load_stage(cfg.model.name, cfg.stage(stage), seed=cfg.seed)
            self._models[stage] = (prepare_model(loaded.model, self.device),
                                   stage_meta(cfg, cfg.stage(stage), loaded.sha256))
        return self._models[stage]

    def render(self, job: Job) -> Rendered:
        cfg = self.plan.config
        model, meta = self.model(job.stage)
        t0 = time.perf_counter()
        result = render_units(model, job.layer.name, list(job.units), cfg.render, cfg.seed,
                              self.device)
        table = part_table(job, cfg.model.name, result, cfg.render.steps)
        return Rendered(job, table, time.perf_counter() - t0, meta, str(self.device),
                        numerics(cfg.render, self.device))

    def try_render(self, job: Job) -> Rendered | Failed:
        """:meth:`render`, with an error as a value. Ctrl-C is no error of the job: it
        propagates."""
        try:
            return self.render(job)
        except Exception as e:
            return Failed.of(job, e, where(self.device))


def settle(work: WorkArea, outcome: Rendered | Failed) -> str | None:
    """Put an outcome into the work area; returns the error line of a failure, else None.

    A rendered job writes its numerics and its stage's record first, then its part (the commit
    point), then drops the failure record of an earlier attempt. Numerics or a stage record that
    contradict the ones on disk (another kind of device, changed weights) turn the job into a
    failure, and its part is not written.
    """
    job = outcome.job
    if isinstance(outcome, Rendered):
        try:
            work.record_numerics(outcome.numerics)
            work.record_stage(job.stage, outcome.stage)
        except FvdsError as e:
            outcome = Failed.of(job, e, where(outcome.device))
        else:
            work.write_part(job, outcome.table, {"seconds": f"{outcome.seconds:.3f}",
                                                 "device": outcome.device,
                                                 "host": socket.gethostname()})
            work.clear_failure(job)
            return None
    work.record_failure(job, outcome.error, outcome.detail, outcome.where)
    return outcome.error


def where(device: torch.device | str) -> str:
    return f"{socket.gethostname()} pid {os.getpid()} {device}"


def stage_meta(cfg: Config, stage: StageConfig, sha256: str) -> dict:
    """What the dataset records about a stage's weights."""
    meta = {"weights": stage.weights, "sha256": sha256, "num_classes": stage.num_classes}
    if stage.weights == "timm":
        meta["source"] = pretrained_source(cfg.model.name)
    elif stage.is_checkpoint:
        meta["file"] = Path(stage.weights).name
        from fvds.finetune import read_finetune_metadata

        ft = read_finetune_metadata(stage.weights)
        if ft:
            meta["finetune"] = ft
    return meta
