"""Config defaults that depend on other keys."""

from __future__ import annotations

from fvds.config import Config, load_config


def test_the_default_title_names_the_model_and_a_given_one_is_kept():
    assert load_config(overrides={"model.name": "resnet18"}).dataset.pretty_name == \
        "Feature visualizations of resnet18 across training stages"
    assert Config().dataset.pretty_name == \
        "Feature visualizations of seresnext50_32x4d across training stages"
    mine = load_config(overrides={"model.name": "resnet18", "dataset.pretty_name": "Mine"})
    assert mine.dataset.pretty_name == "Mine"
    assert "quickstart" in load_config(preset="quickstart").dataset.pretty_name
    # the resolved title is recorded, so a config read back from fvds.json keeps it
    assert Config.from_dict(mine.to_dict()).dataset.pretty_name == "Mine"
