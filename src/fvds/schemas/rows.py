"""One row per rendered unit. Change a column here and the shards, ``Features``, card table
and ``fvds verify`` follow."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "string", "int32", "float32", "image" or "embedding"
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("id", "string", "`<stage>/<layer>/<unit>`, unique"),
    Column("stage", "string", "training stage (a config of its own)"),
    Column("model", "string", "timm model name"),
    Column("layer", "string", "module path of the conv layer"),
    Column("layer_index", "int32", "depth order of the layer among all conv layers"),
    Column("unit", "int32", "output channel of the layer"),
    Column("layer_units", "int32", "channels in the layer"),
    Column("image", "image", "the feature visualization (PNG)"),
    Column("activation", "float32", "objective reached by the stored image, without transforms"),
    Column("embedding", "embedding", "vector the projection was fitted on"),
    Column("umap_x", "float32", "joint 2-D projection over all stages"),
    Column("umap_y", "float32", "joint 2-D projection over all stages"),
    Column("seed", "int64", "seed of the rendering job"),
    Column("steps", "int32", "optimisation steps"),
    Column("image_size", "int32", "side of the image in pixels"),
)

# Extra columns when the config asks for per-stage projections.
PER_STAGE_COLUMNS: tuple[Column, ...] = (
    Column("umap_stage_x", "float32", "2-D projection fitted on this stage alone"),
    Column("umap_stage_y", "float32", "2-D projection fitted on this stage alone"),
)


def columns(per_stage: bool = False) -> tuple[Column, ...]:
    return COLUMNS + (PER_STAGE_COLUMNS if per_stage else ())


def features(embedding_dim: int, per_stage: bool = False):
    """The ``datasets.Features`` of a row; the embedding has a fixed length."""
    from datasets import Features, Image, List, Value

    def feature(c: Column):
        if c.dtype == "image":
            return Image()
        if c.dtype == "embedding":
            return List(Value("float32"), length=embedding_dim)
        return Value(c.dtype)

    return Features({c.name: feature(c) for c in columns(per_stage)})


def arrow_schema(embedding_dim: int, per_stage: bool = False) -> pa.Schema:
    """The shards' Arrow schema, with the ``huggingface`` metadata that makes the Image
    column decode as an image."""
    return features(embedding_dim, per_stage).arrow_schema


def schema_table(embedding_dim: int, per_stage: bool = False) -> str:
    """The card's markdown table of columns."""
    def type_name(c: Column) -> str:
        if c.dtype == "image":
            return "Image (PNG)"
        if c.dtype == "embedding":
            return f"list<float32>[{embedding_dim}]"
        return c.dtype

    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{c.name}` | {type_name(c)} | {c.meaning} |" for c in columns(per_stage)]
    return "\n".join(lines)


# The companion table of the `comparison` config: one row per unit and pair of stages. It lives
# in comparison/, outside data/*/, so that the `all` config does not swallow it.
COMPARISON_DIR = "comparison"
COMPARISON_SHARD = f"{COMPARISON_DIR}/train-00000-of-00001.parquet"
COMPARISON_COLUMNS: tuple[Column, ...] = (
    Column("layer", "string", "module path of the conv layer"),
    Column("layer_index", "int32", "depth order of the layer among all conv layers"),
    Column("unit", "int32", "output channel of the layer"),
    Column("stage_a", "string", "the earlier stage of the pair (config order)"),
    Column("stage_b", "string", "the later stage of the pair"),
    Column("cosine", "float32", "cosine similarity of the unit's `embedding` in the two stages, "
           "after subtracting the mean embedding of all rows"),
)


def comparison_features():
    """The ``datasets.Features`` of a row of the comparison table."""
    from datasets import Features, Value

    return Features({c.name: Value(c.dtype) for c in COMPARISON_COLUMNS})


def comparison_arrow_schema() -> pa.Schema:
    return comparison_features().arrow_schema


def comparison_schema_table() -> str:
    """The card's markdown table of the comparison table's columns."""
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{c.name}` | {c.dtype} | {c.meaning} |" for c in COMPARISON_COLUMNS]
    return "\n".join(lines)
