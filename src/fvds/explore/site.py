"""``fvds explore``: a static site from a dataset folder or Hub repo.

    fvds explore path/to/dataset --out site/        # or ORG/NAME@v1.0.0
    open site/index.html                             # file:// or any static host

Layout of the site (all links relative):

    index.html                  the map (Bokeh), the layer list, the clustering score
    layers/<layer>.html         a layer's units, every stage side by side
    units/<layer>/<unit>.html   one unit: every stage, activation, cosines, neighbours
    img/<stage>/<layer>/<unit>.png    the visualizations, as stored in the dataset
    thumb/<stage>/<layer>/<unit>.png  96 px copies of images over 144 px
    static/                     bokeh.js, site.css
    fvds-explore.json           what the site was made from (also marks the folder as a site)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fvds.builder.compare import (
    KNN_K,
    RowKeys,
    centered,
    layer_clustering,
    layer_summaries,
    unit_cosines,
)
from fvds.errors import BadInput
from fvds.explore import pages
from fvds.explore.map import map_components, write_bokeh_js
from fvds.explore.neighbours import nearest
from fvds.explore.source import open_source
from fvds.explore.units import Units, collect, slug

SITE_MARKER = "fvds-explore.json"
SITE_ENTRIES = ("index.html", "layers", "units", "img", "thumb", "static", SITE_MARKER)
NEIGHBOURS = 8


@dataclass
class SiteReport:
    out: Path
    rows: int = 0
    layers: int = 0
    unit_pages: int = 0
    stages: list[str] = field(default_factory=list)
    clustering: dict[str, dict] = field(default_factory=dict)

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def check_site_dir(out: Path) -> Path:
    """``out`` may be new, empty or an earlier site (rewritten); anything else is refused, so
    that a typo never deletes someone's folder."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out '{out}' is a file; give a folder for the site (new or made by "
                       "`fvds explore`).")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).exists():
        raise BadInput(f"--out '{out}' is a folder that is neither empty nor a site made by "
                       "`fvds explore`; give a new folder.")
    return out


def build_site(spec: str, out: Path, *, neighbours: int = NEIGHBOURS, quiet: bool = False,
               log: Callable[[str], None] = print) -> SiteReport:
    """Write the explorer of ``spec`` (a dataset folder or ``ORG/NAME[@REVISION]``) to ``out``."""
    from fvds import __version__

    out = check_site_dir(out)
    source = open_source(spec)
    out.mkdir(parents=True, exist_ok=True)
    for name in SITE_ENTRIES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    with _progress(quiet) as progress:
        task = progress.add_task("images", total=None)
        units = collect(source, out, lambda n: progress.advance(task, n))
        progress.update(task, total=len(units), completed=len(units))
    stages = [s for s in source.stages if s in set(units.stage)]
    keys = RowKeys(units.stage, units.layer, units.layer_index, units.unit)
    # the measure the build stores: cosines of embeddings centred on the mean of all rows
    emb = centered(units.embeddings)
    cos = unit_cosines(emb, keys, stages)
    summaries = layer_summaries(cos)
    clustering = layer_clustering(units.xy, keys, stages)
    nn = nearest(emb, units.stage, neighbours)
    layers = _layers(units, stages, cos, summaries)
    site = {"title": source.title, "source": source.label, "version": __version__,
            "rows": len(units), "stages": stages, "layers": layers}

    (out / "static").mkdir(parents=True, exist_ok=True)
    (out / "static" / "site.css").write_text(pages.CSS, encoding="utf-8")
    write_bokeh_js(out)
    script, div = map_components(units, stages)
    pairs = [{"stage_a": p["stage_a"], "stage_b": p["stage_b"],
              "by_layer": {r["layer"]: r["mean"] for r in p["layers"]}} for p in summaries]
    _write(out / "index.html", pages.render(
        "index.html", root="", page_title=source.title, site=site, map_script=script,
        map_div=div, pairs=pairs, clustering=clustering, k=KNN_K))

    n_units = 0
    with _progress(quiet) as progress:
        task = progress.add_task("pages", total=sum(len(la["units"]) for la in layers))
        for i, layer in enumerate(layers):
            _write(out / "layers" / f"{layer['slug']}.html", pages.render(
                "layer.html", root="../", page_title=layer["name"], site=site, layer=layer,
                prev=layers[i - 1] if i else None,
                next=layers[i + 1] if i + 1 < len(layers) else None))
            for j, u in enumerate(layer["units"]):
                for s in u["stages"]:
                    if s["row"] is not None:
                        s["within"] = _neighbour_list(units, nn.within, nn.within_cos, s["row"])
                        s["across"] = _neighbour_list(units, nn.across, nn.across_cos, s["row"])
                us = layer["units"]
                _write(out / "units" / f"{u['key']}.html", pages.render(
                    "unit.html", root="../../", page_title=f"{layer['name']} unit {u['unit']}",
                    site=site, layer=layer, u=u,
                    prev=us[j - 1] if j else None,
                    next=us[j + 1] if j + 1 < len(us) else None))
                n_units += 1
                progress.advance(task)

    report = SiteReport(out, rows=len(units), layers=len(layers), unit_pages=n_units,
                        stages=stages, clustering=clustering)
    marker = {"format": 1, "fvds_version": __version__, "source": source.label,
              "rows": report.rows, "layers": report.layers, "unit_pages": n_units,
              "stages": stages, "neighbours": neighbours,
              "layer_clustering": clustering}
    _write(out / SITE_MARKER, json.dumps(marker, indent=2) + "\n")
    log(f"Explorer ready: {report.index} ({report.rows} units, {report.layers} layers)")
    return report


def _layers(units: Units, stages: list[str], cos, summaries: list[dict]) -> list[dict]:
    """Layers in depth order, each with its units (by channel) and every stage's row."""
    row_of: dict[tuple[str, int, str], int] = {
        (str(units.layer[i]), int(units.unit[i]), str(units.stage[i])): i
        for i in range(len(units))}
    cos_of: dict[tuple[str, int], list[dict]] = {}
    layer_mean = {(p["stage_a"], p["stage_b"], r["layer"]): r["mean"]
                  for p in summaries for r in p["layers"]}
    for layer, unit, a, b, c in zip(cos.layer, cos.unit, cos.stage_a, cos.stage_b, cos.cosine,
                                    strict=True):
        cos_of.setdefault((str(layer), int(unit)), []).append(
            {"a": a, "b": b, "cos": float(c), "layer_mean": layer_mean.get((a, b, layer))})
    names = sorted(set(units.layer.tolist()),
                   key=lambda la: int(units.layer_index[units.layer == la][0]))
    layers = []
    for name in names:
        m = units.layer == name
        idx = np.flatnonzero(m)
        layer_units = []
        for unit in sorted(set(units.unit[m].tolist())):
            cells = []
            for stage in stages:
                r = row_of.get((name, unit, stage))
                cells.append({"stage": stage, "row": r,
                              "id": None if r is None else units.id[r],
                              "img": None if r is None else units.img(r),
                              "thumb": None if r is None else units.thumb(r),
                              "activation": None if r is None else float(units.activation[r])})
            layer_units.append({"unit": unit, "key": f"{slug(name)}/{unit}", "stages": cells,
                                "cosines": cos_of.get((name, unit), [])})
        layers.append({"name": name, "slug": slug(name), "index": int(units.layer_index[idx[0]]),
                       "channels": int(units.layer_units[idx[0]]), "units": layer_units})
    return layers


def _neighbour_list(units: Units, idx: np.ndarray, cos: np.ndarray, row: int) -> list[dict]:
    return [{"id": units.id[j], "key": units.key(j), "thumb": units.thumb(j), "cos": float(c)}
            for j, c in zip(idx[row], cos[row], strict=True) if j >= 0]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _progress(quiet: bool):
    from fvds.commands._common import progress_bars

    return progress_bars(quiet, label_width=10)

