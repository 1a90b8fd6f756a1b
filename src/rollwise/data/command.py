"""Migrations run by any tool (Flyway, Liquibase, a script): shell commands in the release
directory, `{version}` replaced by a schema version.

- `version`, run at `release create` in the source: prints the schema version the release
  needs (for Flyway, the newest `V<version>__*.sql`).
- `current`: prints the database's schema version.
- `up`: brings the database to `{version}`; `down`: takes it back to `{version}`.
- `preview` (optional): prints what `down` would run.

The tool checks its own migrations (Flyway's `validate`); rollwise compares versions only,
so a rollback runs `down` whenever the database is at the live release's version and the
target release needs another one.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from rollwise.data.migrations import Migration
from rollwise.data.sqlrunner import MigrationFailed, locked, open_db
from rollwise.errors import ConfigError


def release_version(
    release_dir: Path, command: str, env: dict[str, str], timeout_s: float
) -> list[Migration]:
    """The schema version a release needs, as one migration (empty when none printed)."""
    v = _shell("version", command, release_dir, env, timeout_s).strip()
    return [Migration(v, "schema", "", "", filename=f"schema {v}")] if v else []


@dataclass
class CommandRunner:
    url: str
    release_dir: Path
    version: str
    current: str
    up: str
    down: str
    preview_command: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    transactional_ddl: bool = False
    lock_timeout_s: float = 10.0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        self.engine = open_db(self.url)

    def applied_versions(self, ms: list[Migration]) -> set[str]:
        v = self._run("current", self.current).strip()
        return {v} if v else set()

    def verified_applied(self, ms: list[Migration], recorded: dict[str, str]) -> set[str]:
        """The tool validates its own migrations."""
        return self.applied_versions(ms)

    def upgrade(self, path: list[Migration]) -> list[str]:
        if not path:
            return []
        with locked(self.engine, self.url, self.lock_timeout_s):
            self._run("up", self.up.format(version=path[-1].version))
        return [f"up to {path[-1].version}"]

    def downgrade(self, path: list[Migration], target: str | None = None) -> list[str]:
        if not path:
            return []
        with locked(self.engine, self.url, self.lock_timeout_s):
            self._run("down", self.down.format(version=target or ""))
        return [f"down to {target}"]

    def preview(self, path: list[Migration], target: str | None) -> list[str]:
        if not path:
            return []
        if self.preview_command is None:
            return [f"-- runs: {self.down.format(version=target or '')}"]
        return self._run("preview", self.preview_command.format(version=target or "")).splitlines()

    def close(self) -> None:
        self.engine.dispose()

    def _run(self, key: str, command: str) -> str:
        return _shell(key, command, self.release_dir, self.env, self.timeout_s)


def shell(
    command: str, cwd: Path, env: dict[str, str], timeout_s: float, label: str
) -> subprocess.CompletedProcess[str]:
    """`command` in bash in `cwd`, with `env` over this process's; MigrationFailed naming
    `label` when it runs longer than `timeout_s`."""
    try:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            text=True,
            capture_output=True,
            timeout=timeout_s,
            env={**os.environ, **env},
        )
    except subprocess.TimeoutExpired:
        raise MigrationFailed(
            f"{label} ran longer than {timeout_s} s: {command}", where=label
        ) from None


EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|Exit)\b|Error:|error:|FATAL)")


def tail(proc: subprocess.CompletedProcess[str], keep: int = 30) -> str:
    """What a failed command wrote (stderr, then stdout), for its error: all of it when
    short; else the first exception lines (the cause, which tools often follow with an
    unrelated last line) and the last lines."""
    lines = [*proc.stderr.strip().splitlines(), *proc.stdout.strip().splitlines()]
    if len(lines) <= keep:
        return "\n".join(lines)
    causes = [x for x in lines[: -keep // 2] if EXCEPTION_LINE.match(x)][: keep // 2]
    return "\n".join([*causes, "...", *lines[-keep // 2 :]])


def cause(text: str) -> str:
    """The line of a command's output that says why it failed: the first exception line,
    else the last line."""
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return next(
        (x.strip() for x in lines if EXCEPTION_LINE.match(x)), lines[-1] if lines else "no output"
    )


def _shell(key: str, command: str, cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    proc = shell(command, cwd, env, timeout_s, f"migrations.{key}")
    if proc.returncode != 0:
        cls = ConfigError if proc.returncode == 127 else MigrationFailed
        raise cls(
            f"migrations.{key} exited {proc.returncode}: {command}\n{tail(proc)}",
            where=f"migrations.{key} in {cwd}",
        )
    return proc.stdout
