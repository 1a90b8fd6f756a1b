"""End to end: the bad-input catalogue. Each file in tests/cases/ is one bad input (a command,
and the configuration, files and environment it runs with), the exit code and the words the
message must carry; and whatever it is, nothing changes: the state store (every table but
the audit log), the router's weights and the version it serves, the app's database, the
release artifacts and every other file of the project are the same before and after.

A case file (YAML):

    what: rollback --to a release that does not exist     # one line, for the reader
    run: [rollback, --to, 9.9.9, --yes]                   # rollwise arguments; -C is added
    exit: 7
    says: ["9.9.9", "does not exist"]                     # each in stdout + stderr
    # optional:
    config: {environments: {dev: {instances: 0}}}         # deep-merged into rollwise.yaml
    config_text: "..."                                    # or the whole file (!!binary: bytes)
    files: {"relative/path": "content"}                   # written before, removed after
    links: {"relative/path": "target"}                    # symbolic links, the same way
    fifos: ["relative/path"]                              # named pipes, the same way
    env: {ROLLWISE_DATABASE_URL: "..."}
    stdin: "..."                                          # default: empty (not a terminal)
    dir: "{outside}"                                      # -C to this instead of the project
    json: true                                            # stdout is the --json error object

`{project}`, `{listen}` (the router address), `{outside}` (an empty folder outside the
project, also checked for changes) and `{backup}` (the id of the base project's backup) are
replaced in run, says, env, dir and config_text.

The base project (releases 1.0.0 and 1.1.0, 1.0.0 live on a SQLite database with two orders,
one backup) is built once per worker. A case never deploys: it costs one rollwise process,
forked from one that has imported rollwise already, and two snapshots read in this process.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise.agent.client import AgentClient
from rollwise.demo import prepare_example
from tests.conftest import EXAMPLE
from tests.forks import Forks

CASES = Path(__file__).resolve().parents[1] / "cases"
KEYS = {
    "what",
    "run",
    "exit",
    "says",
    "config",
    "config_text",
    "files",
    "links",
    "fifos",
    "env",
    "stdin",
    "dir",
    "json",
}
TIMEOUT_S = 60
APP_DB = Path(".rollwise/envs/dev/shared/orders.db")
STATE_DB = Path(".rollwise/state.db")
# Compared in their own way (tables) or written by every command (logs, the socket).
NOT_AS_FILES = re.compile(
    r"(^|/)(state\.db|orders\.db)(-wal|-shm|-journal)?$"
    r"|^\.rollwise/envs/[^/]+/(logs/.*|agent\.log|agent\.sock)$"
    r"|^\.rollwise/fleet\.json$"  # the hosts of the validated rollwise.yaml: a cache
)
# What the commands import when they run, imported once by the forking process.
BOX = re.compile(r"[│╭╮╰╯─]+")  # the frame typer draws around usage errors


@dataclass
class Base:
    root: Path
    env: dict[str, str]  # XDG folders of this module, the actor
    outside: Path
    listen: str
    forks: Forks
    backup: str = ""


def run(
    base: Base,
    args: list[str],
    env: dict[str, str] | None = None,
    stdin: str = "",
    directory: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [*args, "-C", str(directory or base.root)]
    environ = {**os.environ, **base.env, **(env or {})}
    if not any(k.startswith("PYTHON") for k in env or {}):
        return base.forks.run(argv, environ, stdin, TIMEOUT_S)
    return subprocess.run(
        [sys.executable, "-m", "rollwise", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=TIMEOUT_S,
        env=environ,
    )


def checked(base: Base, *args: str) -> str:
    proc = run(base, list(args))
    assert proc.returncode == 0, f"rollwise {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    """Releases 1.0.0 and 1.1.0; 1.0.0 live in dev, with two orders in its database and a
    backup of it."""
    work = tmp_path_factory.mktemp("catalogue")
    root = prepare_example(EXAMPLE, work, {"database": {"url": "sqlite:///{shared}/orders.db"}})
    listen = yaml.safe_load((root / "rollwise.yaml").read_text())["environments"]["dev"]["router"][
        "listen"
    ]
    (work / "outside").mkdir()
    b = Base(
        root,
        {
            "XDG_CONFIG_HOME": str(work / "config"),
            "XDG_STATE_HOME": str(work / "state"),
            "ROLLWISE_ACTOR": "catalogue",
        },
        work / "outside",
        listen,
        forks=Forks(),
    )
    try:
        for v in ("1.0.0", "1.1.0"):
            (root / "VERSION").write_text(v + "\n")
            checked(b, "release", "create", "--version", v)
        checked(b, "deploy", "1.0.0")
        with sqlite3.connect(root / APP_DB) as db:
            db.executemany(
                "INSERT INTO orders VALUES (?, ?, ?, ?)",
                [("o-1", "sku-1", 2, "1.0.0"), ("o-2", "sku-2", 1, "1.0.0")],
            )
        db.close()
        b.backup = json.loads(checked(b, "backup", "create", "--reason", "base", "--json"))[
            "backup"
        ]
        yield b
    finally:
        b.forks.close()
        client = AgentClient(root / ".rollwise" / "envs" / "dev", "dev")
        if client.alive():
            client.call("shutdown")


# --- what must not change ---------------------------------------------------------------


def snapshot(base: Base) -> dict[str, Any]:
    state = tables(base.root / STATE_DB, skip={"events", "locks"})
    return {
        "state store": state,
        "locks held": held(base.root / STATE_DB),
        "router": router(base),
        "app database": tables(base.root / APP_DB),
        "files": files(base.root),
        "files outside": files(base.outside),
    }


def tables(path: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Schema and every row of every table of a SQLite database (read, never written)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = {
            "schema": db.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
            ).fetchall()
        }
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            if name not in skip:
                out[name] = sorted(map(repr, db.execute(f'SELECT * FROM "{name}"')))
        return out
    finally:
        db.close()


def held(path: Path) -> list[tuple[str, str]]:
    """The locks held (a command that takes a free lock and lets it go leaves its row with
    another holder and the next fencing token: that is the lock working, not a change)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT env, holder FROM locks WHERE expires_at > ?", (time.time(),)
        ).fetchall()
    finally:
        db.close()


def router(base: Base) -> dict[str, Any]:
    """What `rollwise status --json` says serves dev, and the version the router answers
    with (read in this process: a rollwise process per snapshot would double the time)."""
    from rollwise.controller import ops
    from rollwise.controller.context import Context

    ctx = Context.open(base.root)
    try:
        s = ops.status(ctx, "dev")["environments"]["dev"]
    finally:
        ctx.engine.dispose()
    return {
        "live": s["live_version"],
        "weights": s["weights"],
        "agent": s["agent"],
        "instances": [
            (i["name"], i["version"], i["port"], i["alive"], i["restarts"]) for i in s["instances"]
        ],
        "lock": s["lock"],
        "in progress": s["in_progress"],
        "marks": s["marks"],
        "serves": serving(base.listen),
    }


def serving(listen: str) -> str | None:
    host, port = listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("x-version")
    finally:
        conn.close()


def files(root: Path) -> dict[str, str]:
    """Every path under the project (rollwise.yaml, artifacts, unpacked releases, backups,
    secrets) with what it is: a file's sha256, a link's target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if NOT_AS_FILES.search(rel):
            continue
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir" if path.is_dir() else "other"
    return out


# --- the cases ----------------------------------------------------------------------------


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    assert isinstance(case, dict), f"{path.name}: a case is a mapping"
    assert {"what", "run", "exit", "says"} <= case.keys() <= KEYS, (
        f"{path.name}: keys {sorted(case)}; needs what, run, exit, says; may have {sorted(KEYS)}"
    )
    return case


def fill(value: Any, base: Base) -> Any:
    if isinstance(value, str):
        for name, v in (
            ("project", base.root),
            ("listen", base.listen),
            ("outside", base.outside),
            ("backup", base.backup),
        ):
            value = value.replace(f"{{{name}}}", str(v))
        return value
    if isinstance(value, list):
        return [fill(v, base) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, base) for k, v in value.items()}
    return value


def merged(into: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for k, v in changes.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Setup:
    """The case's rollwise.yaml, files, links and pipes, put in place and taken away."""

    def __init__(self, base: Base, case: dict[str, Any]) -> None:
        self.root = base.root
        self.config = base.root / "rollwise.yaml"
        self.original = self.config.read_bytes()
        self.case = case
        self.base = base
        self.made: list[Path] = []

    def __enter__(self) -> Setup:
        if "config" in self.case:
            cfg = merged(yaml.safe_load(self.original), self.case["config"])
            self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if "config_text" in self.case:
            text = self.case["config_text"]
            self.config.write_bytes(
                text if isinstance(text, bytes) else fill(text, self.base).encode()
            )
        for rel, content in self.case.get("files", {}).items():
            self._new(rel).write_text(content)
        for rel, target in self.case.get("links", {}).items():
            self._new(rel).symlink_to(target)
        for rel in self.case.get("fifos", []):
            os.mkfifo(self._new(rel))
        return self

    def _new(self, rel: str) -> Path:
        path = self.root / rel
        assert not os.path.lexists(path), f"{rel} exists in the base project"
        for parent in reversed(path.relative_to(self.root).parents[:-1]):
            if not (self.root / parent).exists():
                (self.root / parent).mkdir()
                self.made.append(self.root / parent)
        self.made.append(path)
        return path

    def __exit__(self, *exc: object) -> None:
        self.config.write_bytes(self.original)
        for path in reversed(self.made):  # a folder the command wrote into fails here
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr as one line of words, without the frame around usage errors."""
    return " ".join(BOX.sub(" ", proc.stdout + "\n" + proc.stderr).split()).lower()


def check_json(proc: subprocess.CompletedProcess[str], code: int) -> None:
    data = json.loads(proc.stdout)
    assert set(data) == {"ok", "error", "where", "hint", "exit_code"}, data
    assert (data["ok"], data["exit_code"]) == (False, code), data
    assert data["error"] and data["hint"], data


def run_case(base: Base, case: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    with Setup(base, case):
        directory = Path(fill(case["dir"], base)) if "dir" in case else None
        return run(
            base,
            [str(a) for a in fill(case["run"], base)],
            {k: str(v) for k, v in fill(case.get("env", {}), base).items()},
            case.get("stdin", ""),
            directory,
        )


@pytest.mark.parametrize("path", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_given_bad_input_then_clear_refusal_and_nothing_changed(base: Base, path: Path) -> None:
    case = load_case(path)
    before = snapshot(base)
    proc = run_case(base, case)
    shown = (
        f"rollwise {' '.join(map(str, case['run']))} exited {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    assert proc.returncode == case["exit"], shown
    assert "traceback" not in said(proc), shown
    words = [" ".join(str(w).lower().split()) for w in fill(case["says"], base)]
    missing = [w for w in words if w not in said(proc)]
    assert not missing, f"{missing} not said; {shown}"
    if case.get("json"):
        check_json(proc, case["exit"])
    after = snapshot(base)
    for part in before:
        assert after[part] == before[part], f"{part} changed; {shown}"
