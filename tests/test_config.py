"""Config defaults that depend on other keys."""

from __future__ import annotations

from fvds.config import Config, DatasetConfig, load_config


def test_the_default_title_names_the_model_and_stages_and_a_given_one_is_kept():
    stages = [{"name": "random", "weights": "random"}, {"name": "pretrained", "weights": "timm"}]
    cfg = load_config(overrides={"model.name": "resnet18", "stages": stages})
    assert cfg.dataset.pretty_name == "Feature visualizations of resnet18: random, pretrained"
    assert Config().dataset.pretty_name == \
        "Feature visualizations of seresnext50_32x4d: random"
    # a preset with another model follows the model
    assert load_config(preset="quickstart", overrides={"model.name": "resnet18"}) \
        .dataset.pretty_name == "Feature visualizations of resnet18: random"
    assert Config(dataset=DatasetConfig(name="x")).dataset.pretty_name.startswith(
        "Feature visualizations of seresnext50_32x4d")
    mine = load_config(overrides={"model.name": "resnet18", "dataset.pretty_name": "Mine"})
    assert mine.dataset.pretty_name == "Mine"
    # the resolved title is recorded, so a config read back from fvds.json keeps it
    assert Config.from_dict(mine.to_dict()).dataset.pretty_name == "Mine"
