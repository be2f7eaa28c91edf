"""The site's HTML: Jinja2 templates (autoescaped) for the index (the map and the layer list),
a page per layer (its units, every stage side by side) and a page per unit (its image in every
stage, its activation, cross-stage cosines and nearest neighbours). Links are relative, so
the site works from file:// and from any static host."""

from __future__ import annotations

from functools import cache

from jinja2 import DictLoader, Environment, select_autoescape

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { display: flex; gap: 1.2em; align-items: baseline; padding: .6em 1.2em;
         background: #20232a; color: #eee; }
header a { color: #8fd3ff; text-decoration: none; font-weight: 600; }
header nav a { font-weight: 400; margin-right: .8em; }
main { padding: .6em 1.2em 2em; }
footer { color: #777; font-size: 12px; padding: 1em 1.2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.px { image-rendering: pixelated; background: #ddd; }
.grid { display: flex; flex-wrap: wrap; gap: .8em; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4em; }
.card h3 { margin: 0 0 .3em; font-size: 13px; }
.stages { display: flex; gap: .4em; }
figure { margin: 0; text-align: center; font-size: 11px; }
figure.big figcaption { font-size: 13px; }
.missing { width: 96px; height: 96px; display: flex; align-items: center;
           justify-content: center; background: #eee; color: #999; }
.nn { display: flex; flex-wrap: wrap; gap: .5em; margin-bottom: 1em; }
.nn a { text-decoration: none; color: #333; }
.pager a { margin-right: 1em; }
.muted { color: #777; }
"""

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page_title }} · fvds explorer</title>
<link rel="stylesheet" href="{{ root }}static/site.css">
{% block head %}{% endblock %}
</head><body>
<header><a href="{{ root }}index.html">fvds explorer</a><span>{{ site.title }}</span>
<nav><a href="{{ root }}index.html">map</a><a href="{{ root }}index.html#layers">layers</a></nav>
</header>
<main>{% block main %}{% endblock %}</main>
<footer>Made with fvds {{ site.version }} from <code>{{ site.source }}</code>:
{{ site.rows }} units, {{ site.layers|length }} layers, stages {{ site.stages|join(", ") }}.
</footer>
</body></html>
"""

_INDEX = """{% extends "base.html" %}
{% block head %}<script src="static/bokeh.js"></script>
{{ map_script|safe }}{% endblock %}
{% block main %}
<h1>{{ site.title }}</h1>
<p>Every point is one unit in one stage, placed by the joint UMAP of the embeddings and
coloured by the depth of its layer. Hover a point for its visualization, click it for the
unit's page; show the stages together or one at a time, or search a layer or unit.</p>
{{ map_div|safe }}
<h2 id="layers">Layers</h2>
<table>
<tr><th>layer</th><th>depth</th><th>channels</th><th>units</th>
{% for p in pairs %}<th>cosine {{ p.stage_a }} → {{ p.stage_b }}</th>{% endfor %}</tr>
{% for la in site.layers %}
<tr><td><a href="layers/{{ la.slug }}.html">{{ la.name }}</a></td>
<td class="num">{{ la.index }}</td><td class="num">{{ la.channels }}</td>
<td class="num">{{ la.units|length }}</td>
{% for p in pairs %}<td class="num">{{ fmt(p.by_layer.get(la.name)) }}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="muted">Cosine: mean over the layer's units of the cosine similarity of a unit's
embedding in the two stages, after subtracting the mean embedding of all units (1: the same
picture as the embedding sees it, 0: unrelated). Neighbours below use the same measure.</p>
<h2>Do visualizations cluster by layer?</h2>
<p>Leave-one-out {{ k }}-NN accuracy of predicting a unit's layer (and its depth bin) from its
map position, neighbours taken within its stage, against always guessing the most frequent
class.</p>
<table>
<tr><th>stage</th><th>units</th><th>layer accuracy</th><th>chance</th>
<th>depth-bin accuracy</th><th>chance</th></tr>
{% for name, s in clustering.items() %}
<tr><td>{{ name }}</td><td class="num">{{ s.rows }}</td>
<td class="num">{{ fmt(s.layer_accuracy) }}</td><td class="num">{{ fmt(s.layer_chance) }}</td>
<td class="num">{{ fmt(s.depth_accuracy) }}</td><td class="num">{{ fmt(s.depth_chance) }}</td>
</tr>
{% endfor %}
</table>
{% endblock %}
"""

_LAYER = """{% extends "base.html" %}
{% block main %}
<p class="pager">{% if prev %}<a href="{{ prev.slug }}.html">← {{ prev.name }}</a>{% endif %}
{% if next %}<a href="{{ next.slug }}.html">{{ next.name }} →</a>{% endif %}</p>
<h1>{{ layer.name }}</h1>
<p>Depth {{ layer.index }} · {{ layer.channels }} channels · {{ layer.units|length }} units
shown in {{ site.stages|length }} stage(s), side by side: {{ site.stages|join(", ") }}.</p>
<div class="grid">
{% for u in layer.units %}
<div class="card" id="u{{ u.unit }}">
<h3><a href="{{ root }}units/{{ u.key }}.html">unit {{ u.unit }}</a>
{% for c in u.cosines %}<span class="muted" title="cosine {{ c.a }} → {{ c.b }}">
· {{ fmt(c.cos) }}</span>{% endfor %}</h3>
<div class="stages">
{% for s in u.stages %}
<figure class="fvds-stage" data-stage="{{ s.stage }}">
{% if s.row is not none %}<a href="{{ root }}units/{{ u.key }}.html">
<img class="px" loading="lazy" src="{{ root }}{{ s.thumb }}" width="96" height="96"
 alt="{{ s.id }}"></a>
<figcaption>{{ s.stage }}<br>{{ fmt(s.activation) }}</figcaption>
{% else %}<div class="missing">—</div><figcaption>{{ s.stage }}</figcaption>{% endif %}
</figure>
{% endfor %}
</div></div>
{% endfor %}
</div>
{% endblock %}
"""

_UNIT = """{% extends "base.html" %}
{% block main %}
<p class="pager"><a href="{{ root }}layers/{{ layer.slug }}.html">↑ {{ layer.name }}</a>
{% if prev %}<a href="{{ root }}units/{{ prev.key }}.html">← unit {{ prev.unit }}</a>{% endif %}
{% if next %}<a href="{{ root }}units/{{ next.key }}.html">unit {{ next.unit }} →</a>{% endif %}
</p>
<h1>{{ layer.name }} · unit {{ u.unit }}</h1>
<p>Depth {{ layer.index }} of the network, channel {{ u.unit }} of {{ layer.channels }}.</p>
<div class="stages">
{% for s in u.stages %}
<figure class="big fvds-stage" data-stage="{{ s.stage }}">
{% if s.row is not none %}
<img class="px" src="{{ root }}{{ s.img }}" width="224" height="224" alt="{{ s.id }}">
<figcaption><b>{{ s.stage }}</b><br>activation {{ fmt(s.activation) }}</figcaption>
{% else %}<div class="missing" style="width:224px;height:224px">not rendered</div>
<figcaption><b>{{ s.stage }}</b></figcaption>{% endif %}
</figure>
{% endfor %}
</div>
{% if u.cosines %}
<h2>Across stages</h2>
<table><tr><th>stages</th><th>cosine of the embeddings</th><th>layer mean</th></tr>
{% for c in u.cosines %}<tr><td>{{ c.a }} → {{ c.b }}</td><td class="num">{{ fmt(c.cos) }}</td>
<td class="num">{{ fmt(c.layer_mean) }}</td></tr>{% endfor %}
</table>
{% endif %}
<h2>Nearest neighbours in embedding space</h2>
{% for s in u.stages if s.row is not none %}
<h3>{{ s.stage }}: within {{ s.stage }}</h3>
<div class="nn">{% for n in s.within %}{{ neighbour(n) }}{% endfor %}</div>
{% if s.across %}<h3>{{ s.stage }}: in the other stages</h3>
<div class="nn">{% for n in s.across %}{{ neighbour(n) }}{% endfor %}</div>{% endif %}
{% endfor %}
{% endblock %}
"""

_MACROS = """{% macro neighbour(n) %}<a href="{{ root }}units/{{ n.key }}.html" title="{{ n.id }}">
<figure><img class="px" loading="lazy" src="{{ root }}{{ n.thumb }}" width="72" height="72"
 alt="{{ n.id }}"><figcaption>{{ n.id }}<br>{{ fmt(n.cos) }}</figcaption></figure></a>
{% endmacro %}"""


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@cache
def environment() -> Environment:
    env = Environment(loader=DictLoader({"base.html": _BASE, "index.html": _INDEX,
                                         "layer.html": _LAYER,
                                         "unit.html": "{% from 'macros.html' import neighbour "
                                                      "with context %}" + _UNIT,
                                         "macros.html": _MACROS}),
                      autoescape=select_autoescape(default=True), trim_blocks=True,
                      lstrip_blocks=True)
    env.globals["fmt"] = fmt
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
