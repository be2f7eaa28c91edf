"""Speed and quality of fvds's batched renderer against torch-lucent's per-unit render_vis.

Setting (issue 2): seresnext50_32x4d with random init, three layers (early, middle, last
stage), 8 units each, lucent's standard transforms, neuron objective, Adam lr 0.05. Images are
rendered at --size and fed to the model at --size (``fixed_image_size`` for lucent).

The baseline is what a user of lucent writes: ``render_vis`` once per unit, on a freshly
created timm model (model creation is not timed). fvds renders all units of a layer as one
batch. Both final images are quantised to uint8 and scored by the same function (the
objective without transforms), so the activation ratio compares like with like. Ratios are
taken over the units whose lucent activation is above ALIVE; ``fvds_ge_lucent`` counts every
unit.

    python benchmarks/bench_render.py                                  # CPU, 64 px, 32 steps
    python benchmarks/bench_render.py --device cuda --size 224         # on a GPU
    python benchmarks/bench_render.py --device cuda --size 224 --units 64 --lucent-units 8
    python benchmarks/bench_render.py --noise matched      # lucent fed fvds's noise
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import numpy as np
import timm
import torch

from fvds.builder.models import create_model
from fvds.builder.render import activation_of, prepare_model, render_units, resolve_device
from fvds.builder.render.reference import lucent_render
from fvds.config import load_config

LAYERS = ("layer1.0.conv2", "layer3.0.conv2", "layer4.2.conv3")
# A ratio of activations means something only where lucent's unit responds at all: a random
# network has dead units (exactly 0) and units that stay near 0 or below in a short run.
ALIVE = 1e-3


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_lucent(model_name, state, layer, units, cfg, device, matched):
    """Per-unit render_vis on fresh models holding ``state``; returns (seconds, uint8 images)."""
    images, seconds = [], 0.0
    for u in units:
        # a fresh model as a user would create it (lucent registers hooks it never removes),
        # with the weights fvds renders, so that both maximise the same units
        model = timm.create_model(model_name, pretrained=False)
        model.load_state_dict(state)
        model = model.to(device).eval()
        _sync(device)
        t0 = time.perf_counter()
        images.append(lucent_render(model, layer, u, cfg, seed=0, matched=matched))
        _sync(device)
        seconds += time.perf_counter() - t0
    return seconds, np.stack(images)


def bench_fvds(model, layer, units, cfg, device):
    _sync(device)
    t0 = time.perf_counter()
    result = render_units(model, layer, units, cfg, seed=0, device=device)
    _sync(device)
    return time.perf_counter() - t0, result.images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="seresnext50_32x4d")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--units", type=int, default=8, help="units per layer rendered by fvds")
    ap.add_argument("--lucent-units", type=int, default=None,
                    help="units per layer for the lucent baseline (default: --units)")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS))
    ap.add_argument("--skip-lucent", action="store_true")
    ap.add_argument("--noise", choices=["independent", "matched"], default="independent",
                    help="independent: lucent draws its own noise (seeded by unit); matched: "
                    "lucent gets fvds's initial noise and transform draws for each unit")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    device = resolve_device(args.device)
    cfg = load_config(overrides={
        "render.size": args.size, "render.model_input_size": args.size,
        "render.steps": args.steps, "render.objective": "neuron", "render.transforms": "lucent",
        "render.batch_size": args.units, "render.device": str(device)}).render
    weights = create_model(args.model, "random", seed=0)
    state = {k: v.clone() for k, v in weights.state_dict().items()}
    model = prepare_model(weights, device)
    scorer = model  # the same fp32 weights score both renderers' images
    n_lucent = args.lucent_units or args.units

    # warm-up: allocator, cuDNN/oneDNN autotuning, lazy imports
    render_units(model, args.layers[0], [0], cfg.model_copy(update={"steps": 2}), seed=1,
                 device=device)
    if not args.skip_lucent:
        bench_lucent(args.model, state, args.layers[0], [0],
                     cfg.model_copy(update={"steps": 2}), device, args.noise == "matched")

    rows, ratios, all_pairs = [], [], []
    tot = {"fvds_s": 0.0, "fvds_n": 0, "lucent_s": 0.0, "lucent_n": 0}
    for layer in args.layers:
        units = list(range(args.units))
        f_s, f_img = bench_fvds(model, layer, units, cfg, device)
        f_act = activation_of(scorer, layer, units, f_img, cfg)
        row = {"layer": layer, "fvds_units": len(units), "fvds_s": round(f_s, 3),
               "fvds_units_per_s": round(len(units) / f_s, 3)}
        tot["fvds_s"] += f_s
        tot["fvds_n"] += len(units)
        if not args.skip_lucent:
            lu = units[:n_lucent]
            l_s, l_img = bench_lucent(args.model, state, layer, lu, cfg, device,
                                      args.noise == "matched")
            l_act = activation_of(scorer, layer, lu, l_img, cfg)
            pairs = list(zip(f_act[: len(lu)].tolist(), l_act.tolist(), strict=True))
            layer_ratios = [a / b for a, b in pairs if b > ALIVE]
            ratios += layer_ratios
            all_pairs += pairs
            row.update({
                "lucent_units": len(lu), "lucent_s": round(l_s, 3),
                "lucent_units_per_s": round(len(lu) / l_s, 3),
                "speed_ratio": round((len(units) / f_s) / (len(lu) / l_s), 2),
                "fvds_act": [round(float(a), 4) for a in f_act[: len(lu)]],
                "lucent_act": [round(float(a), 4) for a in l_act],
                "median_act_ratio": _median(layer_ratios),
                "fvds_mean_act": round(float(np.mean(f_act[: len(lu)])), 4),
                "lucent_mean_act": round(float(np.mean(l_act)), 4),
            })
            tot["lucent_s"] += l_s
            tot["lucent_n"] += len(lu)
        rows.append(row)
        print(json.dumps(row), flush=True)

    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "model": args.model, "size": args.size, "steps": args.steps, "noise": args.noise,
        "torch": torch.__version__,
        "fvds_units_per_s": round(tot["fvds_n"] / tot["fvds_s"], 3),
    }
    if not args.skip_lucent:
        lucent_rate = tot["lucent_n"] / tot["lucent_s"]
        summary.update({
            "lucent_units_per_s": round(lucent_rate, 3),
            "speed_ratio": round(summary["fvds_units_per_s"] / lucent_rate, 2),
            "median_act_ratio": _median(ratios),
            "min_act_ratio": round(min(ratios), 3) if ratios else None,
            "units_compared": len(ratios), "units_dead_in_lucent": len(all_pairs) - len(ratios),
            "fvds_ge_lucent": round(sum(a >= b for a, b in all_pairs) / len(all_pairs), 3),
        })
    print(json.dumps({"summary": summary}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
