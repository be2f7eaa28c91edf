"""The dataset card (README.md): YAML the Hub and ``load_dataset`` read (license, tags,
``configs`` with explicit data files, ``dataset_info``) and prose on how the data was made."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from huggingface_hub import DatasetCard, DatasetCardData

from fvds.builder.embed import describe as describe_embedding
from fvds.builder.plan import Plan
from fvds.builder.render.transforms import TRANSFORM_SETS
from fvds.schemas import rows as schema

if TYPE_CHECKING:
    from fvds.builder.compare import Comparison

CITATIONS = """\
- Olah, Mordvintsev, Schubert. *Feature Visualization*. Distill, 2017. doi:10.23915/distill.00007
- Hu, Shen, Sun. *Squeeze-and-Excitation Networks*. CVPR 2018. arXiv:1709.01507
- Xie, Girshick, Dollár, Tu, He. *Aggregated Residual Transformations for Deep Neural Networks* (ResNeXt). CVPR 2017. arXiv:1611.05431
- McInnes, Healy, Melville. *UMAP: Uniform Manifold Approximation and Projection for Dimension Reduction*. arXiv:1802.03426
- Wightman. *PyTorch Image Models* (timm). doi:10.5281/zenodo.4414861"""


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def card_data(plan: Plan, rows: dict[str, int], shard_bytes: dict[str, int],
              embedding_dim: int, comparison_rows: int = 0,
              comparison_bytes: int = 0) -> DatasetCardData:
    """The card's YAML. ``comparison_rows`` > 0 adds the `comparison` config (the companion
    table of cross-stage cosines under comparison/, outside the `all` config's glob)."""
    cfg = plan.config
    feats = schema.features(embedding_dim, cfg.umap.per_stage)._to_yaml_list()
    configs = [{"config_name": "all", "default": True,
                "data_files": [{"split": "train", "path": "data/*/*.parquet"}]}]
    configs += [{"config_name": s.name,
                 "data_files": [{"split": "train", "path": f"data/{s.name}/*.parquet"}]}
                for s in cfg.stages]

    def info(name: str, n: int, nbytes: int) -> dict[str, Any]:
        # a copy per config: shared objects would be dumped as YAML anchors
        return {"config_name": name, "features": copy.deepcopy(feats),
                "splits": [{"name": "train", "num_bytes": nbytes, "num_examples": n}],
                "download_size": nbytes, "dataset_size": nbytes}

    infos = [info("all", sum(rows.values()), sum(shard_bytes.values()))]
    infos += [info(s.name, rows[s.name], shard_bytes[s.name]) for s in cfg.stages]
    if comparison_rows:
        configs.append({"config_name": "comparison", "data_files": [
            {"split": "train", "path": f"{schema.COMPARISON_DIR}/*.parquet"}]})
        infos.append({**info("comparison", comparison_rows, comparison_bytes),
                      "features": schema.comparison_features()._to_yaml_list()})
    return DatasetCardData(
        license=cfg.dataset.license,
        pretty_name=cfg.dataset.pretty_name,
        size_categories=[size_category(sum(rows.values()))],
        task_categories=["image-classification"],
        tags=["interpretability", "feature-visualization", "activation-maximization", "timm",
              "umap", "fvds", cfg.model.name],
        configs=configs,
        dataset_info=infos,
    )


def _stage_lines(plan: Plan, stages: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | weights | SHA-256 of the state dict | provenance |",
             "| --- | --- | --- | --- |"]
    for s in plan.config.stages:
        meta = stages[s.name]
        prov = meta.get("finetune")
        if prov:
            acc = prov.get("best_val_accuracy")
            acc_s = f"{acc:.3f}" if isinstance(acc, (int, float)) else "?"
            prov_s = (f"fine-tuned with `fvds finetune` on {len(prov.get('classes', []))} "
                      f"classes ({', '.join(map(str, prov.get('classes', [])))}), best "
                      f"validation accuracy {acc_s}, "
                      f"{len(prov.get('epochs', prov.get('metrics', [])))} epochs")
        elif s.weights == "random":
            prov_s = f"random initialisation (timm defaults) under seed {plan.config.seed}"
        elif s.weights == "timm":
            prov_s = f"timm pretrained weights ({meta.get('source', 'timm')})"
        else:
            prov_s = "checkpoint"
        weights = s.weights if s.weights in ("random", "timm") else f"`{meta['file']}`"
        lines.append(f"| `{s.name}` | {weights} | `{meta['sha256'][:16]}…` | {prov_s} |")
    return "\n".join(lines)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _comparison_section(comparison: Comparison | None, plan: Plan, repo: str, rev: str) -> str:
    """Per-layer cosines between stages, the layers that change most, the clustering score."""
    if comparison is None:
        return "Not computed for this build."
    parts = []
    if len(comparison.cosines):
        pairs = comparison.summaries
        head = " | ".join(f"`{p['stage_a']}` → `{p['stage_b']}`" for p in pairs)
        table = [f"| layer | depth | {head} |", "| --- | --- |" + " --- |" * len(pairs)]
        by_layer = [{r["layer"]: r for r in p["layers"]} for p in pairs]
        for layer in plan.layers:
            cells = [f"{_fmt(b[layer.name]['mean'])} ({_fmt(b[layer.name]['median'])})"
                     if layer.name in b else "–" for b in by_layer]
            table.append(f"| `{layer.name}` | {layer.index} | {' | '.join(cells)} |")
        most = "\n".join(f"- `{p['stage_a']}` → `{p['stage_b']}` (mean {_fmt(p['mean'])} over "
                         f"{p['units']} units): " + ", ".join(f"`{x}`" for x in p["changed_most"])
                         for p in pairs)
        parts.append(f"""How much does a unit's visualization change between stages? For every unit
rendered in two stages, the `comparison` config holds the cosine similarity of its `embedding`
in the two stages, after subtracting the mean embedding of all rows (what every visualization
shares, such as the mean colour, would otherwise put every cosine near 1):
{len(comparison.cosines):,} rows, one per unit and pair of stages, in
`{schema.COMPARISON_SHARD}` (outside `data/`, so `all` does not include it).

```python
from datasets import load_dataset

cmp = load_dataset("{repo}", "comparison", split="train", revision="{rev}")
```

{schema.comparison_schema_table()}

Mean cosine per layer, median in brackets (1: the same picture as the embedding sees it,
0: unrelated):

{chr(10).join(table)}

Layers that change most (lowest mean cosine):

{most}""")
    else:
        parts.append("This build has a single stage, so there is nothing to compare and no "
                     "`comparison` config.")
    stages = comparison.clustering
    rows = ["| stage | units | layer accuracy | chance | depth-bin accuracy | chance |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, s in stages.items():
        rows.append(f"| `{name}` | {s['rows']} | {_fmt(s['layer_accuracy'])} | "
                    f"{_fmt(s['layer_chance'])} | {_fmt(s['depth_accuracy'])} | "
                    f"{_fmt(s['depth_chance'])} |")
    bins = next(iter(stages.values()))["depth_bins"] if stages else 0
    k = next(iter(stages.values()))["k"] if stages else 0
    parts.append(f"""**Do visualizations cluster by layer?** Leave-one-out {k}-NN accuracy of
predicting a unit's layer from its (`umap_x`, `umap_y`), neighbours taken within its stage,
against always guessing the most frequent layer (chance); and the same for {bins} depth bins
(consecutive layers grouped from shallow to deep). Also in `fvds.json` under `comparison`.

{chr(10).join(rows)}""")
    return "\n\n".join(parts)


def _explore_section(cfg, repo: str, rev: str) -> str:
    link = (f"A hosted copy: <{cfg.dataset.explorer_url}>.\n\n"
            if cfg.dataset.explorer_url else "")
    return f"""{link}Browse the visualizations rather than read them: [fvds](https://pypi.org/project/fvds/)
writes a static site (no server, no internet needed to view it) from this repo or a local copy:

```bash
pip install fvds
fvds explore {repo}@{rev} --out site/    # or: fvds explore path/to/dataset --out site/
# then open site/index.html
```

It has the UMAP map of all units (coloured by depth, stages together or one at a time, the
image on hover, search by layer or unit id, click through to the unit), a page per layer with
its units in every stage side by side, and a page per unit with its visualization and
activation in every stage, its cross-stage cosines and its nearest neighbours in embedding
space within and across stages. The figures below are static previews of the same data."""


def render_card(plan: Plan, *, rows: dict[str, int], shard_bytes: dict[str, int],
                embedding_dim: int, stages: dict[str, dict[str, Any]],
                projection: dict[str, Any], versions: dict[str, str],
                figures: list[str], repo_id: str | None = None,
                comparison: Comparison | None = None, comparison_bytes: int = 0) -> DatasetCard:
    cfg = plan.config
    r = cfg.render
    repo = repo_id or f"ORG/{cfg.dataset.name}"
    rev = f"v{cfg.dataset.version}"
    total = sum(rows.values())
    snippet = "\n".join(
        [f'ds = load_dataset("{repo}", "all", split="train", revision="{rev}")']
        + [f'{s.name} = load_dataset("{repo}", "{s.name}", split="train", revision="{rev}")'
           for s in cfg.stages])
    layer_list = ", ".join(f"`{layer.name}`" for layer in plan.layers)
    figs = "\n\n".join(f"![{f}]({f})" for f in figures)
    proj = ", ".join(f"{k}={v}" for k, v in projection.items())
    body = f"""
# {cfg.dataset.pretty_name}

Version **{cfg.dataset.version}**. {total:,} feature visualizations of `{cfg.model.name}`
(timm): for {len(plan.layers)} convolutional layers and {len(cfg.stages)} training stage(s)
({", ".join(f"`{s.name}`" for s in cfg.stages)}), the image that maximises each sampled unit,
with the activation it reaches, an embedding and a 2-D UMAP projection fitted jointly over all
stages. The same units are rendered in every stage, so a unit can be followed through training.
Made with [fvds](https://pypi.org/project/fvds/) {versions.get("fvds", "")}.

## Load it

```python
from datasets import load_dataset

{snippet}
```

Configs: `all` (default, every stage) and one per stage. Each has a single `train` split.

## Stages

{_stage_lines(plan, stages)}

## How it was made

- **Units**: {min(cfg.units.per_layer, max(layer.channels for layer in plan.layers))} per layer
  at most (min(per_layer={cfg.units.per_layer}, channels)), chosen `{cfg.units.select}`
  (seed {cfg.seed}), identical in every stage. A unit is one output channel of an `nn.Conv2d`,
  its pre-activation.
- **Layers** ({len(plan.layers)}): {layer_list}.
- **Objective**: `{r.objective}` ({"the unit at the centre position" if r.objective == "neuron"
  else "the spatial mean of the channel"}), maximised with Adam (lr {r.lr}) for {r.steps} steps.
- **Parametrisation**: {"Fourier-domain image with 1/f scaling" if r.param == "fft" else
  "pixels"}{", Lucid's decorrelated colour" if r.decorrelate else ""}, sigmoid to [0, 1],
  initial std {r.init_sd}; {r.size}×{r.size} px images, ImageNet-normalised and resized to
  {r.model_input_size} px for the model.
- **Transforms** (`{r.transforms}`): {TRANSFORM_SETS[r.transforms].describe()}; one draw per
  step, shared by the batch.
- **Seeds**: each layer's job seed derives from (seed {cfg.seed}, layer), each unit's initial
  noise from (job seed, unit); the stage is not part of the seed, so every stage starts a unit
  from the same noise and sees the same transforms.
- **Activation**: the objective reached by the stored PNG, without transforms.
- **Embedding**: {describe_embedding(cfg.embedding)}.
- **Projection**: {proj}.
- **Precision**: {r.precision} (bf16 autocast on CUDA, fp32 on CPU when `auto`).
- **Libraries**: {", ".join(f"{k} {v}" for k, v in versions.items())}.

The full resolved configuration, the weights' fingerprints and the SHA-256 of every file are
in `fvds.json`.

## Fields

{schema.schema_table(embedding_dim, cfg.umap.per_stage)}

## Cross-stage comparison

{_comparison_section(comparison, plan, repo, rev)}

## Explore the dataset

{_explore_section(cfg, repo, rev)}

## Figures

{figs}

## Citations

{CITATIONS}
"""
    n_cmp = len(comparison.cosines) if comparison is not None else 0
    data = card_data(plan, rows, shard_bytes, embedding_dim, n_cmp,
                     comparison_bytes)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
