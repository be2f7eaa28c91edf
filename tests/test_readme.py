"""The README's configuration reference names every key the config accepts, and every
command the CLI has, so the docs cannot fall behind the code."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from fvds.cli import app
from fvds.config import Config

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_the_config_reference_names_every_key():
    block = section("Configuration")
    missing = []
    for name, field in Config.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub is None and name == "stages":
            sub = Config.model_fields["stages"].annotation.__args__[0].model_fields
        keys = [name] if sub is None else list(sub)
        for key in keys:
            if not re.search(rf"^#?\s*{re.escape(key)}\s*=", block, re.M):
                missing.append(f"{name}.{key}" if sub is not None else key)
    assert missing == []


def test_the_commands_table_names_every_command():
    table = section("Commands")
    commands = sorted(get_command(app).commands)
    assert [c for c in commands if f"`fvds {c}" not in table] == []
