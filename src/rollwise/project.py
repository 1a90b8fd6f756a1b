"""Where a project's files are: its `rollwise.yaml`, found from a directory, and its state
directory beside it. Light on purpose: the quick `hosts run` path reads it."""

from __future__ import annotations

import os
from pathlib import Path

from rollwise.errors import ConfigError

CONFIG_FILE = "rollwise.yaml"
STATE_DIR = ".rollwise"  # beside rollwise.yaml: the state store, journals, agents


def find_config(start: Path) -> Path:
    """The nearest `rollwise.yaml` at or above `start`."""
    for d in (start.resolve(), *start.resolve().parents):
        candidate = d / CONFIG_FILE
        if candidate.is_file():
            return candidate
        if os.path.lexists(candidate):
            raise ConfigError(
                f"{CONFIG_FILE} is {_kind(candidate)}, not a file",
                where=str(candidate),
                hint=f"move it away and write the settings to a file named "
                f"{CONFIG_FILE} (`rollwise init` writes a template)",
            )
    raise ConfigError(
        f"no {CONFIG_FILE} in {start.resolve()} or any parent directory",
        hint="run `rollwise init` to create one",
    )


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a directory"
    return "a link to nothing" if not path.exists() else "not a regular file"
