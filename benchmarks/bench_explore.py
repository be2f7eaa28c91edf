"""`fvds explore` at the paper's scale: 3 stages x 49 layers x 64 units = 9,408 rows.

Rendering 9,408 units needs a GPU, so the parts are synthetic (smooth random colour images of
the paper's 100 px, written where a build would write them); everything after rendering is the
real code: `fvds assemble` (embedding, joint UMAP, shards, comparison, card), then
`fvds explore`, then the site's index in headless Chromium when /usr/bin/chromium and
playwright are installed (time until the map is drawn, and one hover).

    python benchmarks/bench_explore.py                  # the paper's shape
    python benchmarks/bench_explore.py --units 8        # 1,176 rows, quicker
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")


def synthetic_build(out: Path, units: int, size: int) -> int:
    """A work area with every job of the paper plan rendered (synthetic images)."""
    from PIL import Image

    from fvds.builder.plan import make_plan
    from fvds.builder.render.optimize import JobResult
    from fvds.builder.workarea import WorkArea, part_table
    from fvds.config import load_config

    # the paper's plan with weights that need no download (the images are synthetic anyway)
    cfg = load_config(preset="paper", overrides={
        "stages": [{"name": n, "weights": "random"}
                   for n in ("random", "pretrained", "finetuned")],
        "units.per_layer": units, "render.size": size})
    plan = make_plan(cfg)
    work = WorkArea(out)
    work.claim(cfg)
    rng = np.random.default_rng(0)
    for job in plan.jobs:
        low = rng.integers(0, 256, (len(job.units), 6, 6, 3), dtype=np.uint8)
        images = np.stack([np.asarray(Image.fromarray(x).resize((size, size),
                                                              Image.Resampling.BICUBIC))
                           for x in low])
        result = JobResult(job.layer.name, list(job.units), images,
                           rng.normal(size=len(job.units)).astype(np.float32), 0)
        work.write_part(job, part_table(job, cfg.model.name, result, cfg.render.steps))
    for stage in cfg.stages:  # fingerprints, as the rendering processes record them
        work.record_stage(stage.name, {"weights": stage.weights, "sha256": f"{0:064x}",
                                       "num_classes": None})
    return plan.total_units


def browse(site: Path) -> dict:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        t0 = time.perf_counter()
        page.goto((site / "index.html").as_uri())
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0 && "
                               "Bokeh.documents[0].get_model_by_name('fvds-points')")
        page.locator("canvas").first.wait_for()  # Bokeh draws inside a shadow root
        ready = time.perf_counter() - t0
        n = page.evaluate("() => Bokeh.documents[0].get_model_by_name('fvds-points')"
                          ".data.id.length")
        box = page.locator("canvas").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(500)
        shot = io.BytesIO(page.screenshot())
        browser.close()
    return {"points": n, "map_ready_s": round(ready, 2), "screenshot_bytes": len(shot.getvalue())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=64, help="units per layer")
    ap.add_argument("--size", type=int, default=100, help="image side, px")
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temp dir)")
    args = ap.parse_args()

    from fvds.builder.pipeline import assemble_work
    from fvds.explore import build_site

    with tempfile.TemporaryDirectory(prefix="fvds-bench-explore-") as tmp:
        root = args.keep or Path(tmp)
        out, site = root / "dataset", root / "site"
        t0 = time.perf_counter()
        rows = synthetic_build(out, args.units, args.size)
        print(f"synthetic parts: {rows} rows in {time.perf_counter() - t0:.1f} s")
        report = assemble_work(out, quiet=True, log=lambda m: None)
        print("fvds assemble: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()))
        t0 = time.perf_counter()
        site_report = build_site(str(out), site, quiet=True, log=lambda m: None)
        seconds = time.perf_counter() - t0
        files = [p for p in site.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        index = (site / "index.html").stat().st_size
        print(f"fvds explore: {seconds:.1f} s; {site_report.unit_pages} unit pages, "
              f"{len(files)} files, {size / 2**20:.1f} MiB in all, index.html "
              f"{index / 2**20:.2f} MiB")
        print("layer clustering: " + ", ".join(
            f"{s} {c['layer_accuracy']} (chance {c['layer_chance']})"
            for s, c in site_report.clustering.items()))
        if CHROMIUM.exists():
            try:
                print(f"chromium: {browse(site)}")
            except ImportError:
                print("chromium: playwright is not installed")


if __name__ == "__main__":
    main()
