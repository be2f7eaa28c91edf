"""Configuration: one typed, frozen model per TOML section, presets shipped as TOML files.

A config comes from a preset or a TOML file, plus dotted overrides from the CLI
(``{"render.steps": 8}``). Validation is strict: unknown keys, wrong types and impossible
values are :class:`~fvds.errors.BadInput` naming the key and what is accepted.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fvds.errors import BadInput

PRESETS = ("quickstart", "paper")

# The seed's own layer set for SEResNeXt50: the stem conv plus conv1/conv2/conv3 of the
# 16 bottlenecks (49 layers); SE and downsample convs are left out.
SEED_LAYERS = ("conv1", "layer*.*.conv1", "layer*.*.conv2", "layer*.*.conv3")

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Section):
    name: str = "seresnext50_32x4d"  # a timm model name


class StageConfig(_Section):
    name: str  # lower-case identifier; names the dataset config and data/<stage>/
    weights: str = "random"  # "random" (seeded init), "timm" (pretrained) or a checkpoint path
    num_classes: int | None = None  # head size; None: the model's default or the checkpoint's

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # "all" and "comparison" are the dataset's other configs (see dataset_card.card)
        if not _NAME.match(v) or v in ("all", "comparison"):
            raise ValueError(
                f"stage name {v!r} must be lower-case letters, digits, '_' or '-', "
                "start with a letter, and be neither 'all' nor 'comparison'"
            )
        return v

    @field_validator("num_classes")
    @classmethod
    def _classes(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"num_classes must be >= 1, got {v}")
        return v

    @property
    def is_checkpoint(self) -> bool:
        return self.weights not in ("random", "timm")


class UnitsConfig(_Section):
    layers: tuple[str, ...] = SEED_LAYERS  # globs over conv module paths
    exclude: tuple[str, ...] = ()  # globs removed from the selection
    per_layer: int = Field(64, ge=1)  # units per layer: min(per_layer, channels)
    select: Literal["first", "random"] = "first"  # first channels (the seed) or a seeded sample

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one layer glob is needed")
        return v


class RenderConfig(_Section):
    size: int = Field(128, ge=16)  # side of the rendered (stored) image, pixels
    model_input_size: int = Field(224, ge=16)  # the transformed image is resized to this
    steps: int = Field(512, ge=1)  # Adam steps
    lr: float = Field(0.05, gt=0)  # Adam learning rate
    objective: Literal["neuron", "channel"] = "neuron"  # centre position or spatial mean
    param: Literal["fft", "pixel"] = "fft"  # Fourier-domain (Lucid) or plain pixels
    decorrelate: bool = True  # Lucid's decorrelated colour space
    init_sd: float = Field(0.01, gt=0)  # std of the initial spectrum / pixels
    transforms: Literal["lucent", "seed", "none"] = "lucent"  # robustness transforms
    batch_size: int = Field(64, ge=1)  # units optimised together (image i drives unit i)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v


class EmbeddingConfig(_Section):
    method: Literal["pixels", "encoder"] = "pixels"  # what the projection is fitted on
    pixels_size: int = Field(32, ge=0)  # pixels: downsample side before flattening (0: full)
    encoder_model: str = "resnet50"  # encoder: timm model whose pooled features are used
    encoder_weights: str = "timm"  # encoder: "random", "timm" or a checkpoint path
    encoder_input_size: int = Field(224, ge=16)  # encoder: images are resized to this
    batch_size: int = Field(32, ge=1)


class UmapConfig(_Section):
    n_neighbors: int = Field(15, ge=2)  # lowered automatically for tiny datasets
    min_dist: float = Field(0.1, ge=0)
    metric: str = "euclidean"
    random_state: int = 42
    pca: int = Field(50, ge=0)  # PCA to this many components first when wider (0: never)
    per_stage: bool = False  # also fit one projection per stage (umap_stage_x/_y columns)


class DatasetConfig(_Section):
    name: str = "fvds-seresnext50"  # repo name on the Hub (without the org)
    pretty_name: str = ""  # empty: Config derives it from the model and stage names
    version: str = "0.1.0"  # semantic version; `fvds push` tags v<version>
    license: str = "cc-by-4.0"
    shard_rows: int = Field(2000, ge=1)  # rows per parquet shard
    row_group_rows: int = Field(100, ge=1)  # rows per row group (the Hub viewer reads groups)
    grid_layers: int = Field(8, ge=1)  # layers shown per stage in the grid figure
    grid_units: int = Field(8, ge=1)  # units shown per layer in the grid figure
    explorer_url: str | None = None  # where the `fvds explore` site is hosted; the card links it

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"version {v!r} is not semantic (X.Y.Z, e.g. 1.0.0)")
        return v


class Config(_Section):
    seed: int = 0  # seeds random weights, unit sampling and every rendering job
    model: ModelConfig = ModelConfig()
    stages: tuple[StageConfig, ...] = (StageConfig(name="random"),)
    units: UnitsConfig = UnitsConfig()
    render: RenderConfig = RenderConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    umap: UmapConfig = UmapConfig()
    dataset: DatasetConfig = DatasetConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_title(cls, data: Any) -> Any:
        """Unless the config names one, the dataset's title names its model and stages."""
        if not isinstance(data, dict):
            return data
        ds = data.get("dataset", {})
        given = ds.get("pretty_name") if isinstance(ds, dict) else getattr(ds, "pretty_name", "")
        if given:
            return data
        model = data.get("model", {})
        name = model.get("name") if isinstance(model, dict) else getattr(model, "name", None)
        stages = data.get("stages", ({"name": "random"},))
        names = [s.get("name") if isinstance(s, dict) else getattr(s, "name", None)
                 for s in stages] if isinstance(stages, (list, tuple)) else []
        title = (f"Feature visualizations of {name or ModelConfig().name}: "
                 f"{', '.join(str(n) for n in names if n)}").rstrip(": ")
        if isinstance(ds, DatasetConfig):
            return {**data, "dataset": ds.model_copy(update={"pretty_name": title})}
        return {**data, "dataset": {**(ds if isinstance(ds, dict) else {}),
                                    "pretty_name": title}}

    @model_validator(mode="after")
    def _unique_stages(self) -> Config:
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError("at least one stage is needed")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(dupes)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """The inverse of :meth:`to_dict` (JSON arrays back to tuples)."""
        return cls.model_validate(_lists_to_tuples(data))

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _section_for(e["loc"][:-1])
            accepted = ", ".join(parent.model_fields) if parent else "see the README"
            lines.append(f"unknown key '{key}' (accepted here: {accepted})")
        elif e["type"] == "missing":
            lines.append(f"missing key '{key}'")
        else:
            got = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"'{key}': {msg} (got {got!r})")
    return f"Invalid configuration in {source}: " + "; ".join(lines) + "."


def _section_for(loc: tuple) -> type[BaseModel] | None:
    """The model class that owns a location, to list its accepted keys."""
    cls: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        nested = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        nested = [a for a in nested if issubclass(a, BaseModel)]
        if not nested:
            return None
        cls = nested[0]
    return cls


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise BadInput(f"Cannot set '{dotted}': '{p}' is not a section.")
    node[leaf] = value


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BadInput(f"Config file '{path}' does not exist. Give a TOML file or --preset NAME "
                       f"(presets: {', '.join(PRESETS)}).")
    if path.is_dir():
        raise BadInput(f"Config path '{path}' is a directory; give a TOML file.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"Config file '{path}' is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise BadInput(f"Config file '{path}' is not UTF-8 text.") from None


def preset_text(name: str) -> str:
    """The TOML text of a shipped preset."""
    if name not in PRESETS:
        from fvds.errors import close_matches

        raise BadInput(f"Unknown preset '{name}'. Presets: {', '.join(PRESETS)}."
                       + close_matches(name, list(PRESETS)))
    return resources.files("fvds.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Checkpoint paths in a file are relative to that file's folder; store them absolute."""
    for stage in data.get("stages", []) or []:
        if isinstance(stage, dict):
            w = stage.get("weights")
            if isinstance(w, str) and w not in ("random", "timm"):
                stage["weights"] = str((base / w).expanduser().resolve())
    emb = data.get("embedding")
    if isinstance(emb, dict):
        w = emb.get("encoder_weights")
        if isinstance(w, str) and w not in ("random", "timm"):
            emb["encoder_weights"] = str((base / w).expanduser().resolve())


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from a TOML file or a preset, then dotted overrides.

    With neither a file nor a preset, the defaults apply (the paper's model and render settings
    with one random stage). Relative checkpoint paths in a file resolve against the file's
    folder; in a preset or an override, against the working directory.
    """
    if path is not None and preset is not None:
        raise BadInput("Give either a config file or --preset, not both.")
    if path is not None:
        p = Path(path)
        data = _read_toml(p)
        source = str(p)
        _resolve_paths(data, p.resolve().parent)
    elif preset is not None:
        data = tomllib.loads(preset_text(preset))
        source = f"preset '{preset}'"
        _resolve_paths(data, Path.cwd())
    else:
        data, source = {}, "defaults"
    for key, value in (overrides or {}).items():
        if key == "stages":
            value = [dict(s) for s in value]
            _resolve_paths({"stages": value}, Path.cwd())
        _set_dotted(data, key, value)
    if overrides:
        source += " with command-line overrides"
    try:
        return Config.model_validate(_lists_to_tuples(data))
    except ValidationError as e:
        raise BadInput(_format_validation_error(e, source)) from None


def _lists_to_tuples(obj: Any) -> Any:
    # TOML arrays arrive as lists; the frozen models hold tuples, and strict mode won't coerce.
    if isinstance(obj, dict):
        return {k: _lists_to_tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def parse_stage(spec: str) -> dict[str, Any]:
    """``NAME=WEIGHTS`` from the command line, as a stage table."""
    name, sep, weights = spec.partition("=")
    if not sep or not name or not weights:
        raise BadInput(f"--stage '{spec}' must look like NAME=WEIGHTS, where WEIGHTS is "
                       "'random', 'timm' or a checkpoint path (e.g. finetuned=ckpt.safetensors).")
    return {"name": name.strip(), "weights": weights.strip()}


def dump_toml(config: Config) -> str:
    """The resolved config as TOML, so a build can be rerun from what it recorded."""
    data = config.to_dict()
    out: list[str] = [f"seed = {data.pop('seed')}"]
    stages = data.pop("stages")
    for section, table in data.items():
        out.append(f"\n[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    for stage in stages:
        out.append("\n[[stages]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in stage.items() if v is not None]
    return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)
