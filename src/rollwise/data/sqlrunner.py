"""Run a folder of SQL migrations against SQLite, PostgreSQL or MySQL/MariaDB.

Applied migrations are recorded in `rollwise_schema` (version, name, checksum, time). A run
holds a database lock for its whole length (PostgreSQL advisory lock, MySQL GET_LOCK, SQLite's
write lock) and, where the database allows DDL in a transaction (PostgreSQL, SQLite), applies
the whole path in one transaction: a failure leaves the schema as it was. MySQL commits each
DDL statement; a failure there names the statement, and the pre-deploy backup is the way back.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError

from rollwise.data.migrations import Migration, statements
from rollwise.errors import ConfigError, LockHeld, RollwiseError

TABLE = "rollwise_schema"
LOCK_NAME = "rollwise-migrations"
LOCK_KEY = 0x726F6C6C  # "roll": the PostgreSQL advisory lock key
DRIVERS = {"postgresql": "pip install 'rollwise[postgres]'",
           "mysql": "pip install 'rollwise[mysql]'"}


class MigrationFailed(RollwiseError):
    pass


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<malformed url>"


def open_db(url: str) -> Engine:
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as e:
        raise ConfigError(f"no database driver for {redact(url)}: {e}",
                          hint=DRIVERS.get(url.split("+")[0].split(":")[0], "")) from None
    except ModuleNotFoundError as e:
        raise ConfigError(f"database driver missing for {redact(url)}: {e}",
                          hint=DRIVERS.get(url.split("+")[0].split(":")[0], "")) from None
    except Exception as e:
        raise ConfigError(f"database url {redact(url)} is malformed: {e}",
                          where="database.url") from None
    if engine.dialect.name == "sqlite":  # real transactions around DDL (pysqlite otherwise
        @event.listens_for(engine, "connect")  # autocommits before the first DML statement)
        def _connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA busy_timeout = 5000")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


@dataclass(frozen=True)
class Applied:
    version: str
    name: str
    checksum: str
    applied_at: float


@dataclass
class SqlRunner:
    url: str
    lock_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self.engine = open_db(self.url)

    @property
    def transactional_ddl(self) -> bool:
        return self.engine.dialect.name in ("postgresql", "sqlite")

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as e:
            raise RollwiseError(f"database {redact(self.url)}: {_first_line(e)}",
                                where="database.url",
                                hint="check that the database runs, the host and port, the "
                                "user name and the password (secret)") from None

    def applied(self) -> list[Applied]:
        with self._connect() as conn:
            return self._applied(conn)

    def _applied(self, conn: Connection) -> list[Applied]:
        self._ensure_table(conn)
        rows = conn.execute(text(f"SELECT version, name, checksum, applied_at FROM {TABLE}"))
        out = [Applied(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]
        conn.commit()
        return sorted(out, key=lambda a: int(a.version))

    def _ensure_table(self, conn: Connection) -> None:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (version VARCHAR(32) PRIMARY "
                          "KEY, name VARCHAR(200) NOT NULL, checksum VARCHAR(64) NOT NULL, "
                          "applied_at FLOAT NOT NULL)"))
        conn.commit()

    def applied_versions(self, ms: list[Migration]) -> set[str]:
        return {a.version for a in self.applied()}

    def verified_applied(self, ms: list[Migration], recorded: dict[str, str]) -> set[str]:
        """The applied versions, once none of them was edited (checksums in the database)."""
        applied = self.applied()
        check_applied(applied, ms)
        return {a.version for a in applied}

    def upgrade(self, path: list[Migration]) -> list[str]:
        return self._run(path, up=True)

    def downgrade(self, path: list[Migration], target: str | None = None) -> list[str]:
        return self._run(path, up=False)

    def preview(self, path: list[Migration], target: str | None) -> list[str]:
        rows = []
        for m in path:
            rows += [f"-- {m.down_file}", *(m.down or "").strip().splitlines()]
        return rows

    @contextmanager
    def _db_lock(self, conn: Connection) -> Iterator[None]:
        if self.engine.dialect.name == "sqlite":  # BEGIN IMMEDIATE takes the write lock
            yield
            return
        with db_lock(conn, self.url, self.lock_timeout_s):
            yield

    def _run(self, path: list[Migration], *, up: bool) -> list[str]:
        if not path:
            return []
        with self._connect() as conn, self._db_lock(conn):
            self._ensure_table(conn)
            if self.transactional_ddl:
                with conn.begin():
                    for m in path:
                        self._one(conn, m, up)
            else:
                for m in path:
                    with conn.begin():
                        self._one(conn, m, up)
        return [m.file if up else m.down_file for m in path]

    def _one(self, conn: Connection, m: Migration, up: bool) -> None:
        sql = m.up if up else m.down
        if sql is None:
            raise MigrationFailed(f"{m.file} is irreversible: it has no down step",
                                  hint="restore the backup taken before it was applied")
        for n, stmt in enumerate(statements(sql), 1):
            try:
                conn.exec_driver_sql(stmt)
            except DBAPIError as e:
                file = m.file if up else m.down_file
                state = ("nothing of this run was kept; the schema is as before"
                         if self.transactional_ddl else
                         "statements before it are committed (MySQL commits DDL at once); "
                         "restore the pre-deploy backup or finish by hand")
                raise MigrationFailed(f"{file}, statement {n}, failed: {_first_line(e)}",
                                      where=f"{file} statement {n}", hint=state) from None
        if up:
            conn.execute(text(f"INSERT INTO {TABLE} (version, name, checksum, applied_at) "
                              "VALUES (:v, :n, :c, :t)"),
                         {"v": m.version, "n": m.name, "c": m.checksum, "t": time.time()})
        else:
            conn.execute(text(f"DELETE FROM {TABLE} WHERE version = :v"), {"v": m.version})

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def locked(engine: Engine, url: str, timeout_s: float) -> Iterator[None]:
    """`db_lock` held on a connection of its own for the block (a migration tool runs
    beside it on its own connections)."""
    with engine.connect() as conn, db_lock(conn, url, timeout_s):
        yield


@contextmanager
def db_lock(conn: Connection, url: str, timeout_s: float) -> Iterator[None]:
    """One migration run per database at a time; a second one is refused after `timeout_s`,
    not queued behind a half-finished schema. PostgreSQL: an advisory lock; MySQL: GET_LOCK;
    SQLite: a lock file beside the database."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        with _file_lock(conn.engine.url.database, url, timeout_s):
            yield
        return
    deadline = time.monotonic() + timeout_s
    while True:
        if dialect == "postgresql":
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
        else:
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": LOCK_NAME}).scalar()
        conn.commit()
        if got:
            break
        if time.monotonic() > deadline:
            raise _held(url)
        time.sleep(0.2)
    try:
        yield
    finally:
        if dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        else:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": LOCK_NAME})
        conn.commit()


@contextmanager
def _file_lock(database: str | None, url: str, timeout_s: float) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.rollwise-lock", "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _held(url) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _held(url: str) -> LockHeld:
    return LockHeld(f"another migration holds the lock of {redact(url)}", where="database",
                    hint="wait for it to finish, then deploy again; nothing was changed")


def check_applied(applied: list[Applied], migrations: list[Migration]) -> None:
    """Refuse when a migration already applied was edited since (its checksum differs)."""
    by_version = {int(m.version): m for m in migrations}
    for a in applied:
        m = by_version.get(int(a.version))
        if m is not None and m.checksum != a.checksum:
            raise MigrationFailed(
                f"{m.file} was edited after it was applied (checksum {a.checksum[:12]} in the "
                f"database, {m.checksum[:12]} in the release)", where=m.file,
                hint="never edit an applied migration: undo the edit and add a new migration")


def _first_line(e: Exception) -> str:
    orig = getattr(e, "orig", None) or e
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
