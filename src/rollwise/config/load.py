"""Load `rollwise.yaml`; every error names the file, the line, the key and what is expected.

The file is read as plain data: no tags, and aliases capped before anything is expanded."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from rollwise.config.schema import BundleConfig, ProjectConfig
from rollwise.errors import ConfigError
from rollwise.project import CONFIG_FILE

Lines = dict[tuple[str | int, ...], int]
M = TypeVar("M", bound=BaseModel)
MAX_ALIASED = 10_000  # values aliases may add; a whole configuration is a few hundred
MAX_DEPTH = 64  # levels of nesting, aliases expanded; a configuration has fewer than ten
PLAIN_TAGS = {None, "!", "tag:yaml.org,2002:str"}  # none, or `!!str` to keep text as text
HINT_TEXT = f"{CONFIG_FILE} is UTF-8 text: is this the right file? save it as UTF-8"
HINT_TAG = (
    "remove the tag; write a value as plain text, quoted when it starts with `!` "
    "(for example '!secret')"
)
HINT_ALIAS = (
    "write the values out, or use each anchor (&name) a few times only and never inside itself"
)
HINT_CONSTRUCT = (
    "quote a value that YAML reads as something other than text (such as `=`), "
    "and merge (`<<:`) only mappings"
)


def load_config(path: Path) -> ProjectConfig:
    return load_config_text(_read(path), str(path))


def load_config_digest(path: Path) -> tuple[ProjectConfig, str]:
    """`load_config`, and the SHA-256 of the bytes it read."""
    text = _read(path)
    return load_config_text(text, str(path)), hashlib.sha256(text.encode()).hexdigest()


def load_bundle(path: Path) -> BundleConfig:
    """`rollwise-bundle.yaml`, with the same checks and messages as `rollwise.yaml`."""
    return _load(_read(path), str(path), BundleConfig)


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", where=str(path)) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot be read",
            where=f"{path}:{line}",
            hint=HINT_TEXT,
        ) from None
    return text


def load_config_text(text: str, name: str) -> ProjectConfig:
    return _load(text, name, ProjectConfig)


def _load(text: str, name: str, model: type[M]) -> M:
    node = _compose(text, name)
    if node is None:
        raise _empty(name)
    lines: Lines = {}
    _index(node, (), lines, name)  # before construction, which rewrites merge keys in place
    data = _construct(node, text, name)
    if data is None:  # a document marker and nothing else
        raise _empty(name)
    if not isinstance(data, dict):
        raise ConfigError(
            "top level must be a mapping of keys",
            where=f"{name}:{node.start_mark.line + 1}",
            hint="start with `app: <name>`; `rollwise init` writes a template"
            if model is ProjectConfig
            else "start with `bundle: <name>` and `services:` (docs/bundles.md)",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _explain(e, lines, name, model) from None


def _empty(name: str) -> ConfigError:
    return ConfigError("file is empty", where=name, hint="run `rollwise init` for a template")


def _compose(text: str, name: str) -> yaml.Node | None:
    """The document's node tree, once its events show it is plain data of a sane size."""
    try:
        measure = _Measure(name)
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            measure.event(event)
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise _malformed(e, text, name) from e


def _construct(node: yaml.Node, text: str, name: str) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _malformed(e, text, name, HINT_CONSTRUCT) from e
    finally:
        loader.dispose()


def _malformed(
    e: yaml.YAMLError,
    text: str,
    name: str,
    hint: str = "check indentation and quoting on that line",
) -> ConfigError:
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, e.position) + 1
        return ConfigError(
            f"not text: character #x{e.character:04x} is not allowed in YAML",
            where=f"{name}:{line}",
            hint=HINT_TEXT,
        )
    mark = getattr(e, "problem_mark", None)
    where = f"{name}:{mark.line + 1}" if mark else name
    return ConfigError(f"malformed YAML: {_problem(e)}", where=where, hint=hint)


def _problem(e: yaml.YAMLError) -> str:
    problem = str(getattr(e, "problem", None) or e)
    context = str(getattr(e, "context", None) or "")
    if problem.startswith("but "):  # "expected a single document in the stream but found..."
        return f"{context} {problem}"
    if problem == "second occurrence":  # "found duplicate anchor 'a'; first occurrence"
        return context.split(";")[0]
    return problem


@dataclass
class _Open:
    """A mapping or list being read."""

    anchor: str | None
    level: int  # 1 at the top
    start: int  # values read before it
    deepest: int  # the deepest level reached inside it, aliases expanded


class _Measure:
    """Reads the document's events before anything is built, and refuses what is not plain
    data: tags, aliases that expand the document by more than MAX_ALIASED values (an alias
    bomb is refused at its first few aliases), an alias inside its own anchor, and nesting
    deeper than MAX_DEPTH levels, aliases expanded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values = 0  # values read, aliases expanded
        self.aliased = 0  # values added by aliases
        self.open: list[_Open] = []
        self.anchors: dict[str, tuple[int, int]] = {}  # anchor: values, levels

    def event(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            self._node(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            self._end()

    def _node(self, event: yaml.ScalarEvent | yaml.CollectionStartEvent) -> None:
        if event.tag not in PLAIN_TAGS:
            tag = str(event.tag).replace("tag:yaml.org,2002:", "!!", 1)
            raise self._refused(
                event, f"the tag {tag} is not allowed: {CONFIG_FILE} holds plain data", HINT_TAG
            )
        self.values += 1
        if isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                self.anchors[event.anchor] = (1, 0)
            return
        level = len(self.open) + 1
        self._reach(level, event)
        self.open.append(_Open(event.anchor, level, self.values - 1, level))

    def _end(self) -> None:
        done = self.open.pop()
        if done.anchor:
            self.anchors[done.anchor] = (self.values - done.start, done.deepest - done.level + 1)
        if self.open:
            self.open[-1].deepest = max(self.open[-1].deepest, done.deepest)

    def _alias(self, event: yaml.AliasEvent) -> None:
        if any(o.anchor == event.anchor for o in self.open):
            raise self._refused(
                event, f"the alias *{event.anchor} is inside its own anchor", HINT_ALIAS
            )
        values, levels = self.anchors.get(str(event.anchor), (1, 0))  # unknown: compose says
        self.values += values
        self.aliased += values
        if self.aliased > MAX_ALIASED:
            raise self._refused(
                event,
                f"aliases add more than {MAX_ALIASED} values to the document (an alias bomb?)",
                HINT_ALIAS,
            )
        self._reach(len(self.open) + levels, event)

    def _reach(self, level: int, event: yaml.Event) -> None:
        if level > MAX_DEPTH:
            raise self._refused(
                event,
                f"nested more than {MAX_DEPTH} levels deep",
                "a configuration is a few levels deep; flatten it",
            )
        if self.open:
            self.open[-1].deepest = max(self.open[-1].deepest, level)

    def _refused(self, event: yaml.Event, what: str, hint: str) -> ConfigError:
        line = event.start_mark.line + 1 if event.start_mark else 1
        return ConfigError(what, where=f"{self.name}:{line}", hint=hint)


def _index(node: yaml.Node, path: tuple[str | int, ...], lines: Lines, name: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = str(key.value)
            if k in seen:
                raise ConfigError(
                    f"key {'.'.join(map(str, (*path, k)))!r} appears twice",
                    where=f"{name}:{key.start_mark.line + 1}",
                    hint="remove one of them",
                )
            seen.add(k)
            lines[(*path, k)] = key.start_mark.line + 1
            _index(value, (*path, k), lines, name)
            lines[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, name)


def _explain(e: ValidationError, lines: Lines, name: str, model: type[BaseModel]) -> ConfigError:
    messages = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        line = _nearest_line(loc, lines)
        key = ".".join(str(p) for p in loc) or "(top level)"
        messages.append(f"{name}:{line}: {key}: {_expected(err, model, loc)}")
    first, *rest = messages
    where, _, msg = first.partition(": ")
    return ConfigError(
        "\n".join([msg, *rest]),
        where=where,
        hint="see docs/config.md or `rollwise config schema` for every key",
    )


def _nearest_line(loc: tuple[Any, ...], lines: Lines) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _expected(err: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = sorted(keys_at(model, loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean `{close[0]}`?"
        return "unknown key; remove it or check its spelling" + (
            f" (keys here: {', '.join(known)})" if known else ""
        )
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {err['input']!r})" if "input" in err and kind != "model_type" else msg


def keys_at(tp: Any, loc: tuple[Any, ...]) -> set[str]:
    """The keys a mapping at `loc` (a path of keys and list indexes) may have, read from the
    schema's types; empty when `loc` does not lead to a model."""
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    origin = get_origin(tp)
    if origin in (Union, UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        if loc and isinstance(loc[0], str):  # a tagged union names the member it tried
            tagged = [m for m in members if loc[0] in _tags(m)]
            if tagged:
                return keys_at(tagged[0], loc[1:])
        return set().union(*(keys_at(m, loc) for m in members))
    if origin in (dict, list):
        return keys_at(get_args(tp)[-1], loc[1:]) if loc else set()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not loc:
            return set(tp.model_fields)
        field = tp.model_fields.get(str(loc[0]))
        return keys_at(field.annotation, loc[1:]) if field else set()
    return set()


def _tags(model: Any) -> tuple[Any, ...]:
    field = getattr(model, "model_fields", {}).get("type")
    return get_args(field.annotation) if field is not None else ()
