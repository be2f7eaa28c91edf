"""The job list: a deterministic function of the config (stages x layers x batches of units).

Layers and units come from the architecture alone (built on the meta device, no weights), so
planning is instant and every stage renders the same units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import torch

from fvds.builder.layers import Layer, conv_layers, select_layers, select_units
from fvds.config import Config


@dataclass(frozen=True)
class Job:
    stage: str
    layer: Layer
    units: tuple[int, ...]
    batch: int  # index of this batch among the layer's batches

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.layer.name}/{self.batch}"

    @property
    def part(self) -> str:
        """Part file of this job, relative to the work area's parts folder."""
        return f"{self.stage}/{self.layer.name}.b{self.batch:03d}.parquet"


@dataclass(frozen=True)
class Plan:
    config: Config
    layers: tuple[Layer, ...]  # selected layers in depth order
    units: dict[str, tuple[int, ...]]  # layer name -> unit indices (the same in every stage)
    jobs: tuple[Job, ...]

    @property
    def total_units(self) -> int:
        return sum(len(j.units) for j in self.jobs)

    def jobs_of(self, stage: str) -> list[Job]:
        return [j for j in self.jobs if j.stage == stage]

    @cached_property
    def layer_flops(self) -> dict[str, float]:
        """Forward FLOPs per image up to each selected layer, the relative cost of its jobs."""
        return _flops_to_layers(self.config, [layer.name for layer in self.layers])


def architecture(config: Config) -> torch.nn.Module:
    """The model's architecture with no weights (meta device)."""
    import timm

    from fvds.builder.models import check_model_name

    check_model_name(config.model.name)
    with torch.device("meta"):
        return timm.create_model(config.model.name, pretrained=False)


def make_plan(config: Config) -> Plan:
    layers = select_layers(conv_layers(architecture(config)), config.units.layers,
                           config.units.exclude)
    units = {layer.name: tuple(select_units(layer, config.units.per_layer, config.units.select,
                                            config.seed)) for layer in layers}
    b = config.render.batch_size
    jobs = tuple(
        Job(stage.name, layer, units[layer.name][i:i + b], i // b)
        for stage in config.stages
        for layer in layers
        for i in range(0, len(units[layer.name]), b)
    )
    return Plan(config, tuple(layers), units, jobs)


def _flops_to_layers(config: Config, names: list[str]) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from fvds.builder.render.optimize import truncated

    model = architecture(config)
    size = config.render.model_input_size
    out = {}
    for name in names:
        x = torch.zeros(1, 3, size, size, device="meta")
        with FlopCounterMode(display=False) as counter, truncated(model, name) as features:
            features(x)
        out[name] = float(max(counter.get_total_flops(), 1))
    return out


def estimate_seconds(plan: Plan, seconds_per_step: float, probe_layer: str, probe_batch: int,
                     ) -> float:
    """Extrapolate a measured step time to every job by FLOPs (forward + backward scale
    together) and batch size."""
    flops = plan.layer_flops
    steps = plan.config.render.steps
    per_unit_flop = seconds_per_step / (flops[probe_layer] * probe_batch)
    return sum(steps * per_unit_flop * flops[j.layer.name] * len(j.units) for j in plan.jobs)


def probe_step_time(plan: Plan) -> tuple[float, str, int]:
    """Time two optimisation steps of the deepest layer's first job on the configured device,
    with random weights; returns (seconds per step, layer, batch)."""
    from fvds.builder.models import create_model
    from fvds.builder.render import prepare_model, render_units, resolve_device

    cfg = plan.config
    device = resolve_device(cfg.render.device)
    model = prepare_model(create_model(cfg.model.name, "random", seed=cfg.seed), device)
    job = max(plan.jobs, key=lambda j: (plan.layer_flops[j.layer.name], len(j.units)))
    one = cfg.render.model_copy(update={"steps": 1})
    three = cfg.render.model_copy(update={"steps": 3})
    render_units(model, job.layer.name, list(job.units), one, cfg.seed, device)  # warm-up
    t0 = time.perf_counter()
    render_units(model, job.layer.name, list(job.units), one, cfg.seed, device)
    t1 = time.perf_counter()
    render_units(model, job.layer.name, list(job.units), three, cfg.seed, device)
    t2 = time.perf_counter()
    # the difference cancels the fixed cost of a job (setup, final scoring)
    per_step = max((t2 - t1) - (t1 - t0), 1e-6) / 2
    return per_step, job.layer.name, len(job.units)
