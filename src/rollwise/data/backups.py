"""Backups that are known to restore: a dump per engine, a manifest with the file's sha256 and
each table's row count and checksum at backup time, and a verify that restores into a scratch
database and compares.

- SQLite: the online backup API (a consistent copy while the app writes);
- PostgreSQL: `pg_dump --format=custom`, restored with `pg_restore`;
- MySQL/MariaDB: `mysqldump --single-transaction`, restored with `mysql`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url

from rollwise.artifacts import sha256_file
from rollwise.data.sqlrunner import TABLE as SCHEMA_TABLE
from rollwise.data.sqlrunner import redact
from rollwise.errors import IntegrityError, RollwiseError

Snapshot = dict[str, dict[str, Any]]  # table -> {"rows": n, "checksum": "..."}


@dataclass(frozen=True)
class Manifest:
    id: str
    env: str
    engine: str
    database: str  # the source's identity (redacted URL)
    file: str
    size: int
    sha256: str
    created_at: float
    tables: Snapshot = field(default_factory=dict)
    reason: str = ""
    release: str | None = None  # the release live when it was taken
    schema: list[str] | None = None  # the migrations applied then, oldest first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(url: str) -> Snapshot:
    """Row count and a content checksum of every table (rollwise's own table left out)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out: Snapshot = {}
            for t in sorted(inspect(conn).get_table_names()):
                if t != SCHEMA_TABLE:
                    out[t] = _table_sum(conn, t)
            return out
    finally:
        engine.dispose()


def _table_sum(conn: Any, table: str) -> dict[str, Any]:
    """Rows and an order-independent content checksum, computed in the database where it
    can (PostgreSQL: md5 of the sorted row md5s; MySQL: CHECKSUM TABLE)."""
    q = conn.dialect.identifier_preparer.quote(table)
    if conn.dialect.name == "postgresql":
        n, digest = conn.execute(text(
            f"SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY "
            f"md5(t::text))), '') FROM {q} t")).one()
        return {"rows": int(n), "checksum": str(digest)}
    if conn.dialect.name == "mysql":
        n = conn.execute(text(f"SELECT count(*) FROM {q}")).scalar()
        digest = conn.execute(text(f"CHECKSUM TABLE {q}")).one()[1]
        return {"rows": int(n), "checksum": str(digest)}
    rows = sorted(repr(tuple(str(v) for v in r)) for r in conn.execute(text(f"SELECT * FROM {q}")))
    return {"rows": len(rows), "checksum": hashlib.sha256("\n".join(rows).encode()).hexdigest()}


def has_data(url: str) -> bool:
    """False for a database that does not exist yet or has no table: nothing to back up."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and not Path(str(u.database)).is_file():
        return False
    return bool(snapshot(url))


def _pg_uri(u: URL) -> str:
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def _mysql_args(u: URL) -> tuple[list[str], dict[str, str]]:
    args = [f"--host={u.host or '127.0.0.1'}", f"--port={u.port or 3306}",
            f"--user={u.username or 'root'}"]
    env = {**os.environ, "MYSQL_PWD": u.password or ""}
    return args, env


def _run(cmd: list[str], env: dict[str, str] | None = None, stdin: Any = None,
         stdout: Any = None) -> None:
    p = subprocess.run(cmd, env=env, stdin=stdin, stdout=stdout or subprocess.PIPE,
                       stderr=subprocess.PIPE, text=False, timeout=6 * 3600)
    if p.returncode != 0:
        msg = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RollwiseError(f"{cmd[0]} exited {p.returncode}: {msg[0]}", where=cmd[0])


def dump(url: str, dest: Path) -> None:
    u = make_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if u.get_backend_name() == "sqlite":
        src = sqlite3.connect(str(u.database))
        try:
            with sqlite3.connect(dest) as out:
                src.backup(out)
        finally:
            src.close()
    elif u.get_backend_name() == "postgresql":
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={dest}", _pg_uri(u)])
    elif u.get_backend_name() == "mysql":
        args, env = _mysql_args(u)
        with dest.open("wb") as f:
            _run(["mysqldump", *args, "--single-transaction", "--routines", "--triggers",
                  str(u.database)], env=env, stdout=f)
    else:
        raise RollwiseError(f"no backup provider for {u.get_backend_name()}")


def load(path: Path, url: str) -> None:
    """Restore a dump into the (empty or existing) database at `url`."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        src = sqlite3.connect(path)
        try:
            with sqlite3.connect(str(u.database)) as out:
                src.backup(out)
        finally:
            src.close()
    elif u.get_backend_name() == "postgresql":
        _run(["pg_restore", "--no-owner", "--clean", "--if-exists", "--exit-on-error",
              f"--dbname={_pg_uri(u)}", str(path)])
    else:
        args, env = _mysql_args(u)
        with path.open("rb") as f:
            _run(["mysql", *args, str(u.database)], env=env, stdin=f)


@contextmanager
def scratch_database(url: str, work: Path) -> Iterator[str]:
    """An empty database beside the source's, dropped afterwards."""
    u = make_url(url)
    name = f"rollwise_verify_{uuid.uuid4().hex[:8]}"
    if u.get_backend_name() == "sqlite":
        path = work / f"{name}.db"
        yield f"sqlite:///{path}"
        path.unlink(missing_ok=True)
        return
    admin_db = "postgres" if u.get_backend_name() == "postgresql" else "mysql"
    admin = create_engine(u.set(database=admin_db), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if \
                u.get_backend_name() == "postgresql" else "DROP DATABASE IF EXISTS {}"
            conn.execute(text(drop.format(name)))
        admin.dispose()


def create(url: str, folder: Path, env: str, reason: str, *, release: str | None = None,
           schema: list[str] | None = None) -> Manifest:
    """Dump, then record the file's sha256 and the tables as they were."""
    u = make_url(url)
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    ext = {"sqlite": "sqlite", "postgresql": "pgdump", "mysql": "sql"}[u.get_backend_name()]
    dest = folder / f"{backup_id}.{ext}"
    tables = snapshot(url)
    dump(url, dest)
    m = Manifest(backup_id, env, u.get_backend_name(), redact(url), dest.name,
                 dest.stat().st_size, sha256_file(dest), time.time(), tables, reason,
                 release, schema)
    (folder / f"{backup_id}.json").write_text(json.dumps(m.as_dict(), indent=2))
    return m


def manifests(folder: Path) -> list[Manifest]:
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        out.append(Manifest(**json.loads(f.read_text())))
    return out


def get(folder: Path, backup_id: str) -> Manifest:
    for m in manifests(folder):
        if m.id == backup_id:
            return m
    known = ", ".join(m.id for m in manifests(folder)) or "none"
    raise RollwiseError(f"no backup {backup_id!r}", hint=f"backups: {known}")


def diff(expected: Snapshot, got: Snapshot) -> list[str]:
    """Differences table by table, in words."""
    out = []
    for t in sorted(set(expected) | set(got)):
        a, b = expected.get(t), got.get(t)
        if a is None or b is None:
            where = "missing in the restore" if b is None else "not in the backup"
            out.append(f"table {t}: {where}")
        elif a["rows"] != b["rows"]:
            out.append(f"table {t}: {a['rows']} rows at backup time, {b['rows']} restored")
        elif a["checksum"] != b["checksum"]:
            out.append(f"table {t}: same row count, different content")
    return out


def verify(m: Manifest, folder: Path, url: str) -> dict[str, Any]:
    """The file is intact (sha256) and restores to what was backed up (tables compared)."""
    path = folder / m.file
    if not path.is_file():
        raise IntegrityError(f"backup {m.id}: file {m.file} is missing", where=str(path))
    actual = sha256_file(path)
    if actual != m.sha256 or path.stat().st_size != m.size:
        raise IntegrityError(f"backup {m.id}: {m.file} is corrupted or truncated (sha256 "
                             f"{actual[:12]}, manifest {m.sha256[:12]}; {path.stat().st_size} "
                             f"of {m.size} bytes)", where=str(path),
                             hint="do not rely on this backup; take a new one")
    t0 = time.monotonic()
    with scratch_database(url, folder) as scratch:
        try:
            load(path, scratch)
        except RollwiseError as e:
            raise IntegrityError(f"backup {m.id} does not restore: {e.message}",
                                 where=str(path)) from None
        problems = diff(m.tables, snapshot(scratch))
    if problems:
        raise IntegrityError(f"backup {m.id} restores to something else than was backed up: "
                             + "; ".join(problems), where=str(path))
    return {"id": m.id, "tables": len(m.tables), "rows": sum(t["rows"] for t in
                                                              m.tables.values()),
            "restore_s": round(time.monotonic() - t0, 2)}


def loss(m: Manifest, url: str) -> dict[str, int]:
    """Rows a restore would lose, by table: rows now minus rows at backup time (> 0 only)."""
    now = snapshot(url)
    return {t: now[t]["rows"] - m.tables.get(t, {"rows": 0})["rows"] for t in now
            if now[t]["rows"] > m.tables.get(t, {"rows": 0})["rows"]}


def restore(m: Manifest, folder: Path, url: str) -> None:
    if m.database != redact(url):
        raise RollwiseError(f"backup {m.id} is of {m.database}, not of {redact(url)}",
                            where=f"backup {m.id}", hint="restore it into the database it "
                            "came from; nothing was changed")
    path = folder / m.file
    if sha256_file(path) != m.sha256:
        raise IntegrityError(f"backup {m.id}: {m.file} is corrupted; not restored",
                             where=str(path))
    load(path, url)
    _drop_newer_tables(url, set(m.tables) | {SCHEMA_TABLE})


def _drop_newer_tables(url: str, keep: set[str]) -> None:
    """Tables created after the backup are not part of the state it restores."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            newer = [t for t in inspect(conn).get_table_names() if t not in keep]
            if engine.dialect.name == "mysql" and newer:
                conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
            for t in newer:
                conn.execute(text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(t)}"))
    finally:
        engine.dispose()
