"""``fvds build``, ``fvds plan``, ``fvds verify``: from a config to a verified dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import tomllib
import typer

from fvds.commands._common import DirArg, QuietOpt, console, handle_errors, out
from fvds.config import Config, load_config, parse_stage
from fvds.errors import BadInput

ConfigArg = Annotated[Path | None, typer.Argument(
    help="A TOML config file (see README: Configuration). Or use --preset.", show_default=False)]
PresetOpt = Annotated[str | None, typer.Option(
    "--preset", "-p", help="A shipped preset: quickstart or paper.", show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", help="timm model name.")]
StageOpt = Annotated[list[str] | None, typer.Option(
    "--stage", help="NAME=WEIGHTS (random, timm or a checkpoint path); repeat for several "
    "stages; replaces the config's stages.")]
LayersOpt = Annotated[list[str] | None, typer.Option(
    "--layers", help="Glob over conv module paths (repeatable), e.g. 'layer4.*.conv2'.")]
UnitsOpt = Annotated[int | None, typer.Option("--units-per-layer", help="Units per layer.")]
SelectOpt = Annotated[str | None, typer.Option("--unit-select", help="first or random.")]
ObjectiveOpt = Annotated[str | None, typer.Option("--objective", help="neuron or channel.")]
SizeOpt = Annotated[int | None, typer.Option("--size", help="Rendered image side, px.")]
InputSizeOpt = Annotated[int | None, typer.Option("--model-input-size",
                                                  help="Side the model sees, px.")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Optimisation steps.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Units optimised together.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Global seed.")]
EmbeddingOpt = Annotated[str | None, typer.Option("--embedding", help="pixels or encoder.")]
VersionOpt = Annotated[str | None, typer.Option("--dataset-version",
                                                help="Dataset version X.Y.Z (card, push tag).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Any config key: KEY=VALUE with a TOML value, e.g. --set umap.n_neighbors=30.")]
ShardOpt = Annotated[str | None, typer.Option(
    "--shard", help="Render only shard i of N (i/N, from 0; job k of the plan is in shard k mod "
    "N) and do not assemble: run `fvds assemble OUT` once every shard is done. Default: from "
    "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or RANK/WORLD_SIZE when set.",
    show_default=False)]
DevicesOpt = Annotated[str | None, typer.Option(
    "--devices", help="One worker process per device, sharing the jobs: auto (every GPU), "
    "cuda:0,cuda:1, cpu,cpu. Default: one process on the configured --device.",
    show_default=False)]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", help="local, or ray: one task per job on the Ray cluster at RAY_ADDRESS, else "
    "a local Ray (pip install 'fvds\\[ray]').")]


def _parse_set(items: list[str]) -> dict[str, Any]:
    out_: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set '{item}' must look like KEY=VALUE, e.g. render.lr=0.05.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string: --set render.device=cuda
        out_[key.strip()] = value
    return out_


def resolve_config(config: Path | None, preset: str | None, *, model=None, stage=None,
                   layers=None, units_per_layer=None, unit_select=None, objective=None,
                   size=None, model_input_size=None, steps=None, batch_size=None, device=None,
                   seed=None, embedding=None, dataset_version=None, set_=None) -> Config:
    """Flags -> dotted overrides -> a validated config."""
    overrides: dict[str, Any] = _parse_set(set_ or [])
    flags = {
        "model.name": model, "units.layers": layers or None,
        "units.per_layer": units_per_layer, "units.select": unit_select,
        "render.objective": objective, "render.size": size,
        "render.model_input_size": model_input_size, "render.steps": steps,
        "render.batch_size": batch_size, "render.device": device, "seed": seed,
        "embedding.method": embedding, "dataset.version": dataset_version,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if stage:
        overrides["stages"] = [parse_stage(s) for s in stage]
    return load_config(config, preset, overrides)


@handle_errors
def build(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write "
                                          "(created; an earlier build there is resumed).")
                       ] = Path("fvds-dataset"),
    model: ModelOpt = None, stage: StageOpt = None, layers: LayersOpt = None,
    units_per_layer: UnitsOpt = None, unit_select: SelectOpt = None,
    objective: ObjectiveOpt = None, size: SizeOpt = None, model_input_size: InputSizeOpt = None,
    steps: StepsOpt = None, batch_size: BatchOpt = None, device: DeviceOpt = None,
    seed: SeedOpt = None, embedding: EmbeddingOpt = None, dataset_version: VersionOpt = None,
    set_: SetOpt = None, shard: ShardOpt = None, devices: DevicesOpt = None,
    executor: ExecutorOpt = "local", quiet: QuietOpt = False,
) -> None:
    """Render, embed, project and assemble a dataset folder (resumable, shardable)."""
    from fvds.builder.executors import launch_from_flags
    from fvds.builder.pipeline import build as run_build

    cfg = resolve_config(config, preset, model=model, stage=stage, layers=layers,
                         units_per_layer=units_per_layer, unit_select=unit_select,
                         objective=objective, size=size, model_input_size=model_input_size,
                         steps=steps, batch_size=batch_size, device=device, seed=seed,
                         embedding=embedding, dataset_version=dataset_version, set_=set_)
    launch = launch_from_flags(executor, shard, devices, cfg.render.device)
    report = run_build(cfg, out_dir, launch=launch, quiet=quiet,
                       log=lambda m: console.print(m, highlight=False))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items())
    console.print(f"Rendered {report.rendered_jobs} jobs, reused {report.skipped_jobs}. "
                  f"{timings}.", highlight=False)
    out(str(report.out))


@handle_errors
def plan(
    config: ConfigArg = None,
    preset: PresetOpt = None,
    model: ModelOpt = None, stage: StageOpt = None, layers: LayersOpt = None,
    units_per_layer: UnitsOpt = None, unit_select: SelectOpt = None,
    size: SizeOpt = None, model_input_size: InputSizeOpt = None, steps: StepsOpt = None,
    batch_size: BatchOpt = None, device: DeviceOpt = None, seed: SeedOpt = None,
    set_: SetOpt = None,
    probe: Annotated[bool, typer.Option(help="Time a few steps on the device for the "
                                        "estimate (random weights, nothing is written).")
                     ] = True,
) -> None:
    """Print the jobs (stages x layers x units) and a time estimate; renders nothing."""
    from fvds.builder.models import check_stage_weights
    from fvds.builder.plan import estimate_seconds, make_plan, probe_step_time

    cfg = resolve_config(config, preset, model=model, stage=stage, layers=layers,
                         units_per_layer=units_per_layer, unit_select=unit_select, size=size,
                         model_input_size=model_input_size, steps=steps, batch_size=batch_size,
                         device=device, seed=seed, set_=set_)
    p = make_plan(cfg)
    per_layer = [len(p.units[layer.name]) for layer in p.layers]
    out(f"model   {cfg.model.name}")
    for s in cfg.stages:
        out(f"stage   {s.name:<12} weights={s.weights}")
    out(f"layers  {len(p.layers)}: " + ", ".join(la.name for la in p.layers))
    out(f"units   {min(per_layer)}-{max(per_layer)} per layer ({cfg.units.select}), "
        f"{sum(per_layer)} per stage")
    out(f"total   {len(cfg.stages)} stages x {len(p.layers)} layers x units = "
        f"{p.total_units:,} units in {len(p.jobs)} jobs of up to {cfg.render.batch_size}")
    out(f"render  {cfg.render.size} px -> {cfg.render.model_input_size} px, "
        f"{cfg.render.steps} steps, {cfg.render.objective}, transforms {cfg.render.transforms}")
    for s in cfg.stages:
        try:
            check_stage_weights(s)
        except BadInput as e:
            console.print(f"[yellow]warning:[/] {e}", highlight=False)
    if probe:
        per_step, layer, batch = probe_step_time(p)
        secs = estimate_seconds(p, per_step, layer, batch)
        out(f"estimate {_duration(secs)} on {cfg.render.device} (from {per_step * 1000:.0f} ms "
            f"per step of {batch} units at {layer}, scaled by FLOPs per layer)")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@handle_errors
def verify(folder: DirArg, quiet: QuietOpt = False) -> None:
    """Check schema, row counts, checksums and loadability; exit 0 only if all hold."""
    from fvds.errors import FvdsError
    from fvds.verify import verify_dataset

    problems = verify_dataset(folder)
    if problems:
        for p in problems:
            console.print(f"[red]x[/] {p}", highlight=False)
        raise FvdsError(f"'{folder}' failed verification ({len(problems)} problem(s)).")
    if not quiet:
        console.print(f"[green]ok[/] {folder}: schema, rows, checksums and load_dataset all "
                      "hold.", highlight=False)
