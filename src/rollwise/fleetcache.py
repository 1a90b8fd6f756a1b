"""The hosts and `ssh` settings of the fleet environments, as the last full load of
`rollwise.yaml` validated them, kept in the state directory (`.rollwise/fleet.json`) under
the file's SHA-256, so that the quick `hosts run` path connects without loading pydantic.

An entry counts only for the same file, the same rollwise and the same schema; anything else
(another file, a missing or unreadable cache) is no entry, and the full path runs, validates
and writes it again."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import rollwise
from rollwise.private import replace_private
from rollwise.ssh import Host, Options

FILE = "fleet.json"
FORMAT = 1


@dataclass(frozen=True)
class CachedHost:
    """What a connection needs of a `HostConfig`."""

    address: str
    port: int
    user: str | None
    key_file: str | None
    label: str


@dataclass(frozen=True)
class CachedSSH:
    """What a connection needs of an `SSHConfig`."""

    user: str
    key_file: str | None
    known_hosts: str
    connect_timeout_s: float
    command_timeout_s: float
    connect_attempts: int
    concurrency: int
    jump_host: str | None


@dataclass(frozen=True)
class Fleet:
    hosts: tuple[CachedHost, ...]
    ssh: CachedSSH


def _stamp() -> str:
    """This rollwise and its schema: an entry another one wrote does not count."""
    schema = os.stat(Path(__file__).with_name("config") / "schema.py")
    return f"{rollwise.__version__}:{schema.st_size}:{schema.st_mtime_ns}:{FORMAT}"


def _pick(obj: Host | Options, kind: type[CachedHost] | type[CachedSSH]) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(kind)}


def write(
    state_dir: Path, config_sha256: str, env: str, hosts: Sequence[Host], ssh: Options
) -> None:
    """Keep `env`'s hosts and settings, read from the file hashing to `config_sha256`
    (entries of other environments of the same file are kept)."""
    head = {"stamp": _stamp(), "config_sha256": config_sha256}
    old = _load(state_dir / FILE)
    envs = old.get("envs", {}) if {k: old.get(k) for k in head} == head else {}
    entry = {"hosts": [_pick(h, CachedHost) for h in hosts], "ssh": _pick(ssh, CachedSSH)}
    if envs.get(env) == entry:
        return
    body = {**head, "envs": {**envs, env: entry}}
    try:
        replace_private(state_dir / FILE, json.dumps(body, indent=1).encode())
    except OSError:  # a cache: the command goes on, the next hosts run takes the full path
        return


def read(state_dir: Path, config_sha256: str, env: str) -> Fleet | None:
    """`env`'s hosts and settings for the file hashing to `config_sha256`; None when the
    cache has no entry for that file, this rollwise and `env`."""
    body = _load(state_dir / FILE)
    if body.get("stamp") != _stamp() or body.get("config_sha256") != config_sha256:
        return None
    entry = body.get("envs", {}).get(env)
    if entry is None:
        return None
    try:
        return Fleet(
            tuple(CachedHost(**h) for h in entry["hosts"]),
            CachedSSH(**entry["ssh"]),
        )
    except (TypeError, KeyError):  # written by another format: as good as none
        return None


def _load(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}
