"""Wall time of one build rendered by this process vs by one worker process per device.

By default the tests' tiny build (timm's test_resnet, two stages, 3 layers x 3 units, 32 px,
3 steps: 12 jobs), where the cost of starting worker processes is visible; raise --steps or
--size to see how it amortises. Each setting builds into a fresh folder, so nothing is reused.

    python benchmarks/bench_devices.py                      # single vs --devices cpu,cpu
    python benchmarks/bench_devices.py --steps 48 --size 64
    python benchmarks/bench_devices.py --devices cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def config(args, checkpoint: Path):
    from fvds.config import load_config

    return load_config(overrides={
        "model.name": "test_resnet",
        "stages": [{"name": "random", "weights": "random"},
                   {"name": "finetuned", "weights": str(checkpoint)}],
        "units.layers": ["conv1.0", "layer1.0.conv2", "layer2.0.conv2"],
        "units.per_layer": 3, "render.size": args.size, "render.model_input_size": args.size,
        "render.steps": args.steps, "render.batch_size": 2, "render.device": "cpu",
        "embedding.pixels_size": 8, "dataset.name": "fvds-bench"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best is kept")
    args = ap.parse_args()

    from safetensors.torch import save_file

    from fvds.builder.executors import Launch, parse_devices
    from fvds.builder.models import create_model
    from fvds.builder.pipeline import build

    devices = parse_devices(args.devices)
    with tempfile.TemporaryDirectory(prefix="fvds-bench-devices-") as tmp:
        ckpt = Path(tmp) / "finetuned.safetensors"
        model = create_model("test_resnet", "random", num_classes=5, seed=11)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
        cfg = config(args, ckpt)
        build(cfg, Path(tmp) / "warm-up", quiet=True, log=lambda m: None)  # numba JIT, caches

        print(f"{os.cpu_count()} CPUs; {args.steps} steps, {args.size} px, 12 jobs")
        print(f"{'launch':<28}{'render s':>10}{'build s':>10}")
        for name, launch in (("this process", Launch()),
                             (f"--devices {','.join(devices)}", Launch(devices=devices))):
            best_render = best_total = float("inf")
            for r in range(args.repeat):
                t0 = time.perf_counter()
                report = build(cfg, Path(tmp) / f"{name}-{r}".replace(" ", "_"), launch=launch,
                               quiet=True, log=lambda m: None)
                best_total = min(best_total, time.perf_counter() - t0)
                best_render = min(best_render, report.timings["render"])
            print(f"{name:<28}{best_render:>10.2f}{best_total:>10.2f}")


if __name__ == "__main__":
    main()
