"""`fvds explore`: the static site from a dataset folder or a Hub repo, its bad inputs, and the
site itself in headless Chromium (Debian's /usr/bin/chromium driven by playwright; no browser
download): one point per row, the image on hover, a unit page with every stage, no request
leaves file://."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fvds.cli import app
from fvds.explore.neighbours import nearest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STAGES = ["random", "finetuned"]
LAYERS = ["conv1.0", "layer1.0.conv2", "layer2.0.conv2"]
UNITS = 3


def rows_of(dataset: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, columns=["id", "stage", "layer", "unit", "image"])
                             for p in sorted(dataset.glob("data/*/*.parquet"))])


def explore(*args: str):
    return CliRunner().invoke(app, ["explore", *args])


@pytest.fixture(scope="module")
def site(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("explore") / "site"
    result = explore(str(tiny_dataset), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "index.html")
    return out


# ------------------------------------------------------------------------------ the site's files
def test_site_has_a_page_per_layer_and_unit_and_every_image_once(site, tiny_dataset):
    rows = rows_of(tiny_dataset).to_pylist()
    assert (site / "index.html").is_file() and (site / "static" / "bokeh.js").is_file()
    assert sorted(p.stem for p in (site / "layers").glob("*.html")) == sorted(LAYERS)
    assert len(list((site / "units").rglob("*.html"))) == len(LAYERS) * UNITS
    assert len(list((site / "img").rglob("*.png"))) == len(rows)
    for r in rows:  # the stored PNG, byte for byte, beside the pages
        png = site / "img" / r["stage"] / r["layer"] / f"{r['unit']}.png"
        assert png.read_bytes() == r["image"]["bytes"]
    assert not (site / "thumb").exists()  # 32 px images are their own thumbnails
    meta = json.loads((site / "fvds-explore.json").read_text())
    assert meta["rows"] == len(rows) and meta["stages"] == STAGES
    assert set(meta["layer_clustering"]) == set(STAGES)
    index = (site / "index.html").read_text()
    assert "cdn.bokeh.org" not in index and "http://" not in index.replace(
        "http://www.w3.org", "")
    unit = (site / "units" / "layer1.0.conv2" / "1.html").read_text()
    for stage in STAGES:
        assert f'data-stage="{stage}"' in unit
        assert f"../../img/{stage}/layer1.0.conv2/1.png" in unit
    assert "random → finetuned" in unit and "in the other stages" in unit


def test_a_rebuilt_site_replaces_the_old_one(site, tiny_dataset, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    (copy / "img" / "stale.png").write_bytes(b"x")
    assert explore(str(tiny_dataset), "--out", str(copy), "-q").exit_code == 0
    assert not (copy / "img" / "stale.png").exists()


def test_large_images_get_thumbnails_small_ones_are_their_own(tmp_path):
    import io

    from PIL import Image

    from fvds.explore.source import Source
    from fvds.explore.units import collect

    def png(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG")
        return buf.getvalue()

    table = pa.table({
        "id": ["a/l/0", "a/l/1"], "stage": ["a", "a"], "layer": ["l", "l"],
        "layer_index": [0, 0], "unit": [0, 1], "layer_units": [2, 2],
        "image": [{"bytes": png(100), "path": None}, {"bytes": png(224), "path": None}],
        "activation": [1.0, 2.0], "embedding": [[1.0, 0.0], [0.0, 1.0]],
        "umap_x": [0.0, 1.0], "umap_y": [0.0, 1.0]})
    units = collect(Source("test", "test", ["a"], iter([table])), tmp_path)
    assert units.thumb(0) == units.img(0) == "img/a/l/0.png"  # 100 px: no copy
    assert units.thumb(1) == "thumb/a/l/1.png"
    assert Image.open(tmp_path / units.thumb(1)).size == (96, 96)
    assert Image.open(tmp_path / units.img(1)).size == (224, 224)  # the original is kept
    assert not (tmp_path / "thumb" / "a" / "l" / "0.png").exists()


def test_names_from_a_dataset_cannot_climb_out_of_the_site():
    from fvds.explore.units import slug

    assert slug("layer2.0.conv2") == "layer2.0.conv2"
    assert slug("..") == "_.." and slug(".hidden") == "_.hidden" and slug("") == "_"
    assert slug("a/../b") == "a_.._b" and "/" not in slug("../../etc")


def test_nearest_neighbours_within_and_across_stages():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [1, 0.05], [0.1, 1], [-1, 0]], np.float32)
    stage = np.array(["a", "a", "a", "b", "b", "b"])
    nn = nearest(emb, stage, k=3)
    assert nn.within[0].tolist() == [1, 2, -1]  # its own stage, never itself; 2 others only
    assert nn.across[0].tolist() == [3, 4, 5]
    assert nn.within_cos[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-6)
    big = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    got = nearest(big, np.array(["a", "b", "c"] * 100), k=4)
    sim = (big / np.linalg.norm(big, axis=1, keepdims=True)) @ \
        (big / np.linalg.norm(big, axis=1, keepdims=True)).T
    mask = np.array(["a", "b", "c"] * 100)
    for i in (0, 151, 299):
        same = np.where((mask == mask[i]) & (np.arange(300) != i), sim[i], -np.inf)
        assert got.within[i].tolist() == np.argsort(-same, kind="stable")[:4].tolist()


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_exit_2_naming_the_value(tiny_dataset, tmp_path):
    not_a_dataset = tmp_path / "photos"
    not_a_dataset.mkdir()
    a_file = tmp_path / "site.html"
    a_file.write_text("mine")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    cases = [
        ([str(not_a_dataset), "--out", str(tmp_path / "s1")], f"'{not_a_dataset}' has no "
                                                               "fvds.json"),
        ([str(tiny_dataset), "--out", str(a_file)], f"--out '{a_file}' is a file"),
        ([str(tiny_dataset), "--out", str(busy)], f"--out '{busy}' is a folder that is "
                                                  "neither empty"),
        (["not a repo!", "--out", str(tmp_path / "s2")], "'not a repo!' is neither a folder"),
        ([str(a_file), "--out", str(tmp_path / "s3")], f"'{a_file}' is a file"),
    ]
    for args, message in cases:
        result = explore(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert (busy / "notes.txt").read_text() == "keep me" and a_file.read_text() == "mine"
    assert not (tmp_path / "s1").exists()


# ------------------------------------------------------------------------------ from the Hub
@pytest.fixture(scope="module")
def hub(tiny_dataset):
    """The loopback Hub double holding the tiny dataset, tagged v0.1.0, as a push leaves it."""
    from hub_double import HubDouble

    double = HubDouble({}).start()
    repo = double.add_repo("fvds-lab/tiny")
    files = {p.relative_to(tiny_dataset).as_posix(): p.read_bytes()
             for p in sorted(tiny_dataset.rglob("*"))
             if p.is_file() and not p.relative_to(tiny_dataset).as_posix().startswith(".")}
    with double._lock:
        main = repo.commits[repo.branches["main"]]
        commit = double._new_commit(repo, main, {**main.files, **files}, "dataset v0.1.0")
        repo.branches["main"] = commit.sha
        repo.tags["v0.1.0"] = (commit.sha, "v0.1.0")
    yield double
    double.stop()
    assert double.unhandled == [], "the clients used routes the double does not implement"


def explore_in_subprocess(hub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """huggingface_hub and datasets read HF_ENDPOINT at import: a fresh interpreter, with the
    publish tests' network guard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=tempfile.mkdtemp(dir=tmp_path, prefix="hf-home-"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_UPDATE_DOWNLOAD_COUNTS="0",
               HF_HUB_DISABLE_PROGRESS_BARS="1", COLUMNS="300", NO_COLOR="1")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from hub_client import guard_network;"
            " guard_network(); from fvds.cli import app; app(args=sys.argv[2:], "
            "prog_name='fvds')")
    return subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), "explore",
                           *args], env=env, capture_output=True, text=True, timeout=180)


def test_explore_a_hub_repo_at_a_tag(hub, site, tmp_path):
    out = tmp_path / "hub-site"
    proc = explore_in_subprocess(hub, tmp_path, "fvds-lab/tiny@v0.1.0", "--out", str(out),
                                 "-q")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "fvds-explore.json").read_text())
    assert meta["source"] == "fvds-lab/tiny@v0.1.0"
    assert meta["stages"] == STAGES  # training order, from the repo's fvds.json
    local = json.loads((site / "fvds-explore.json").read_text())
    assert meta["rows"] == local["rows"] and meta["layer_clustering"] == local["layer_clustering"]
    for png in (site / "img").rglob("*.png"):
        assert (out / png.relative_to(site)).read_bytes() == png.read_bytes()


@pytest.mark.parametrize("spec, message", [
    ("fvds-lab/missing@v0.1.0", "dataset fvds-lab/missing was not found"),
    ("fvds-lab/tiny@v9.9.9", "v9.9.9"),
])
def test_an_unknown_repo_or_revision_is_bad_input(hub, tmp_path, spec, message):
    proc = explore_in_subprocess(hub, tmp_path, spec, "--out", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ in a browser
def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to $FVDS_SCREENSHOTS, when set, to look at it after the run."""
    if os.environ.get("FVDS_SCREENSHOTS"):
        dest = Path(os.environ["FVDS_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / f"explore-{path.name}")


def _browser_or_skip():
    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser driver: the playwright package is missing "
                    "(pip install -e '.[dev]')")
    return sync_playwright


# Where a row's point is on screen: Bokeh's own scales, from the figure's view.
_POINT_XY = """(row) => {
  const doc = Bokeh.documents[0];
  const fig = [...doc.all_models].find(m => m.type === 'Figure');
  const src = doc.get_model_by_name('fvds-points');
  const seen = new Set();
  const find = (v) => {
    if (!v || seen.has(v)) return null;
    seen.add(v);
    if (v.model === fig) return v;
    const kids = typeof v.children === 'function' ? [...v.children()] : (v.child_views || []);
    for (const k of kids) { const f = find(k); if (f) return f; }
    return null;
  };
  let view = null;
  for (const r of Bokeh.index.roots) { view = find(r); if (view) break; }
  const box = view.el.getBoundingClientRect();
  return {x: box.left + view.frame.x_scale.compute(src.data.x[row]),
          y: box.top + view.frame.y_scale.compute(src.data.y[row]), id: src.data.id[row]};
}"""
_POINTS = "() => Bokeh.documents[0].get_model_by_name('fvds-points').data.id"
_SHOWN = ("() => { const d = Bokeh.documents[0]; const f = [...d.all_models].find("
          "m => m.type === 'BooleanFilter'); return f.booleans.filter(Boolean).length; }")


def test_the_site_in_a_browser(site, tiny_dataset, tmp_path):
    sync_playwright = _browser_or_skip()
    rows = rows_of(tiny_dataset).column("id").to_pylist()
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((site / "index.html").as_uri())
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0 && "
                                   "Bokeh.documents[0].get_model_by_name('fvds-points')")
            page.wait_for_timeout(300)  # the first render after the document is ready

            # one point per row
            assert sorted(page.evaluate(_POINTS)) == sorted(rows)
            assert page.evaluate(_SHOWN) == len(rows)

            # hovering a point shows its image
            row = page.evaluate(_POINTS).index("random/layer1.0.conv2/1")
            pt = page.evaluate(_POINT_XY, row)
            page.mouse.move(pt["x"] - 30, pt["y"] - 30)
            page.mouse.move(pt["x"], pt["y"])
            tip = page.locator("img.fvds-tip-img")
            tip.first.wait_for(state="visible", timeout=5000)
            assert tip.first.get_attribute("src") == "img/random/layer1.0.conv2/1.png"
            page.wait_for_function("() => [...document.querySelectorAll('*')].length > 0")
            assert tip.first.evaluate("e => e.complete && e.naturalWidth") == 32
            page.screenshot(path=str(tmp_path / "map.png"))
            keep_screenshot(tmp_path / "map.png")

            # stages one at a time, and search
            page.get_by_role("button", name="finetuned", exact=True).click()
            page.wait_for_function(f"() => ({_SHOWN})() === {len(rows) // 2}")
            page.get_by_role("button", name="all stages").click()
            page.locator("input[placeholder^='search']").fill("layer1.0.conv2/1")
            page.wait_for_function(f"() => ({_SHOWN})() === 2")  # that unit, in both stages
            page.locator("input[placeholder^='search']").fill("layer2.0.conv2")
            page.wait_for_function(f"() => ({_SHOWN})() === {2 * UNITS}")
            page.locator("input[placeholder^='search']").fill("")
            page.wait_for_function(f"() => ({_SHOWN})() === {len(rows)}")

            # a click opens the unit's page, which shows the unit in every stage
            pt = page.evaluate(_POINT_XY, row)
            page.mouse.click(pt["x"], pt["y"])
            page.wait_for_url("**/units/layer1.0.conv2/1.html")
            figures = page.locator("figure.fvds-stage")
            assert [figures.nth(i).get_attribute("data-stage")
                    for i in range(figures.count())] == STAGES
            for i in range(figures.count()):
                img = figures.nth(i).locator("img")
                assert img.evaluate("e => e.complete && e.naturalWidth") == 32
            assert page.locator(".nn figure").count() > 0  # neighbours, within and across
            page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)
            keep_screenshot(tmp_path / "unit.png")

            # the layer page: its units, every stage side by side
            page.get_by_role("link", name="↑ layer1.0.conv2").click()
            page.wait_for_url("**/layers/layer1.0.conv2.html")
            assert page.locator(".card").count() == UNITS
            assert page.locator(".card").first.locator("figure.fvds-stage").count() == 2
            page.screenshot(path=str(tmp_path / "layer.png"), full_page=True)
            keep_screenshot(tmp_path / "layer.png")
        finally:
            browser.close()
    assert errors == []
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), \
        [u for u in requests if not u.startswith(("file://", "data:"))]
