"""The dataset card (README.md): YAML the Hub and ``load_dataset`` read (license, tags,
``configs`` with explicit data files, ``dataset_info``) and prose on how the data was made."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from fvds.builder.embed import describe as describe_embedding
from fvds.builder.plan import Plan
from fvds.builder.render.transforms import TRANSFORM_SETS
from fvds.schemas import rows as schema

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
              embedding_dim: int) -> DatasetCardData:
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


def render_card(plan: Plan, *, rows: dict[str, int], shard_bytes: dict[str, int],
                embedding_dim: int, stages: dict[str, dict[str, Any]],
                projection: dict[str, Any], versions: dict[str, str],
                figures: list[str], repo_id: str | None = None) -> DatasetCard:
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

## Figures

{figs}

## Citations

{CITATIONS}
"""
    data = card_data(plan, rows, shard_bytes, embedding_dim)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")
