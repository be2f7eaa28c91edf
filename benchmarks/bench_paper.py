"""Time for the paper preset on this machine's device: one real job (64 units of the deepest
layer, 512 steps, 100 px -> 224 px) and the plan's estimate for all 9,408 units.

    python benchmarks/bench_paper.py [--device cuda] [--steps 512]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fvds.builder.models import create_model
from fvds.builder.plan import estimate_seconds, make_plan, probe_step_time
from fvds.builder.render import prepare_model, render_units, resolve_device
from fvds.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = load_config(preset="paper", overrides={"render.device": args.device,
                                                 "render.steps": args.steps})
    plan = make_plan(cfg)
    per_step, layer, batch = probe_step_time(plan)
    estimate = estimate_seconds(plan, per_step, layer, batch)

    device = resolve_device(cfg.render.device)
    model = prepare_model(create_model(cfg.model.name, "random", seed=0), device)
    units = list(plan.units[layer])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = render_units(model, layer, units, cfg.render, cfg.seed, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    job_s = time.perf_counter() - t0
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "units_total": plan.total_units, "jobs": len(plan.jobs),
        "probe_ms_per_step": round(per_step * 1000, 2), "probe_layer": layer,
        "deepest_job_s": round(job_s, 2), "deepest_job_units": len(units),
        "deepest_job_mean_activation": round(float(result.activations.mean()), 4),
        "estimate_all_stages_s": round(estimate, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda" else None,
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
