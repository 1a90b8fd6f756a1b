"""Load `rollwise.yaml`; every error names the file, the line, the key and what is expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rollwise.config.schema import ProjectConfig
from rollwise.errors import ConfigError

CONFIG_FILE = "rollwise.yaml"
Lines = dict[tuple[str | int, ...], int]


def find_config(start: Path) -> Path:
    """The nearest `rollwise.yaml` at or above `start`."""
    for d in (start.resolve(), *start.resolve().parents):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    raise ConfigError(
        f"no {CONFIG_FILE} in {start.resolve()} or any parent directory",
        hint="run `rollwise init` to create one",
    )


def load_config(path: Path) -> ProjectConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", where=str(path)) from e
    return load_config_text(text, str(path))


def load_config_text(text: str, name: str) -> ProjectConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"malformed YAML: {problem}", where=where,
                          hint="check indentation and quoting on that line") from e
    if node is None:
        raise ConfigError("file is empty", where=name, hint="run `rollwise init` for a template")
    lines: Lines = {}
    _index(node, (), lines, name)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of keys", where=f"{name}:1")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, lines, name) from None


def _index(node: yaml.Node, path: tuple[str | int, ...], lines: Lines, name: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = str(key.value)
            if k in seen:
                raise ConfigError(f"key {'.'.join(map(str, (*path, k)))!r} appears twice",
                                  where=f"{name}:{key.start_mark.line + 1}",
                                  hint="remove one of them")
            seen.add(k)
            lines[(*path, k)] = key.start_mark.line + 1
            _index(value, (*path, k), lines, name)
            lines[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, name)


def _explain(e: ValidationError, lines: Lines, name: str) -> ConfigError:
    messages = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        line = _nearest_line(loc, lines)
        key = ".".join(str(p) for p in loc) or "(top level)"
        messages.append(f"{name}:{line}: {key}: {_expected(err)}")
    first, *rest = messages
    where, _, msg = first.partition(": ")
    return ConfigError("\n".join([msg, *rest]), where=where,
                       hint="see docs/config.md or `rollwise config schema` for every key")


def _nearest_line(loc: tuple[Any, ...], lines: Lines) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _expected(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {err['input']!r})" if "input" in err and kind != "model_type" else msg
