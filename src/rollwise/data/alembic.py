"""Alembic migrations, the app's own: read without importing them, run with the app's own
command (`alembic` or Flask-Migrate's `flask db`) in the release directory.

Revision files are parsed, not imported (importing needs the app's dependencies): their
`revision`, `down_revision`, `upgrade()` and `downgrade()`. A `downgrade()` with nothing
but `pass` in it is irreversible. `# rollwise: expand` and `# rollwise: irreversible`
comments mark a revision as for SQL files. Branches (two heads, merge revisions) are
refused: a rollback needs one line of revisions.

Alembic takes no lock of its own (alembic#633): the runner holds the database lock
(`sqlrunner.locked`) on its own connection for as long as the command runs.
"""

from __future__ import annotations

import ast
import configparser
import re
import shlex
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import inspect, text

from rollwise.data.command import cause, shell, tail
from rollwise.data.migrations import Migration, markers
from rollwise.data.sqlrunner import MigrationFailed, locked, open_db, redact
from rollwise.errors import ConfigError, RollwiseError

RUNNING = re.compile(r"Running (upgrade|downgrade) ([\w,() ]*?) -> (\w+)")
DEFAULT_COMMAND = {"flask": "python3 -m flask db", "plain": "python3 -m alembic -c {config}"}


def _constant(node: ast.expr | None) -> str | tuple[str, ...] | None:
    value = ast.literal_eval(node) if node is not None else None
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return None if value is None else str(value)


def _function(tree: ast.Module, source: str, name: str) -> tuple[str, bool]:
    """The source of a top-level function and whether its body does anything."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            body = [
                s
                for s in node.body
                if not isinstance(s, ast.Pass)
                and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            ]
            return ast.get_source_segment(source, node) or "", bool(body)
    return "", False


def read_revision(path: Path) -> tuple[Migration, str | tuple[str, ...] | None]:
    """One revision file: the migration and its down_revision."""
    source = path.read_text()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise ConfigError(
            f"revision file {path.name} does not parse: {e.msg}", where=f"{path}:{e.lineno}"
        ) from None
    names: dict[str, ast.expr | None] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node.value
    if "revision" not in names:
        raise ConfigError(
            f"{path.name} has no `revision = ...`",
            where=str(path),
            hint="is this folder Alembic's versions/ folder?",
        )
    try:
        revision, parent = _constant(names["revision"]), _constant(names.get("down_revision"))
    except ValueError:
        raise ConfigError(
            f"{path.name}: revision and down_revision must be plain strings", where=str(path)
        ) from None
    up, _ = _function(tree, source, "upgrade")
    down, reversible = _function(tree, source, "downgrade")
    words = markers(source.replace("# rollwise:", "-- rollwise:"))
    irreversible = "irreversible" in words or not reversible
    doc = ast.get_docstring(tree) or ""
    name = (doc.splitlines()[0].strip() if doc else "") or path.stem
    return (
        Migration(
            str(revision),
            name,
            up,
            None if irreversible else down,
            irreversible,
            "expand" in words,
            filename=path.name,
        ),
        parent,
    )


def scan_revisions(folder: Path) -> list[Migration]:
    """The revisions of a versions/ folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [read_revision(p) for p in sorted(folder.glob("*.py")) if p.name != "__init__.py"]
    by_parent: dict[str | None, list[Migration]] = {}
    for m, parent in found:
        if isinstance(parent, tuple):
            raise ConfigError(
                f"{m.file} merges revisions {', '.join(parent)}",
                where=str(folder / m.file),
                hint="rollwise follows one line of "
                "revisions; deploy the merge as its own release after both "
                "branches, or squash them",
            )
        by_parent.setdefault(parent, []).append(m)
    for parent, children in by_parent.items():
        if len(children) > 1:
            raise ConfigError(
                f"revisions {', '.join(c.file for c in children)} all follow "
                f"{parent or 'the base'}: there are several heads",
                where=str(folder),
                hint="merge them (`alembic merge heads`) before releasing",
            )
    ordered: list[Migration] = []
    head: str | None = None
    while head in by_parent:
        ordered.append(by_parent[head][0])
        head = ordered[-1].version
    if len(ordered) != len(found):
        lost = sorted({m.file for m, _ in found} - {m.file for m in ordered})
        raise ConfigError(
            f"revisions {', '.join(lost)} do not lead back to the base",
            where=str(folder),
            hint="a down_revision names a revision that is not in the folder",
        )
    return ordered


def versions_dir(release_dir: Path, layout: str, directory: str) -> Path:
    """The versions/ folder: under the Flask-Migrate folder, or where alembic.ini's
    script_location says."""
    if layout == "flask":
        return release_dir / directory / "versions"
    ini = release_dir / directory
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    if not parser.read(ini):
        raise ConfigError(
            f"no Alembic config at {ini}",
            where="migrations.config",
            hint="the path of alembic.ini, relative to `source`",
        )
    try:
        location = parser.get("alembic", "script_location")
    except configparser.Error:
        raise ConfigError(f"{ini} has no [alembic] script_location", where=str(ini)) from None
    return (ini.parent / location / "versions").resolve()


@dataclass
class AlembicRunner:
    """Runs `<command> upgrade|downgrade [-d dir] [--sql] REV` in a release directory with
    the app's environment; reads the applied revision from the version table."""

    url: str
    release_dir: Path
    layout: str  # flask | plain
    directory: str  # flask: the migrations folder; plain: alembic.ini
    command: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    version_table: str = "alembic_version"
    lock_timeout_s: float = 10.0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        self.engine = open_db(self.url)

    @property
    def transactional_ddl(self) -> bool:
        """Alembic runs all revisions in one transaction on PostgreSQL. On SQLite (pysqlite
        commits around DDL) and MySQL a failure halfway is undone from the backup."""
        return self.engine.dialect.name == "postgresql"

    def applied_versions(self, ms: list[Migration]) -> set[str]:
        """Revisions up to the one in the version table (none when there is no table)."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table(self.version_table):
                    return set()
                heads = [
                    str(r[0])
                    for r in conn.execute(text(f"SELECT version_num FROM {self.version_table}"))
                ]
        except Exception as e:
            raise RollwiseError(
                f"database {redact(self.url)}: {str(e).splitlines()[0]}",
                where="database.url",
                hint="check that the database runs, "
                "the host and port, the user name and the password",
            ) from None
        if not heads:
            return set()
        if len(heads) > 1:
            raise MigrationFailed(
                f"the database has several Alembic heads: {heads}",
                hint="merge them before deploying with rollwise",
            )
        keys = [m.version for m in ms]
        if heads[0] not in keys:
            raise MigrationFailed(
                f"the database is at revision {heads[0]}, which this release does not have",
                where=str(versions_dir(self.release_dir, self.layout, self.directory)),
                hint="the database is ahead of this release: deploy a newer release, or roll "
                "back with the release that applied that revision",
            )
        return set(keys[: keys.index(heads[0]) + 1])

    def verified_applied(self, ms: list[Migration], recorded: dict[str, str]) -> set[str]:
        """The applied revisions, once none of them differs from the copy that applied it
        (checksums recorded with that release)."""
        applied = self.applied_versions(ms)
        for m in ms:
            if m.version in applied and recorded.get(m.version) not in (None, m.checksum):
                raise MigrationFailed(
                    f"{m.file} was edited after it was applied (checksum "
                    f"{recorded[m.version][:12]} when applied, {m.checksum[:12]} now)",
                    where=m.file,
                    hint="never edit an applied revision: undo the edit and add a new revision",
                )
        return applied

    def upgrade(self, path: list[Migration]) -> list[str]:
        if not path:
            return []
        self._run("upgrade", path[-1].version)
        return [m.file for m in path]

    def downgrade(self, path: list[Migration], target: str | None = None) -> list[str]:
        if not path:
            return []
        self._run("downgrade", target or "base")
        return [m.down_file for m in path]

    def preview(self, path: list[Migration], target: str | None) -> list[str]:
        """The SQL a downgrade will run (Alembic offline mode); the downgrade() sources when
        the app's migrations cannot run offline."""
        if not path:
            return []
        try:
            out = self._run("downgrade", f"{path[0].version}:{target or 'base'}", sql=True)
            return [line for line in out.splitlines() if line.strip()]
        except RollwiseError as e:
            rows = [
                f"-- no offline SQL: `{self._command('downgrade', '...', True)}` failed: "
                f"{cause(e.message.partition(chr(10))[2] or e.message)}",
                "-- the downgrade() functions that will run:",
            ]
            for m in path:
                rows += [f"-- {m.file}", *(m.down or "").splitlines()]
            return rows

    def close(self) -> None:
        self.engine.dispose()

    def _command(self, op: str, rev: str, sql: bool) -> str:
        base = (self.command or DEFAULT_COMMAND[self.layout]).format(config=self.directory)
        where = ["-d", self.directory] if self.layout == "flask" else []
        return f"{base} {shlex.join([op, *where, *(['--sql'] if sql else []), rev])}"

    def _run(self, op: str, rev: str, sql: bool = False) -> str:
        """The command in a shell, so `$PWD` and `env VAR=... cmd` work; under the migration
        lock unless it runs offline (`--sql` touches no database)."""
        command = self._command(op, rev, sql)
        with nullcontext() if sql else locked(self.engine, self.url, self.lock_timeout_s):
            proc = shell(command, self.release_dir, self.env, self.timeout_s, "migrations.command")
        if proc.returncode == 127:
            raise ConfigError(
                f"migration command not found: `{command}`",
                where="migrations.command",
                hint="the interpreter or tool that "
                "has the app's dependencies, e.g. .venv/bin/python -m flask db",
            )
        if proc.returncode != 0:
            running = RUNNING.findall(proc.stderr + proc.stdout)
            op, src, dst = running[-1] if running else ("", "", "")
            rev, src = (dst if op == "upgrade" else src.strip()), src.strip() or "base"
            at = f"revision {rev} ({op} {src} -> {dst}) failed; " if running else ""
            raise MigrationFailed(
                f"{at}`{command}` exited {proc.returncode}:\n{tail(proc)}",
                where=str(self.release_dir),
                hint="nothing of this run was kept; the schema is as before"
                if self.transactional_ddl
                else "",
            )
        return proc.stdout
