"""``fvds build``: plan -> render -> embed -> project -> assemble -> card.

Every input is checked before anything is written. Rendering resumes from the work area, with
the launcher of :mod:`fvds.builder.executors` the :class:`Launch` names; a build given a shard
renders only that shard's jobs, and :func:`assemble_work` (``fvds assemble``) finishes the
dataset once every shard is done.
The dataset folder is assembled in ``OUT/.fvds/staging`` and moved into place at the end, so
a failed assembly never leaves a half-written dataset where a good one was.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fvds.builder import executors
from fvds.builder.assemble import Projection, assemble
from fvds.builder.compare import Comparison, RowKeys, compare
from fvds.builder.embed import Embedder
from fvds.builder.executors import Launch
from fvds.builder.models import check_checkpoint, check_model_name, load_stage
from fvds.builder.plan import Job, Plan, make_plan
from fvds.builder.project import project
from fvds.builder.render import numerics, resolve_device
from fvds.builder.workarea import WorkArea, atomic_write_bytes, check_out_dir
from fvds.builder.worker import stage_meta
from fvds.config import Config
from fvds.errors import FvdsError
from fvds.schemas.manifest import MANIFEST, build_manifest, library_versions, manifest_bytes
from fvds.schemas.rows import COMPARISON_DIR, COMPARISON_SHARD

# What a build writes at the top of the dataset folder; the rest of OUT is left alone.
DATASET_ENTRIES = ("README.md", "data", COMPARISON_DIR, "figures", MANIFEST)


@dataclass
class BuildReport:
    out: Path
    rows: dict[str, int] = field(default_factory=dict)
    rendered_jobs: int = 0
    skipped_jobs: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class _Phases:
    def __init__(self, report: BuildReport, log: Callable[[str], None]):
        self.report, self.log = report, log

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.report.timings[name] = round(time.perf_counter() - t0, 3)
        self.log(f"{name}: {self.report.timings[name]:.1f} s")


def check_inputs(config: Config) -> Plan:
    """Everything that can be wrong with the input, found before any work: model, layers,
    stage weights, device."""
    plan = make_plan(config)
    for stage in config.stages:
        check_checkpoint(config.model.name, stage)
    if config.embedding.method == "encoder":
        from fvds.config import StageConfig

        check_model_name(config.embedding.encoder_model)
        check_checkpoint(config.embedding.encoder_model,
                         StageConfig(name="encoder", weights=config.embedding.encoder_weights))
    resolve_device(config.render.device)
    return plan


def build(config: Config, out: Path, *, launch: Launch | None = None, quiet: bool = False,
          log: Callable[[str], None] = print) -> BuildReport:
    """Build the dataset folder ``out`` from ``config``; resumes an interrupted build.

    ``launch`` says where jobs render (this process by default). With ``launch.shard`` only
    that shard's jobs are rendered and nothing is assembled."""
    launch = launch or Launch()
    launch.check()
    out = check_out_dir(out)
    plan = check_inputs(config)
    work = WorkArea(out)
    work.check_identity(config)
    if launch.executor == "local":  # Ray's devices are known once tasks run: settle checks
        device = launch.devices[0] if launch.devices else config.render.device
        work.check_numerics(numerics(config.render, resolve_device(device)))
    report = BuildReport(out)
    phase = _Phases(report, log)
    work.claim(config)

    jobs = list(plan.jobs if launch.shard is None else launch.shard.select(plan.jobs))
    if launch.shard is not None:
        log(f"Shard {launch.shard}: {len(jobs)} of the {len(plan.jobs)} jobs.")
    with phase("render"):
        render_missing(plan, work, jobs, launch, report, quiet=quiet, log=log)
    if launch.shard is not None:
        log(f"Shard {launch.shard}: its {len(jobs)} jobs are rendered. Once every shard is "
            f"done, run `fvds assemble {out}`.")
        return report
    _assemble(plan, work, report, phase, quiet=quiet)
    log(f"Dataset ready: {out} ({sum(report.rows.values())} rows)")
    return report


def assemble_work(out: Path, *, device: str | None = None, quiet: bool = False,
                  log: Callable[[str], None] = print) -> BuildReport:
    """Assemble the dataset folder ``out`` from its work area once every job is rendered (by
    any number of shards), with the config the build recorded there; ``device`` overrides
    ``render.device`` for the embedding."""
    work = WorkArea(Path(out).expanduser().resolve())
    config = work.load_config()
    if device is not None:
        resolve_device(device)
        config = config.model_copy(update={"render": config.render.model_copy(
            update={"device": device})})
    plan = make_plan(config)
    report = BuildReport(work.out)
    _assemble(plan, work, report, _Phases(report, log), quiet=quiet)
    log(f"Dataset ready: {work.out} ({sum(report.rows.values())} rows)")
    return report


def render_missing(plan: Plan, work: WorkArea, jobs: list[Job], launch: Launch,
                   report: BuildReport, *, quiet: bool, log: Callable[[str], None]) -> None:
    """Render every job of ``jobs`` without a valid part; fail listing the jobs that raised."""
    todo = [j for j in jobs if not work.is_done(j)]
    report.skipped_jobs = len(jobs) - len(todo)
    if report.skipped_jobs:
        log(f"Resuming: {report.skipped_jobs} of {len(jobs)} jobs already rendered.")
    total = sum(len(j.units) for j in jobs)
    with _progress(quiet) as progress:
        task = progress.add_task("render", total=total,
                                 completed=total - sum(len(j.units) for j in todo))

        def advance(job: Job) -> None:
            progress.update(task, description=f"{job.stage} {job.layer.name}",
                            advance=len(job.units))

        try:
            tally = executors.run(plan, work, todo, launch, advance, log)
        except KeyboardInterrupt:
            done = sum(work.part_path(j).exists() for j in jobs)
            log(f"Interrupted: {done} of {len(jobs)} jobs done; rerun the same command to "
                "resume.")
            raise
    report.rendered_jobs = tally.rendered
    report.skipped_jobs += tally.elsewhere
    if tally.failed:
        shown = "; ".join(f"{k}: {v}" for k, v in list(tally.failed.items())[:5])
        more = f" (+{len(tally.failed) - 5} more)" if len(tally.failed) > 5 else ""
        raise FvdsError(
            f"{len(tally.failed)} of {len(jobs)} jobs failed: {shown}{more}. The other jobs are "
            f"saved. Tracebacks: `fvds status {work.out}`; rerun the same command to retry the "
            "failed jobs.")


def _assemble(plan: Plan, work: WorkArea, report: BuildReport, phase, *, quiet: bool) -> None:
    """Refuse with jobs missing (listing them), else run :func:`finish`, one process at a
    time."""
    missing = [j.id for j in plan.jobs if not work.is_done(j)]
    if missing:
        failed = len(work.failures())
        note = f" {failed} of them failed (`fvds status {work.out}` shows why)." if failed else ""
        more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
        raise FvdsError(
            f"Cannot assemble '{work.out}': {len(missing)} of {len(plan.jobs)} jobs are not "
            f"rendered: {', '.join(missing[:10])}{more}.{note} Render them with `fvds build` "
            "(the same config, all shards or none), then assemble.")
    # Two processes assembling one folder would share its staging area: they take turns.
    with work.assembly_lock():
        finish(plan, work, stage_records(plan, work), report, phase, quiet=quiet)


def stage_records(plan: Plan, work: WorkArea) -> dict[str, dict]:
    """Each stage's weight record, as the process that rendered it wrote it; a stage without
    one (its parts came from elsewhere) is loaded once to fingerprint it."""
    cfg = plan.config
    records = {}
    for stage in cfg.stages:
        record = work.stage_record(stage.name)
        if record is None:
            loaded = load_stage(cfg.model.name, stage, seed=cfg.seed)
            record = stage_meta(cfg, stage, loaded.sha256)
            work.record_stage(stage.name, record)
        records[stage.name] = record
    return records


def finish(plan: Plan, work: WorkArea, stages: dict[str, dict], report: BuildReport, phase,
           *, quiet: bool) -> None:
    """Embed, project, assemble, card: everything after rendering, from the parts alone."""
    cfg = plan.config
    device = resolve_device(cfg.render.device)
    staging = work.root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    with phase("embed"):
        embeddings = embed_all(plan, work, Embedder(cfg.embedding, device, seed=cfg.seed), quiet)
    stage_of_row = np.array([j.stage for j in plan.jobs for _ in j.units])
    with phase("umap"):
        coords, used = project(embeddings, cfg.umap)
        stage_coords = None
        if cfg.umap.per_stage:
            stage_coords = np.zeros_like(coords)
            for s in cfg.stages:
                m = stage_of_row == s.name
                stage_coords[m], _ = project(embeddings[m], cfg.umap)
    with phase("assemble"):
        proj = Projection(embeddings, coords, stage_coords)
        report.rows = assemble(plan, work, proj, staging)
        comparison = compare_stages(plan, embeddings, coords, staging)
    with phase("card"):
        figures = make_figures(plan, work, staging, stage_of_row, coords)
        shard_bytes = {s.name: sum(p.stat().st_size for p in (staging / "data" / s.name).glob(
            "*.parquet")) for s in cfg.stages}
        cmp_file = staging / COMPARISON_SHARD
        shard_bytes_cmp = cmp_file.stat().st_size if cmp_file.exists() else 0
        versions = library_versions()
        card = _render_card(plan, report.rows, shard_bytes, embeddings.shape[1], stages, used,
                            versions, figures, comparison, shard_bytes_cmp)
        (staging / "README.md").write_text(str(card), encoding="utf-8")
        manifest = build_manifest(
            staging, fvds_version=versions.get("fvds"), config=cfg.to_dict(), versions=versions,
            stages=stages, layers=[{"name": la.name, "index": la.index, "channels": la.channels}
                                   for la in plan.layers],
            rows=report.rows, embedding={"method": cfg.embedding.method,
                                         "dim": int(embeddings.shape[1])},
            projection=used, comparison=comparison.manifest())
        atomic_write_bytes(staging / MANIFEST, manifest_bytes(manifest))
        _swap_into_place(staging, work.out)


def _render_card(plan, rows, shard_bytes, dim, stages, used, versions, figures, comparison,
                 comparison_bytes):
    from fvds.dataset_card.card import render_card

    return render_card(plan, rows=rows, shard_bytes=shard_bytes, embedding_dim=dim,
                       stages=stages, projection=used, versions=versions, figures=figures,
                       comparison=comparison, comparison_bytes=comparison_bytes)


def compare_stages(plan: Plan, embeddings: np.ndarray, coords: np.ndarray,
                   dest: Path) -> Comparison:
    """Unit cosines between stages (written as the `comparison` table when there are two or
    more stages), per-layer summaries and the layer-clustering score of the projection."""
    keys = RowKeys(
        stage=np.array([j.stage for j in plan.jobs for _ in j.units]),
        layer=np.array([j.layer.name for j in plan.jobs for _ in j.units]),
        layer_index=np.array([j.layer.index for j in plan.jobs for _ in j.units]),
        unit=np.array([u for j in plan.jobs for u in j.units]))
    result = compare(embeddings, coords, keys, [s.name for s in plan.config.stages])
    if len(result.cosines):
        (dest / COMPARISON_DIR).mkdir(parents=True, exist_ok=True)
        pq.write_table(result.cosines.to_arrow(), dest / COMPARISON_SHARD, compression="zstd",
                       row_group_size=10_000)
    return result


def embed_all(plan: Plan, work: WorkArea, embedder: Embedder, quiet: bool) -> np.ndarray:
    """Embeddings of every row in plan order, in a memmap under the work area so that memory
    holds one part's images at a time."""
    n = plan.total_units
    path = work.root / "embeddings.f32"
    mm = None
    offset = 0
    with _progress(quiet) as progress:
        task = progress.add_task("embed", total=n)
        for job in plan.jobs:
            pngs = pq.read_table(work.part_path(job), columns=["image"]).column("image")
            vecs = embedder(pngs.to_pylist())
            if mm is None:
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                               shape=(n, vecs.shape[1]))
            mm[offset:offset + len(vecs)] = vecs
            offset += len(vecs)
            progress.advance(task, len(vecs))
    mm.flush()
    return mm


def make_figures(plan: Plan, work: WorkArea, dest: Path, stage_of_row: np.ndarray,
                 coords: np.ndarray) -> list[str]:
    from fvds.dataset_card.figures import grid_figure, umap_figure

    cfg = plan.config
    (dest / "figures").mkdir(parents=True, exist_ok=True)
    names = []
    k = cfg.dataset.grid_layers
    idx = np.unique(np.linspace(0, len(plan.layers) - 1, min(k, len(plan.layers))).round()
                    .astype(int))
    shown = [plan.layers[i].name for i in idx]
    for stage in cfg.stages:
        rows = []
        for layer in shown:
            job = next(j for j in plan.jobs_of(stage.name) if j.layer.name == layer)
            t = pq.read_table(work.part_path(job), columns=["unit", "image"])
            units = t.column("unit").to_pylist()[: cfg.dataset.grid_units]
            rows.append((layer, list(zip(units, t.column("image").to_pylist(), strict=False))))
        name = f"figures/grid_{stage.name}.png"
        grid_figure(dest / name, stage.name, rows)
        names.append(name)
    depth = np.array([j.layer.index for j in plan.jobs for _ in j.units])
    umap_figure(dest / "figures/umap.png", [s.name for s in cfg.stages], stage_of_row, coords,
                depth)
    return ["figures/umap.png", *names]


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace the dataset entries of ``out`` with the staged ones; the manifest goes last, so
    a folder with a current fvds.json is a complete one."""
    (out / MANIFEST).unlink(missing_ok=True)
    for name in DATASET_ENTRIES:
        if name == MANIFEST:
            continue
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (staging / name).exists():
            (staging / name).rename(target)
    (staging / MANIFEST).rename(out / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)


def _progress(quiet: bool):
    from fvds.commands._common import progress_bars

    return progress_bars(quiet, label_width=28, unit="units")

