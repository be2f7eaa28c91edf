"""The UMAP map of all units, drawn with Bokeh: one point per row, coloured by layer depth,
one marker per stage; hover shows the image, a click opens the unit's page; stage buttons and
a search box filter the points in the browser.

Bokeh does the plotting, hit-testing, tooltips and WebGL; the only JavaScript here is the
filter callback. Its own JS is written once to ``static/`` beside the pages (not fetched from
a CDN), so the site works from file:// without a network.
"""

from __future__ import annotations

from pathlib import Path

from fvds.explore.units import Units

MARKERS = ("circle", "triangle", "square", "diamond", "inverted_triangle", "hex", "star",
           "plus")
BOKEH_JS = "static/bokeh.js"
POINTS = "fvds-points"  # the name of the data source, for tests and the browser console

# Which points are shown: the stage buttons and the search box together. A query that is
# exactly a layer, a `layer/unit` or a row id selects those; anything else is a substring of
# the id, so "layer4" finds every layer under layer4.
_FILTER_JS = """
const d = source.data;
const n = d.id.length;
const stage = stages.active === 0 ? null : stages.labels[stages.active];
// value_input follows every keystroke; value only changes on Enter or blur
const q = search.value_input.trim().toLowerCase();
const exact = (i) => d.layer[i].toLowerCase() === q || d.key[i].toLowerCase() === q
  || d.id[i].toLowerCase() === q;
let anyExact = false;
if (q) { for (let i = 0; i < n; i++) { if (exact(i)) { anyExact = true; break; } } }
const keep = new Array(n);
let shown = 0;
for (let i = 0; i < n; i++) {
  const okStage = stage === null || d.stage[i] === stage;
  const okQuery = !q || (anyExact ? exact(i) : d.id[i].toLowerCase().includes(q));
  keep[i] = okStage && okQuery;
  if (keep[i]) shown++;
}
filter.booleans = keep;
source.change.emit();
count.text = `${shown} of ${n} units shown`;
"""

_TOOLTIP = """
<div class="fvds-tip" style="width:150px">
  <img class="fvds-tip-img" src="@img" alt="@id" width="144" height="144"
       style="image-rendering:pixelated;display:block">
  <div style="font:12px sans-serif;word-break:break-all"><b>@id</b></div>
  <div style="font:11px sans-serif">depth @layer_index · activation @activation{0.000}</div>
</div>
"""


def write_bokeh_js(site: Path) -> None:
    """Bokeh's own JS (core, WebGL, widgets) as one file beside the pages."""
    from bokeh.resources import Resources

    res = Resources(mode="inline", components=["bokeh", "bokeh-gl", "bokeh-widgets"])
    (site / BOKEH_JS).parent.mkdir(parents=True, exist_ok=True)
    (site / BOKEH_JS).write_text("\n;\n".join(res.js_raw), encoding="utf-8")


def map_components(units: Units, stages: list[str]) -> tuple[str, str]:
    """The map's ``<script>`` and ``<div>`` for the index page (``bokeh.embed.components``)."""
    from bokeh.embed import components
    from bokeh.layouts import column, row
    from bokeh.models import (
        BooleanFilter,
        CDSView,
        ColorBar,
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        OpenURL,
        RadioButtonGroup,
        TapTool,
        TextInput,
    )
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure
    from bokeh.transform import factor_mark, linear_cmap

    n = len(units)
    keys = [units.key(i) for i in range(n)]
    source = ColumnDataSource(data={
        "x": units.xy[:, 0], "y": units.xy[:, 1], "id": units.id.tolist(),
        "stage": units.stage.tolist(), "layer": units.layer.tolist(), "key": keys,
        "layer_index": units.layer_index, "activation": units.activation,
        "img": [units.img(i) for i in range(n)], "page": [f"units/{k}.html" for k in keys],
    }, name=POINTS)
    filt = BooleanFilter(booleans=[True] * n)
    lo, hi = int(units.layer_index.min()), int(units.layer_index.max())
    colour = linear_cmap("layer_index", Viridis256, lo, max(hi, lo + 1))

    fig = figure(sizing_mode="stretch_width", height=640,
                 output_backend="webgl", tools="pan,wheel_zoom,box_zoom,reset,save",
                 active_scroll="wheel_zoom", match_aspect=True)
    fig.scatter("x", "y", source=source, view=CDSView(filter=filt), size=7, alpha=0.85,
                color=colour, marker=factor_mark("stage", list(MARKERS), stages),
                legend_field="stage", line_color=None)
    fig.add_tools(HoverTool(tooltips=_TOOLTIP), TapTool(callback=OpenURL(url="@{page}",
                                                                           same_tab=True)))
    fig.add_layout(ColorBar(color_mapper=colour["transform"], title="layer depth "
                            "(layer_index)"), "right")
    fig.legend.location = "top_left"
    fig.legend.title = "stage"
    fig.axis.visible = False
    fig.grid.visible = False

    stage_buttons = RadioButtonGroup(labels=["all stages", *stages], active=0,
                                     name="fvds-stages")
    search = TextInput(placeholder="search: a layer (layer2.0.conv2), a unit "
                       "(layer2.0.conv2/3) or part of an id", width=420, name="fvds-search")
    count = Div(text=f"{n} of {n} units shown", name="fvds-count")
    cb = CustomJS(args={"source": source, "filter": filt, "stages": stage_buttons,
                        "search": search, "count": count}, code=_FILTER_JS)
    stage_buttons.js_on_change("active", cb)
    search.js_on_change("value", cb)
    search.js_on_change("value_input", cb)
    script, div = components(column(row(stage_buttons, search, count), fig,
                                     sizing_mode="stretch_width"))
    return script, div
