"""Backups that are known to restore: a dump per engine, a manifest with the file's sha256, each
table's row count and checksum and its keys and indexes at backup time, and a restore that is
all or nothing and checked before it takes effect.

A restore loads the dump into a scratch database beside the live one, compares it with the
manifest, and only then swaps it in, in one step the database makes atomic (see
docs/adr/0003-atomic-restore.md). `verify` is the same path without the swap.

- SQLite: the online backup API (a consistent copy while the app writes); restored by one
  backup-API pass of the checked scratch file into the live file (one write transaction);
- PostgreSQL: `pg_dump --format=custom`; `pg_restore` into `<db>_rollwise_restore_<token>`,
  then both database renames in one transaction;
- MySQL/MariaDB: `mysqldump --single-transaction`; `mysql` into a scratch schema, then one
  RENAME TABLE statement moves the live tables aside and the restored ones in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn, Protocol, TypedDict, TypeVar

from sqlalchemy import Connection, TextClause, create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import (
    ReflectedForeignKeyConstraint,
    ReflectedIndex,
    ReflectedPrimaryKeyConstraint,
    ReflectedUniqueConstraint,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from rollwise import retry
from rollwise.artifacts import sha256_file
from rollwise.data.sqlrunner import TABLE as SCHEMA_TABLE
from rollwise.data.sqlrunner import redact
from rollwise.errors import IntegrityError, RollwiseError
from rollwise.failpoint import failpoint
from rollwise.private import open_private, private_dir, replace_private

Snapshot = dict[str, dict[str, Any]]  # table -> {"rows": n, "checksum": "..."}


class Key(TypedDict):
    name: str | None  # None where the engine does not name it (SQLite)
    columns: list[str]


class ForeignKey(TypedDict):
    name: str | None
    columns: list[str]
    referred_table: str  # "schema.table" when in another schema
    referred_columns: list[str]


class Index(TypedDict):
    name: str | None
    columns: list[str]  # an expression index lists its expressions
    unique: bool


class TableShape(TypedDict):
    primary_key: Key | None
    foreign_keys: list[ForeignKey]
    unique: list[Key]
    indexes: list[Index]


Structure = dict[str, TableShape]  # table -> its keys and indexes

RESTORE = "restore"  # failpoints: ROLLWISE_FAILPOINT=restore:<one of RESTORE_POINTS>
RESTORE_POINTS = ("created", "loaded", "checked", "swapping", "swapped", "done")
BEFORE_SWAP = RESTORE_POINTS[:4]  # a kill there leaves the live database as it was
NOT_CHANGED = "the live database was not changed"
SWAP_WAIT_S = 60.0  # how long the swap waits for the live database's running transactions
SIDE = "_rollwise_"  # scratch names: <db>_rollwise_restore_<token>, <db>_rollwise_old_<token>
FILE_SIDE = ".rollwise_restore_"  # SQLite: <backups>/.rollwise_restore_<token>.db and .lock
TOOL_TIMEOUT_S = 6 * 3600
_FAILURES = (RollwiseError, SQLAlchemyError, sqlite3.Error, OSError, subprocess.SubprocessError)


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
    structure: Structure | None = None  # keys and indexes per table (None: an older manifest)
    checksum_kind: str | None = None  # how `tables` was checksummed (None: FIRST_CHECKSUM's)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Fields a newer rollwise added are ignored; fields an older one lacked default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- what a database holds ---------------------------------------------------------------------


@contextmanager
def _connected(url: str, **options: Any) -> Iterator[Connection]:
    engine = create_engine(url, **options)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _tables(conn: Connection) -> list[str]:
    return [t for t in sorted(inspect(conn).get_table_names()) if t != SCHEMA_TABLE]


# How a manifest's table checksums are computed. A manifest records its kind, and verify and
# restore compute the same kind on the restored copy; one without it predates the record and
# has its engine's first kind. A kind, once released, never changes its computation.
PG_ROW_HASH = "pg-row-hash-sum-1"  # sum of a 64-bit hash per row (PostgreSQL 11+)
PG_MD5 = "pg-md5-sorted"  # md5 of the sorted row md5s (before, and below PostgreSQL 11)
MYSQL_CHECKSUM = "mysql-checksum-table"
SQLITE_SHA256 = "sqlite-sha256-sorted"
FIRST_CHECKSUM = {"postgresql": PG_MD5, "mysql": MYSQL_CHECKSUM, "sqlite": SQLITE_SHA256}


def checksum_kind(conn: Connection) -> str:
    """The kind a new backup of this database records."""
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (11,):
        return PG_ROW_HASH
    return FIRST_CHECKSUM.get(conn.dialect.name, SQLITE_SHA256)


def snapshot(url: str, kind: str | None = None) -> Snapshot:
    """Row count and a content checksum of every table (rollwise's own table left out), of
    `kind` (default: the one a new backup records)."""
    with _connected(url) as conn:
        return _snapshot(conn, kind or checksum_kind(conn))


def _snapshot(conn: Connection, kind: str) -> Snapshot:
    table_sum = _CHECKSUMS[kind]
    return {t: table_sum(conn, t) for t in _tables(conn)}


def _pg_row_hash(conn: Connection, table: str) -> dict[str, Any]:
    """Rows and the sum of a hash of each row: free of row order, so the table is read once,
    in parallel where the server can, and nothing is sorted."""
    columns = [(str(c), t) for c, t in conn.execute(text(_PG_COLUMNS), {"t": _ident(table)})]
    n, total = conn.execute(_sql(pg_row_hash_sql(table, columns))).one()
    return {"rows": int(n), "checksum": str(total)}


# A column's hash, by its type's name in pg_catalog: the type's own hash where that tells any
# two different values apart (not a numeric's 1.0 and 1.00, a float's 0 and -0, an interval's
# '1 day' and '24 hours'), else the hash of its text, byte for byte (COLLATE "C"; also for a
# column of a case-insensitive collation). `seed` is the column's place, so equal values in
# two columns hash apart; reading a timestamptz in UTC keeps its exact value.
PG_COLUMN_HASH = {
    "bool": "hashint4extended(CAST({c} AS integer), {seed})",
    "int2": "hashint2extended({c}, {seed})",
    "int4": "hashint4extended({c}, {seed})",
    "int8": "hashint8extended({c}, {seed})",
    "oid": "hashoidextended({c}, {seed})",
    "uuid": "uuid_hash_extended({c}, {seed})",
    "time": "time_hash_extended({c}, {seed})",
    "timestamp": "timestamp_hash_extended({c}, {seed})",
    "timestamptz": "timestamp_hash_extended({c} AT TIME ZONE 'UTC', {seed})",
}
PG_TEXT_HASH = 'hashtextextended(CAST({c} AS text) COLLATE "C", {seed})'
_PG_COLUMNS = (
    "SELECT a.attname, CASE WHEN t.typnamespace = CAST('pg_catalog' AS regnamespace) THEN "
    "t.typname END FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


def pg_row_hash_sql(table: str, columns: Sequence[tuple[str, str | None]]) -> str:
    """The query of `PG_ROW_HASH` for `table`; `columns`: (name, type name if the type is
    in pg_catalog), in table order. A row's hash is its columns' hashes (NULL: 0) combined
    and hashed again, so that the sum over rows depends on which row holds which values."""
    hashes = [
        PG_COLUMN_HASH.get(t or "", PG_TEXT_HASH).format(c=f"t.{_ident(c)}", seed=i)
        for i, (c, t) in enumerate(columns, 1)
    ]
    row = " # ".join(f"coalesce({h}, 0)" for h in hashes) or "0"
    return f"SELECT count(*), coalesce(sum(hashint8extended({row}, 0)), 0) FROM {_ident(table)} t"


def _pg_md5(conn: Connection, table: str) -> dict[str, Any]:
    n, digest = conn.execute(
        _sql(
            f"SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY "
            f"md5(t::text))), '') FROM {_ident(table)} t"
        )
    ).one()
    return {"rows": int(n), "checksum": str(digest)}


def _mysql_checksum(conn: Connection, table: str) -> dict[str, Any]:
    q = _ident(table, "`")
    n = conn.execute(_sql(f"SELECT count(*) FROM {q}")).scalar_one()
    digest = conn.execute(_sql(f"CHECKSUM TABLE {q}")).one()[1]
    return {"rows": int(n), "checksum": str(digest)}


def _sqlite_sha256(conn: Connection, table: str) -> dict[str, Any]:
    rows = sorted(
        repr(tuple(str(v) for v in r)) for r in conn.execute(_sql(f"SELECT * FROM {_ident(table)}"))
    )
    return {"rows": len(rows), "checksum": hashlib.sha256("\n".join(rows).encode()).hexdigest()}


_CHECKSUMS: dict[str, Callable[[Connection, str], dict[str, Any]]] = {
    PG_ROW_HASH: _pg_row_hash,
    PG_MD5: _pg_md5,
    MYSQL_CHECKSUM: _mysql_checksum,
    SQLITE_SHA256: _sqlite_sha256,
}


def _row_counts(url: str) -> dict[str, int]:
    with _connected(url) as conn:
        q = conn.dialect.identifier_preparer.quote
        return {
            t: int(conn.execute(_sql(f"SELECT count(*) FROM {q(t)}")).scalar_one())
            for t in _tables(conn)
        }


def structure(url: str) -> Structure:
    """Each table's primary key, foreign keys, unique constraints and indexes, by name and
    columns (rollwise's own table left out)."""
    with _connected(url) as conn:
        return _structure(conn)


def _structure(conn: Connection) -> Structure:
    """Read for all tables at once (four catalog queries where the dialect can)."""
    insp = inspect(conn)
    pks, fks = insp.get_multi_pk_constraint(), insp.get_multi_foreign_keys()
    uniques, indexes = insp.get_multi_unique_constraints(), insp.get_multi_indexes()
    return {
        t: _shape(pks[None, t], fks[None, t], uniques[None, t], indexes[None, t])
        for t in _tables(conn)
    }


def _shape(
    pk: ReflectedPrimaryKeyConstraint,
    fks: list[ReflectedForeignKeyConstraint],
    uniques: list[ReflectedUniqueConstraint],
    indexes: list[ReflectedIndex],
) -> TableShape:
    return {
        "primary_key": {"name": pk.get("name"), "columns": list(pk["constrained_columns"])}
        if pk["constrained_columns"]
        else None,
        "foreign_keys": _sorted([_fk(fk) for fk in fks]),
        "unique": _sorted([_unique(u) for u in uniques]),
        "indexes": _sorted([_index(ix) for ix in indexes]),
    }


def _fk(fk: ReflectedForeignKeyConstraint) -> ForeignKey:
    schema = fk.get("referred_schema")
    return {
        "name": fk.get("name"),
        "columns": list(fk["constrained_columns"]),
        "referred_table": f"{schema}.{fk['referred_table']}" if schema else fk["referred_table"],
        "referred_columns": list(fk["referred_columns"]),
    }


def _unique(u: ReflectedUniqueConstraint) -> Key:
    return {"name": u.get("name"), "columns": list(u["column_names"])}


def _index(ix: ReflectedIndex) -> Index:
    columns = ix.get("expressions") or ix["column_names"]
    return {
        "name": ix.get("name"),
        "columns": [str(c) for c in columns],
        "unique": bool(ix["unique"]),
    }


T = TypeVar("T")


def _sorted(items: list[T]) -> list[T]:
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def has_data(url: str) -> bool:
    """False for a database that does not exist yet or has no table: nothing to back up."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and not Path(str(u.database)).is_file():
        return False
    with _connected(url) as conn:
        return bool(_tables(conn))


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


def diff_structure(expected: Structure, got: Structure) -> list[str]:
    """Keys and indexes that differ, for the tables both sides have (a table missing on one
    side is `diff`'s to report)."""
    out = []
    for t in sorted(set(expected) & set(got)):
        a, b = _described(expected[t]), _described(got[t])
        out += [f"table {t}: {x} missing in the restore" for x in sorted(a - b)]
        out += [f"table {t}: {x} not in the backup" for x in sorted(b - a)]
    return out


def _described(shape: TableShape) -> set[str]:
    def cols(c: list[str]) -> str:
        return f"({', '.join(c)})"

    pk = shape["primary_key"]
    out = {f"primary key {pk['name']} {cols(pk['columns'])}"} if pk else set()
    out |= {
        f"foreign key {fk['name']} {cols(fk['columns'])} -> {fk['referred_table']} "
        f"{cols(fk['referred_columns'])}"
        for fk in shape["foreign_keys"]
    }
    out |= {f"unique constraint {u['name']} {cols(u['columns'])}" for u in shape["unique"]}
    return out | {
        f"{'unique ' if ix['unique'] else ''}index {ix['name']} {cols(ix['columns'])}"
        for ix in shape["indexes"]
    }


def check(m: Manifest, url: str) -> list[str]:
    """How the database at `url` differs from the backup's manifest: tables, rows, content
    (checksummed as the manifest's were), and (manifests that record them) keys and indexes.
    Empty: the same."""
    kind = m.checksum_kind or FIRST_CHECKSUM.get(m.engine, "")
    if kind not in _CHECKSUMS:
        raise IntegrityError(
            f"backup {m.id}: its checksums are of a kind this rollwise does "
            f"not know ({kind or 'none'})",
            where=f"backup {m.id}",
            hint="verify it with the rollwise version that took it",
        )
    with _connected(url) as conn:
        problems = diff(m.tables, _snapshot(conn, kind))
        if m.structure is not None:
            problems += diff_structure(m.structure, _structure(conn))
    return problems


def loss(m: Manifest, url: str) -> dict[str, int]:
    """Rows a restore would lose, by table: rows now minus rows at backup time (> 0 only)."""
    now = _row_counts(url)
    return {
        t: now[t] - m.tables.get(t, {"rows": 0})["rows"]
        for t in now
        if now[t] > m.tables.get(t, {"rows": 0})["rows"]
    }


# -- files and tools ---------------------------------------------------------------------------


def _run(
    cmd: list[str], env: dict[str, str] | None = None, stdin: Any = None, stdout: Any = None
) -> None:
    with _running(cmd, env, stdin, stdout):
        pass


@contextmanager
def _running(
    cmd: list[str], env: dict[str, str] | None = None, stdin: Any = None, stdout: Any = None
) -> Iterator[None]:
    """`cmd` runs while the body does; then it is waited for, and its failure raised with
    its error output. A body that fails kills it."""
    p = subprocess.Popen(
        cmd, env=env, stdin=stdin, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield
        err = p.communicate(timeout=TOOL_TIMEOUT_S)[1]
    except BaseException:
        p.kill()
        p.communicate()
        raise
    if p.returncode != 0:
        raise RollwiseError(f"{cmd[0]} exited {p.returncode}:\n{_output(err)}", where=cmd[0])


def _output(raw: bytes, limit: int = 60) -> str:
    """A tool's error output, indented; the first `limit` lines (the first error is what
    matters: the tools stop at it)."""
    lines = raw.decode(errors="replace").rstrip().splitlines() or ["(no output)"]
    more = [f"... {len(lines) - limit} more line(s)"] if len(lines) > limit else []
    return "\n".join("  " + line for line in lines[:limit] + more)


def _pg_conn(u: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI for the tools, with the password in the environment, not in argv."""
    uri = u.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, {**os.environ, **({"PGPASSWORD": str(u.password)} if u.password else {})}


def _mysql_args(u: URL) -> tuple[list[str], dict[str, str]]:
    args = [
        f"--host={u.host or '127.0.0.1'}",
        f"--port={u.port or 3306}",
        f"--user={u.username or 'root'}",
    ]
    env = {**os.environ, "MYSQL_PWD": u.password or ""}
    return args, env


def _sqlite_open(
    path: Path, *, immutable: bool = False, wait_s: float = SWAP_WAIT_S
) -> sqlite3.Connection:
    """`immutable`: a file nobody writes (a dump, a scratch copy): no lock, no -wal or -shm
    files created beside it."""
    if immutable:
        return sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
    return sqlite3.connect(path, timeout=wait_s)


def _sqlite_copy(
    src: sqlite3.Connection, dest: Path, *, standalone: bool, wait_s: float = SWAP_WAIT_S
) -> None:
    """One backup-API pass of `src` into `dest`: a single write transaction there, which
    SQLite makes atomic (a crash rolls it back). It waits up to `wait_s` for another
    writer, then gives up. `standalone`: rollback-journal mode, so the file holds
    everything by itself."""
    deadline = time.monotonic() + wait_s

    def give_up_when_late(status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() >= deadline:
            raise RollwiseError(
                f"another connection kept {dest} locked for writing for {wait_s:g} s",
                where=str(dest),
            )

    with closing(_sqlite_open(dest, wait_s=wait_s)) as out:
        src.backup(out, progress=give_up_when_late)
        if standalone:
            out.execute("PRAGMA journal_mode=DELETE")


# -- backup ------------------------------------------------------------------------------------


def dump(url: str, dest: Path, *, pg_snapshot: str | None = None) -> None:
    """Dump the database at `url` into `dest` (mode 0600, its folder 0700); nothing is left
    behind on failure. `pg_snapshot`: an exported PostgreSQL snapshot to dump."""
    with _dumping(url, dest, pg_snapshot):
        pass


@contextmanager
def _dumping(url: str, dest: Path, pg_snapshot: str | None = None) -> Iterator[None]:
    """`dump` around the body: PostgreSQL's pg_dump runs while the body does, the other
    engines dump before it. Done when the body is; a failure of either removes the file."""
    u = make_url(url)
    private_dir(dest.parent)
    try:
        with open_private(dest) as f, _dump_into(u, dest, f, pg_snapshot):
            yield
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


@contextmanager
def _dump_into(u: URL, dest: Path, f: IO[bytes], pg_snapshot: str | None) -> Iterator[None]:
    if u.get_backend_name() == "postgresql":
        uri, env = _pg_conn(u)
        at = [f"--snapshot={pg_snapshot}"] if pg_snapshot else []
        with _running(["pg_dump", "--format=custom", "--no-owner", *at, uri], env=env, stdout=f):
            yield
    elif u.get_backend_name() == "sqlite":
        with closing(_sqlite_open(Path(str(u.database)))) as src:
            _sqlite_copy(src, dest, standalone=True)
        yield
    elif u.get_backend_name() == "mysql":
        args, env = _mysql_args(u)
        _run(
            [
                "mysqldump",
                *args,
                "--single-transaction",
                "--routines",
                "--triggers",
                str(u.database),
            ],
            env=env,
            stdout=f,
        )
        yield
    else:
        raise RollwiseError(
            f"no backup provider for {u.get_backend_name()}", where=redact(u.render_as_string())
        )


class Described(NamedTuple):
    """What a dump holds, as its manifest records it."""

    checksum_kind: str
    tables: Snapshot
    structure: Structure


def _describe(conn: Connection) -> Described:
    kind = checksum_kind(conn)
    return Described(kind, _snapshot(conn, kind), _structure(conn))


def create(
    url: str,
    folder: Path,
    env: str,
    reason: str,
    *,
    release: str | None = None,
    schema: list[str] | None = None,
) -> Manifest:
    """Dump, and record the file's sha256, the tables as the dump holds them and their keys
    and indexes; `release` and `schema` (applied migrations) when the caller knows them."""
    u = make_url(url)
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    ext = {"sqlite": "sqlite", "postgresql": "pgdump", "mysql": "sql"}.get(
        u.get_backend_name(), "dump"
    )
    dest = folder / f"{backup_id}.{ext}"
    d = _dump_described(url, dest)
    m = Manifest(
        backup_id,
        env,
        u.get_backend_name(),
        redact(url),
        dest.name,
        dest.stat().st_size,
        sha256_file(dest),
        time.time(),
        d.tables,
        reason,
        release,
        schema,
        d.structure,
        d.checksum_kind,
    )
    replace_private(folder / f"{backup_id}.json", json.dumps(m.as_dict(), indent=2).encode())
    return m


def _dump_described(url: str, dest: Path) -> Described:
    """Dump, and describe exactly what the dump holds while the app writes on."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return _pg_dump_described(url, dest)
    if backend == "mysql":
        return _mysql_dump_described(url, dest)
    dump(url, dest)
    with _connected(f"sqlite:///file:{dest.resolve()}?immutable=1&uri=true") as conn:
        return _describe(conn)


def _pg_dump_described(url: str, dest: Path) -> Described:
    """pg_dump dumps the snapshot this transaction exports while the transaction describes
    it: the manifest and the dump hold the same instant, and the description, read beside
    the dump rather than after it, adds little to its time where a core is free."""
    with _connected(url, isolation_level="REPEATABLE READ") as conn:
        exported = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        with _dumping(url, dest, pg_snapshot=exported):
            described = _describe(conn)
    return described


def _mysql_dump_described(url: str, dest: Path) -> Described:
    """mysqldump's snapshot cannot be shared: the tables are described before and after it;
    if the app wrote in between, the dump itself is loaded beside and described there."""
    before = _describe_at(url)
    dump(url, dest)
    if _describe_at(url) == before:
        return before
    with _opened(url, dest.parent) as st:
        try:
            st.create()
            st.load(dest)
            return _describe_at(st.scratch)
        finally:
            _quietly(st.drop)


def _describe_at(url: str) -> Described:
    with _connected(url) as conn:
        return _describe(conn)


def manifests(folder: Path) -> list[Manifest]:
    """Oldest first, by when each was taken: two taken within one second have ids that
    differ only in their random part, which says nothing of their order."""
    out = []
    for f in folder.glob("*.json") if folder.is_dir() else []:
        out.append(Manifest.from_dict(json.loads(f.read_text())))
    return sorted(out, key=lambda m: (m.created_at, m.id))


def get(folder: Path, backup_id: str) -> Manifest:
    for m in manifests(folder):
        if m.id == backup_id:
            return m
    known = ", ".join(m.id for m in manifests(folder)) or "none"
    raise RollwiseError(f"no backup {backup_id!r}", hint=f"backups: {known}")


# -- restore: stages, one per engine -----------------------------------------------------------


class _Stage(Protocol):
    """One restore beside the live database. `token` names its scratch database (and the
    previous copy after a swap) and is locked for the stage's life, so `sweep` drops only
    what restores that died left behind."""

    name: str  # the scratch database, for messages
    scratch: str  # its URL

    def sweep(self) -> None: ...
    def create(self) -> None: ...
    def load(self, path: Path) -> None: ...
    def refusals(self) -> list[str]: ...  # why the swap could not be atomic ([] if it can)
    def swap(self) -> None: ...
    def swapped(self) -> bool: ...  # after a failed swap: did it take effect?
    def drop(self) -> None: ...  # the scratch database and the previous copy
    def close(self) -> None: ...


def _side_name(live: str, kind: str, token: str, limit: int) -> str:
    """`<live>_rollwise_<kind>_<token>`, the live name shortened to fit the engine's limit."""
    return f"{_side_base(live, limit)}{SIDE}{kind}_{token}"


def _side_base(live: str, limit: int) -> str:
    """The live name cut to leave room for the suffix (the limits count bytes)."""
    room = limit - len(SIDE) - len("restore_") - 8
    return live.encode()[:room].decode(errors="ignore")


def _side_tokens(names: Sequence[str], live: str, limit: int) -> set[str]:
    prefix = re.escape(_side_base(live, limit) + SIDE)
    pattern = re.compile(prefix + r"(?:restore|old)_([0-9a-f]{8})")
    return {m.group(1) for n in names if (m := pattern.fullmatch(n))}


def _ident(name: str, quote: str = '"') -> str:
    return quote + name.replace(quote, quote * 2) + quote


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql(statement: str) -> TextClause:
    """A statement built from names and literals: colons are not bind parameters."""
    return text(statement.replace(":", r"\:"))


def _render(u: URL) -> str:
    return u.render_as_string(hide_password=False)


PG_NAME_MAX = 63
_PG_LOCK, _PG_TRY_LOCK, _PG_UNLOCK = (
    text(f"SELECT {fn}(CAST(:a AS integer), CAST(:b AS integer))")
    for fn in ("pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_unlock")
)


class _PgStage:
    """PostgreSQL: restore into a database of its own, then both renames in one transaction."""

    def __init__(self, url: str, folder: Path, token: str, wait_s: float) -> None:
        self.u, self.token, self.wait_s = make_url(url), token, wait_s
        self.live = str(self.u.database)
        self.new = _side_name(self.live, "restore", token, PG_NAME_MAX)
        self.old = _side_name(self.live, "old", token, PG_NAME_MAX)
        self.name, self.scratch = f"database {self.new}", _render(self.u.set(database=self.new))
        self.admin = create_engine(self.u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        self.conn = self.admin.connect()
        self.conn.execute(_PG_LOCK, _pg_key(token))

    def sweep(self) -> None:
        names = self.conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
        for token in _side_tokens(names, self.live, PG_NAME_MAX) - {self.token}:
            if self.conn.execute(_PG_TRY_LOCK, _pg_key(token)).scalar():
                self._drop(token)
                self.conn.execute(_PG_UNLOCK, _pg_key(token))

    def create(self) -> None:
        me = str(self.conn.execute(text("SELECT current_user")).scalar_one())
        for statement in pg_create_sql(_pg_database(self.conn, self.live), self.new, me):
            self.conn.execute(_sql(statement))

    def load(self, path: Path) -> None:
        uri, env = _pg_conn(self.u.set(database=self.new))
        _run(
            [
                "pg_restore",
                "--no-owner",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={uri}",
                str(path),
            ],
            env=env,
        )

    def refusals(self) -> list[str]:
        return []

    def swap(self) -> None:
        """PostgreSQL renames no database that has clients: they are disconnected, and the
        rename waits up to 5 s for them to go. One that reconnects in between makes the
        transaction fail as a whole; it is tried again."""
        retry.call(self._rename, attempts=3, on_error=_in_use)

    def _rename(self) -> None:
        engine = create_engine(self.admin.url)  # not autocommit: one transaction
        try:
            with engine.begin() as c:
                c.execute(_sql(f"SET LOCAL lock_timeout = '{max(1, round(self.wait_s * 1000))}ms'"))
                c.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": self.live},
                )
                if _pg_exists(c, self.live):
                    c.execute(
                        _sql(f"ALTER DATABASE {_ident(self.live)} RENAME TO {_ident(self.old)}")
                    )
                c.execute(_sql(f"ALTER DATABASE {_ident(self.new)} RENAME TO {_ident(self.live)}"))
        finally:
            engine.dispose()

    def swapped(self) -> bool:
        return not _pg_exists(self.conn, self.new)

    def drop(self) -> None:
        self._drop(self.token)

    def _drop(self, token: str) -> None:
        for kind in ("restore", "old"):
            name = _side_name(self.live, kind, token, PG_NAME_MAX)
            self.conn.execute(_sql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)"))

    def close(self) -> None:
        self.conn.close()  # ends the session: its advisory lock goes with it
        self.admin.dispose()


def _pg_key(token: str) -> dict[str, int]:
    """The advisory lock of a restore token: ("rest", token as a signed 32-bit number)."""
    return {"a": 0x72657374, "b": int(token, 16) - 2**31}


def _pg_exists(conn: Connection, name: str) -> bool:
    return (
        conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        is not None
    )


@dataclass(frozen=True)
class PgDatabase:
    """What a database carries outside its schema (pg_dump leaves it out without --create);
    copied onto the scratch database so that the swap keeps it."""

    encoding: str
    collate: str
    ctype: str
    icu_locale: str | None
    owner: str
    tablespace: str
    connection_limit: int
    comment: str | None
    acl: list[tuple[str, str, bool]] | None  # (privilege, role or PUBLIC, grantable); None: default
    settings: list[tuple[str | None, str]]  # (role or None for all, "name=value")


_PG_DATABASE = """SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba),
 t.spcname, shobj_description(d.oid, 'pg_database') FROM pg_database d
 JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = :n"""
_PG_ACL = """SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
 ELSE pg_get_userbyid(a.grantee) END, a.is_grantable
 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = :n ORDER BY 2, 1"""
_PG_SETTINGS = """SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
 c FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c
 WHERE d.datname = :n ORDER BY 1, 2"""
_PG_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
}


def _pg_database(conn: Connection, name: str) -> PgDatabase | None:
    row = conn.execute(text(_PG_DATABASE), {"n": name}).first()
    if row is None:
        return None
    d: dict[str, Any] = row[0]
    acl = [(str(p), str(r), bool(g)) for p, r, g in conn.execute(text(_PG_ACL), {"n": name})]
    settings = [(r, str(s)) for r, s in conn.execute(text(_PG_SETTINGS), {"n": name})]
    icu = d.get("daticulocale") or d.get("datlocale") if d.get("datlocprovider") == "i" else None
    return PgDatabase(
        row[1],
        d["datcollate"],
        d["datctype"],
        icu,
        row[2],
        row[3],
        int(d["datconnlimit"]),
        row[4],
        acl if d["datacl"] is not None else None,
        settings,
    )


def pg_create_sql(db: PgDatabase | None, name: str, me: str) -> list[str]:
    """The statements that create `name` empty and like `db` (from template0, as pg_dump's
    output expects); `me` is the role that runs them."""
    if db is None:
        return [f"CREATE DATABASE {_ident(name)} TEMPLATE template0"]
    create = (
        f"CREATE DATABASE {_ident(name)} TEMPLATE template0 ENCODING "
        f"{_literal(db.encoding)} LC_COLLATE {_literal(db.collate)} LC_CTYPE "
        f"{_literal(db.ctype)}"
    )
    create += f" LOCALE_PROVIDER icu ICU_LOCALE {_literal(db.icu_locale)}" if db.icu_locale else ""
    create += f" OWNER {_ident(db.owner)}" if db.owner != me else ""
    create += f" TABLESPACE {_ident(db.tablespace)}" if db.tablespace != "pg_default" else ""
    create += f" CONNECTION LIMIT {db.connection_limit}" if db.connection_limit != -1 else ""
    comment = (
        [f"COMMENT ON DATABASE {_ident(name)} IS {_literal(db.comment)}"]
        if db.comment is not None
        else []
    )
    return [
        create,
        *comment,
        *_pg_grants(db, name),
        *(_pg_setting(name, role, s) for role, s in db.settings),
    ]


def _pg_grants(db: PgDatabase, name: str) -> list[str]:
    if db.acl is None:
        return []
    on = f"ON DATABASE {_ident(name)}"
    out = [f"REVOKE ALL {on} FROM PUBLIC", f"REVOKE ALL {on} FROM {_ident(db.owner)}"]
    for privilege, role, grantable in db.acl:
        who = "PUBLIC" if role == "PUBLIC" else _ident(role)
        out.append(f"GRANT {privilege} {on} TO {who}{' WITH GRANT OPTION' if grantable else ''}")
    return out


def _pg_setting(name: str, role: str | None, setting: str) -> str:
    key, _, value = setting.partition("=")
    if key.lower() in _PG_LIST_SETTINGS:  # a list: each item its own literal, as pg_dump does
        rendered = ", ".join(_literal(v.strip().strip('"')) for v in value.split(","))
    else:
        rendered = _literal(value)
    target = f"ROLE {_ident(role)} IN DATABASE" if role else "DATABASE"
    return f"ALTER {target} {_ident(name)} SET {_ident(key)} = {rendered}"


MYSQL_NAME_MAX = 64


class _MySqlStage:
    """MySQL/MariaDB (no RENAME DATABASE): restore into a schema of its own, then one RENAME
    TABLE statement moves the live tables into `<db>_rollwise_old_<token>` and the restored
    ones in; the server applies it whole or not at all."""

    def __init__(self, url: str, folder: Path, token: str, wait_s: float) -> None:
        self.u, self.token, self.wait_s = make_url(url), token, wait_s
        self.live = str(self.u.database)
        self.new = _side_name(self.live, "restore", token, MYSQL_NAME_MAX)
        self.old = _side_name(self.live, "old", token, MYSQL_NAME_MAX)
        self.name, self.scratch = f"schema {self.new}", _render(self.u.set(database=self.new))
        self.admin = create_engine(self.u.set(database=None), isolation_level="AUTOCOMMIT")
        self.conn = self.admin.connect()
        self.conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": f"rollwise_restore_{token}"})

    def sweep(self) -> None:
        names = (
            self.conn.execute(text("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"))
            .scalars()
            .all()
        )
        for token in _side_tokens(names, self.live, MYSQL_NAME_MAX) - {self.token}:
            lock = {"n": f"rollwise_restore_{token}"}
            if self.conn.execute(text("SELECT GET_LOCK(:n, 0)"), lock).scalar() == 1:
                self._drop(token)
                self.conn.execute(text("SELECT RELEASE_LOCK(:n)"), lock)

    def create(self) -> None:
        self.conn.execute(_sql(self._create_sql(self.new, self.live)))

    def _create_sql(self, name: str, like: str) -> str:
        row = self.conn.execute(
            text(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
                "information_schema.SCHEMATA WHERE SCHEMA_NAME = :s"
            ),
            {"s": like},
        ).first()
        charset = f" CHARACTER SET {row[0]} COLLATE {row[1]}" if row else ""
        return f"CREATE DATABASE IF NOT EXISTS {_ident(name, '`')}{charset}"

    def load(self, path: Path) -> None:
        args, env = _mysql_args(self.u)
        with path.open("rb") as f:
            _run(["mysql", *args, self.new], env=env, stdin=f)

    def refusals(self) -> list[str]:
        """RENAME TABLE moves no view and no table with triggers to another schema, and
        routines and events stay where they are."""
        backup, live = _mysql_objects(self.conn, self.new), _mysql_objects(self.conn, self.live)
        out = [
            f"{kind} {name} in the {where}"
            for where, objs in (("backup", backup), ("live database", live))
            for kind in ("view", "trigger")
            for name in sorted(objs[kind])
        ]
        for kind in ("routine", "event"):
            differ = {x.split(":", 1)[0] for x in backup[kind] ^ live[kind]}
            out += [
                f"{kind} {n}, which differs between the backup and the live database"
                for n in sorted(differ)
            ]
        return out

    def swap(self) -> None:
        self.conn.execute(_sql(self._create_sql(self.old, self.live)))
        self.conn.execute(_sql(self._create_sql(self.live, self.new)))
        moves = [(self.live, self.old, t) for t in _mysql_tables(self.conn, self.live)]
        moves += [(self.new, self.live, t) for t in _mysql_tables(self.conn, self.new)]
        if moves:
            self.conn.execute(
                text("SET SESSION lock_wait_timeout = :s"), {"s": max(1, round(self.wait_s))}
            )
            self.conn.execute(
                _sql(
                    "RENAME TABLE "
                    + ", ".join(
                        f"{_ident(a, '`')}.{_ident(t, '`')} TO {_ident(b, '`')}.{_ident(t, '`')}"
                        for a, b, t in moves
                    )
                )
            )

    def swapped(self) -> bool:
        return not _mysql_tables(self.conn, self.new)

    def drop(self) -> None:
        self._drop(self.token)

    def _drop(self, token: str) -> None:
        for kind in ("restore", "old"):
            name = _side_name(self.live, kind, token, MYSQL_NAME_MAX)
            self.conn.execute(_sql(f"DROP DATABASE IF EXISTS {_ident(name, '`')}"))

    def close(self) -> None:
        self.conn.close()  # ends the session: its GET_LOCK goes with it
        self.admin.dispose()


def _mysql_tables(conn: Connection, schema: str) -> list[str]:
    return list(
        conn.execute(
            text(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = :s AND "
                "TABLE_TYPE IN ('BASE TABLE', 'SEQUENCE') ORDER BY TABLE_NAME"
            ),
            {"s": schema},
        ).scalars()
    )


_MYSQL_OBJECTS = {
    "view": "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = :s",
    "trigger": "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = :s",
    "routine": "SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME, ':', COALESCE(ROUTINE_DEFINITION, "
    "'')) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = :s",
    "event": "SELECT CONCAT(EVENT_NAME, ':', EVENT_DEFINITION) FROM information_schema.EVENTS "
    "WHERE EVENT_SCHEMA = :s",
}


def _mysql_objects(conn: Connection, schema: str) -> dict[str, set[str]]:
    return {
        kind: set(conn.execute(text(q), {"s": schema}).scalars())
        for kind, q in _MYSQL_OBJECTS.items()
    }


class _SqliteStage:
    """SQLite: the backup is loaded into a scratch file in the backups folder and checked
    there; the swap is one backup-API pass of that file into the live one, a single write
    transaction (readers keep working; a crash rolls it back through SQLite's journal)."""

    def __init__(self, url: str, folder: Path, token: str, wait_s: float) -> None:
        self.live, self.folder, self.token = Path(str(make_url(url).database)), folder, token
        self.wait_s = wait_s
        self.path = folder / f"{FILE_SIDE}{token}.db"
        self.name, self.scratch = f"file {self.path}", f"sqlite:///{self.path}"
        private_dir(folder)
        self.fd = _locked_file(folder / f"{FILE_SIDE}{token}.lock")

    def sweep(self) -> None:
        names = [p.name for p in self.folder.iterdir()]
        for token in _file_tokens(names) - {self.token}:
            lock = self.folder / f"{FILE_SIDE}{token}.lock"
            fd = _try_flock(lock) if lock.exists() else -1
            if fd is not None:  # its restore is gone
                _unlink_sqlite(self.folder / f"{FILE_SIDE}{token}.db")
                lock.unlink(missing_ok=True)
                if fd >= 0:
                    os.close(fd)

    def create(self) -> None:
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def load(self, path: Path) -> None:
        try:
            with closing(_sqlite_open(path, immutable=True)) as src:
                _sqlite_copy(src, self.path, standalone=True)
        except sqlite3.Error as e:
            raise RollwiseError(f"sqlite3: {e}", where=str(path)) from None

    def refusals(self) -> list[str]:
        return []

    def swap(self) -> None:
        with closing(_sqlite_open(self.path, immutable=True)) as src:
            _sqlite_copy(src, self.live, standalone=False, wait_s=self.wait_s)

    def swapped(self) -> bool:
        return False  # the pass is one transaction: an error rolled it back

    def drop(self) -> None:
        _unlink_sqlite(self.path)

    def close(self) -> None:
        (self.folder / f"{FILE_SIDE}{self.token}.lock").unlink(missing_ok=True)
        os.close(self.fd)


def _file_tokens(names: Sequence[str]) -> set[str]:
    pattern = re.compile(
        re.escape(FILE_SIDE) + r"([0-9a-f]{8})\.(?:db|lock)(?:-journal|-wal|-shm)?"
    )
    return {m.group(1) for n in names if (m := pattern.fullmatch(n))}


def _locked_file(path: Path) -> int:
    """A lock file that appears already locked: made under another name, locked, renamed."""
    tmp = path.with_name(f".lock-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(tmp, path)
    return fd


def _try_flock(path: Path) -> int | None:
    """The open, locked file; None if someone holds it."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


_STAGES: dict[str, Callable[[str, Path, str, float], _Stage]] = {
    "postgresql": _PgStage,
    "mysql": _MySqlStage,
    "sqlite": _SqliteStage,
}


# -- restore and verify ------------------------------------------------------------------------


@contextmanager
def _opened(url: str, folder: Path, wait_s: float = SWAP_WAIT_S) -> Iterator[_Stage]:
    """A stage for a new restore (its token locked), once what dead ones left is dropped."""
    backend = make_url(url).get_backend_name()
    if backend not in _STAGES:
        raise RollwiseError(f"no backup provider for {backend}", where=redact(url))
    st = _STAGES[backend](url, folder, uuid.uuid4().hex[:8], wait_s)
    try:
        _quietly(st.sweep)  # a leftover that cannot be dropped must not block a restore
        yield st
    finally:
        st.close()


def _intact(m: Manifest, folder: Path) -> Path:
    path = folder / m.file
    if not path.is_file():
        raise IntegrityError(f"backup {m.id}: file {m.file} is missing", where=str(path))
    actual, size = sha256_file(path), path.stat().st_size
    if actual != m.sha256 or size != m.size:
        raise IntegrityError(
            f"backup {m.id}: {m.file} is corrupted or truncated (sha256 "
            f"{actual[:12]}, manifest {m.sha256[:12]}; {size} of {m.size} "
            "bytes)",
            where=str(path),
            hint="do not rely on this backup; take a new one",
        )
    return path


def _prepare(st: _Stage, m: Manifest, path: Path) -> None:
    """Up to the swap, a restore and a verify do the same: load into an empty scratch
    database, compare it with the manifest, and ask whether the swap can be atomic."""
    st.create()
    failpoint(RESTORE, "created")
    try:
        st.load(path)
    except RollwiseError as e:
        raise IntegrityError(
            f"backup {m.id} does not restore (into the scratch {st.name}): {e.message}",
            where=str(path),
            hint="restore another backup (`rollwise backup list`)",
        ) from None
    failpoint(RESTORE, "loaded")
    if problems := check(m, st.scratch):
        raise IntegrityError(
            f"backup {m.id} restores to something else than was backed up: " + "; ".join(problems),
            where=str(path),
            hint="do not rely on this backup; restore another one",
        )
    if refused := st.refusals():
        raise RollwiseError(
            f"backup {m.id} cannot be swapped in at once: " + "; ".join(refused),
            where=str(path),
            hint="the engine cannot move these between schemas; with the app "
            f"stopped, load {path} by hand",
        )
    failpoint(RESTORE, "checked")


def verify(m: Manifest, folder: Path, url: str) -> dict[str, Any]:
    """The file is intact (sha256) and restores to what was backed up: what a restore does
    up to the swap (scratch database, same load, same checks), then the scratch is dropped."""
    path = _intact(m, folder)
    t0 = time.monotonic()
    with _opened(url, folder) as st:
        try:
            _prepare(st, m, path)
        finally:
            _quietly(st.drop)
    return {
        "id": m.id,
        "tables": len(m.tables),
        "rows": sum(t["rows"] for t in m.tables.values()),
        "structure": m.structure is not None,
        "restore_s": round(time.monotonic() - t0, 2),
    }


def restore(m: Manifest, folder: Path, url: str, *, wait_s: float = SWAP_WAIT_S) -> dict[str, Any]:
    """Put the database at `url` back as it was at the backup, all or nothing: loaded and
    checked beside it, then swapped in at once (waiting up to `wait_s` for transactions
    running on the live database). Any failure before the swap, or of the swap, leaves the
    live database as it was, and says so."""
    t0 = time.monotonic()
    with ExitStack() as stack:
        with _before_swap():
            _same_database(m, url)
            path = _intact(m, folder)
            st = stack.enter_context(_opened(url, folder, wait_s))
            _prepare_or_drop(st, m, path)
        failpoint(RESTORE, "swapping")
        t1 = time.monotonic()
        _swap(st, m)
        swap_s = time.monotonic() - t1
        failpoint(RESTORE, "swapped")
        leftover = _quietly(st.drop)
    failpoint(RESTORE, "done")
    return {
        "id": m.id,
        "tables": len(m.tables),
        "restore_s": round(time.monotonic() - t0, 2),
        "swap_s": round(swap_s, 3),
        "leftover": f"could not drop {st.name} or the previous copy ({leftover}); the "
        "next restore drops them"
        if leftover
        else None,
    }


def _same_database(m: Manifest, url: str) -> None:
    if m.database != redact(url):
        raise RollwiseError(
            f"backup {m.id} is of {m.database}, not of {redact(url)}",
            where=f"backup {m.id}",
            hint="restore it into the database it came from",
        )


@contextmanager
def _before_swap() -> Iterator[None]:
    """Errors raised before the swap say that the live database was not changed."""
    try:
        yield
    except RollwiseError as e:
        e.message = f"{e.message}\n{NOT_CHANGED}"
        raise
    except _FAILURES as e:
        raise RollwiseError(f"{_detail(e)}\n{NOT_CHANGED}", where="restore") from e


def _prepare_or_drop(st: _Stage, m: Manifest, path: Path) -> None:
    try:
        _prepare(st, m, path)
    except BaseException:
        _quietly(st.drop)
        raise


def _swap(st: _Stage, m: Manifest) -> None:
    """The one step that changes the live database."""
    try:
        st.swap()
    except _FAILURES as e:
        _failed_swap(st, m, e)


def _failed_swap(st: _Stage, m: Manifest, e: BaseException) -> NoReturn:
    where = f"restore of backup {m.id}"
    try:
        swapped = st.swapped()
    except _FAILURES as probe:
        raise RollwiseError(
            f"the swap failed, and whether it took effect is unknown (checking failed: "
            f"{_detail(probe)}): {_detail(e)}",
            where=where,
            hint=f"if the scratch {st.name} still exists, the live database was not changed; "
            "otherwise it holds the backup",
        ) from e
    if swapped:
        raise RollwiseError(
            f"the swap took effect (the live database holds the backup), then failed: {_detail(e)}",
            where=where,
            hint="the restore is done; the next restore drops what is left beside it",
        ) from e
    _quietly(st.drop)
    raise RollwiseError(
        f"the swap failed: {_detail(e)}\n{NOT_CHANGED}",
        where=where,
        hint="end what holds the live database (or wait for it), then restore again",
    ) from e


def _in_use(e: BaseException) -> bool:
    """PostgreSQL's "object in use": a client reconnected to a database being renamed."""
    return isinstance(e, DBAPIError) and getattr(e.orig, "sqlstate", None) == "55006"


def _detail(e: BaseException) -> str:
    return e.message if isinstance(e, RollwiseError) else f"{type(e).__name__}: {e}"


def _quietly(fn: Callable[[], None]) -> str:
    """Cleanup that must not hide what happened before it: its error as text ("" if none)."""
    try:
        fn()
    except _FAILURES as e:
        return _detail(e)
    return ""
