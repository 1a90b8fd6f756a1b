"""Run a folder of SQL migrations against SQLite, PostgreSQL or MySQL/MariaDB.

Applied migrations are recorded in `rollwise_schema` (version, name, checksum, time). A run
holds a database lock for its whole length (PostgreSQL advisory lock, MySQL GET_LOCK, SQLite's
write lock) and, where the database allows DDL in a transaction (PostgreSQL, SQLite), applies
the whole path in one transaction: a failure leaves the schema as it was. MySQL commits each
DDL statement; a failure there names the statement, and the pre-deploy backup is the way back.
A PostgreSQL migration with a statement that cannot run in a transaction (CREATE INDEX
CONCURRENTLY) runs on its own, each statement committed as it goes.

Every statement waits at most `table_lock_timeout_s` for a table lock: while an ALTER TABLE
waits for one, the app's writes to that table queue behind it, so a migration that cannot get
its lock fails fast, naming itself, instead of stalling the live app.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError

from rollwise.data.migrations import Migration
from rollwise.data.sqlfile import Statement, statements
from rollwise.errors import ConfigError, LockHeld, RollwiseError

TABLE = "rollwise_schema"
LOCK_NAME = "rollwise-migrations"
LOCK_KEY = 0x726F6C6C  # "roll": the PostgreSQL advisory lock key
LOCK_TIMEOUT_STATES = ("55P03",)  # PostgreSQL lock_not_available
LOCK_TIMEOUT_ERRORS = (1205,)  # MySQL/MariaDB ER_LOCK_WAIT_TIMEOUT (row and metadata locks)
LOCK_HINT = (
    "a transaction or a long query of the app (or of a person) holds that table: "
    "find it (PostgreSQL: SELECT pid, xact_start, state, query FROM pg_stat_activity "
    "WHERE datname = current_database() ORDER BY xact_start; MySQL: SHOW "
    "PROCESSLIST), let it finish or end it, then deploy again; the app's writes "
    "waited at most migrations.table_lock_timeout_s, raise it only if they may wait "
    "longer"
)
DRIVERS = {
    "postgresql": "pip install 'rollwise[postgres]'",
    "mysql": "pip install 'rollwise[mysql]'",
}


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
        raise ConfigError(
            f"no database driver for {redact(url)}: {e}",
            hint=DRIVERS.get(url.split("+")[0].split(":")[0], ""),
        ) from None
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"database driver missing for {redact(url)}: {e}",
            hint=DRIVERS.get(url.split("+")[0].split(":")[0], ""),
        ) from None
    except Exception as e:
        raise ConfigError(
            f"database url {redact(url)} is malformed: {e}", where="database.url"
        ) from None
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
    table_lock_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        self.engine = open_db(self.url)
        settings = lock_timeout_settings(self.engine.dialect.name, self.table_lock_timeout_s)
        if settings:
            event.listen(
                self.engine, "connect", lambda dbapi_conn, _: _run_all(dbapi_conn, settings)
            )

    @property
    def transactional_ddl(self) -> bool:
        return self.engine.dialect.name in ("postgresql", "sqlite")

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as e:
            raise RollwiseError(
                f"database {redact(self.url)}: {_first_line(e)}",
                where="database.url",
                hint="check that the database runs, the host and port, the "
                "user name and the password (secret)",
            ) from None

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
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (version VARCHAR(32) PRIMARY "
                "KEY, name VARCHAR(200) NOT NULL, checksum VARCHAR(64) NOT NULL, "
                "applied_at FLOAT NOT NULL)"
            )
        )
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
        steps = [(m, statements(self._sql(m, up))) for m in path]
        plan = batches(
            [all(s.transaction for s in ss) for _, ss in steps], together=self.transactional_ddl
        )
        with self._connect() as conn, self._db_lock(conn):
            self._ensure_table(conn)
            for n, (in_transaction, group) in enumerate(plan):
                kept = kept_after_failure(self.transactional_ddl, in_transaction, n > 0)
                if in_transaction:
                    with conn.begin():
                        for i in group:
                            self._one(conn, *steps[i], up, kept)
                else:
                    self._outside_transaction(conn, *steps[group[0]], up, kept)
        return [m.file if up else m.down_file for m in path]

    @staticmethod
    def _sql(m: Migration, up: bool) -> str:
        sql = m.up if up else m.down
        if sql is None:
            raise MigrationFailed(
                f"{m.file} is irreversible: it has no down step",
                hint="restore the backup taken before it was applied",
            )
        return sql

    def _outside_transaction(
        self, conn: Connection, m: Migration, ss: list[Statement], up: bool, kept: str
    ) -> None:
        conn.commit()
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._one(auto, m, ss, up, kept)
            auto.commit()
        finally:
            conn.rollback()
            conn.execution_options(isolation_level=conn.default_isolation_level)

    def _one(
        self, conn: Connection, m: Migration, ss: list[Statement], up: bool, kept: str
    ) -> None:
        file = m.file if up else m.down_file
        for n, s in enumerate(ss, 1):
            try:
                conn.exec_driver_sql(s.sql)
            except DBAPIError as e:
                raise self._failed(
                    e, f"{file}, statement {n} (line {s.line})", s, kept, where=f"{file}:{s.line}"
                ) from None
        if up:
            conn.execute(
                text(
                    f"INSERT INTO {TABLE} (version, name, checksum, applied_at) "
                    "VALUES (:v, :n, :c, :t)"
                ),
                {"v": m.version, "n": m.name, "c": m.checksum, "t": time.time()},
            )
        else:
            conn.execute(text(f"DELETE FROM {TABLE} WHERE version = :v"), {"v": m.version})

    def _failed(
        self, e: DBAPIError, what: str, s: Statement, kept: str, where: str
    ) -> MigrationFailed:
        if not lock_timed_out(e):
            return MigrationFailed(f"{what}, failed: {_first_line(e)}", where=where, hint=kept)
        return MigrationFailed(
            f"{what} waited {self.table_lock_timeout_s:g} s for a lock on a table that another "
            f"session holds, and was stopped so that the app's writes do not queue behind it: "
            f"{_head(s.sql)}",
            where=where,
            hint=f"{kept}. {LOCK_HINT}",
        )

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
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": mysql_lock(conn)}).scalar()
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
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": mysql_lock(conn)})
        conn.commit()


def mysql_lock(conn: Connection) -> str:
    """MySQL's lock names are server-wide: the migration lock names its database, so the
    databases of two apps on one server migrate independently (at most 64 characters)."""
    database = str(conn.engine.url.database or "")
    name = f"{LOCK_NAME}:{database}"
    return (
        name
        if len(name) <= 64
        else f"{LOCK_NAME}:{hashlib.sha256(database.encode()).hexdigest()[:40]}"
    )


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
    return LockHeld(
        f"another migration holds the lock of {redact(url)}",
        where="database",
        hint="wait for it to finish, then deploy again; nothing was changed",
    )


def check_applied(applied: list[Applied], migrations: list[Migration]) -> None:
    """Refuse when a migration already applied was edited since (its checksum differs)."""
    by_version = {int(m.version): m for m in migrations}
    for a in applied:
        m = by_version.get(int(a.version))
        if m is not None and m.checksum != a.checksum:
            raise MigrationFailed(
                f"{m.file} was edited after it was applied (checksum {a.checksum[:12]} in the "
                f"database, {m.checksum[:12]} in the release)",
                where=m.file,
                hint="never edit an applied migration: undo the edit and add a new migration",
            )


def lock_timeout_settings(dialect: str, seconds: float) -> list[str]:
    """The session settings that bound each statement's wait for a table lock."""
    if dialect == "postgresql":
        return [f"SET lock_timeout = '{max(1, round(seconds * 1000))}ms'"]
    if dialect in ("mysql", "mariadb"):  # whole seconds; the metadata and the row locks
        n = max(1, math.ceil(seconds))
        return [
            f"SET SESSION lock_wait_timeout = {n}",
            f"SET SESSION innodb_lock_wait_timeout = {n}",
        ]
    return []  # SQLite: busy_timeout (open_db)


def _run_all(dbapi_conn: Any, sqls: list[str]) -> None:
    cursor = dbapi_conn.cursor()
    for sql in sqls:
        cursor.execute(sql)
    cursor.close()
    dbapi_conn.commit()  # PostgreSQL: a SET in a transaction that is rolled back is undone


def batches(transactional: list[bool], together: bool) -> list[tuple[bool, list[int]]]:
    """A run cut into transactions: (in a transaction, indexes of its migrations), given
    whether each migration may run in one. `together` (PostgreSQL, SQLite): one transaction
    for the whole run, except that a migration that may not runs alone, outside any; else
    (MySQL, which commits DDL at once) one per migration."""
    out: list[tuple[bool, list[int]]] = []
    for i, ok in enumerate(transactional):
        if ok and together and out and out[-1][0]:
            out[-1][1].append(i)
        else:
            out.append((ok, [i]))
    return out


def kept_after_failure(transactional_ddl: bool, in_transaction: bool, committed: bool) -> str:
    """What a failure leaves of the run, for the error's hint."""
    before = (
        "the migrations before it in this run are applied (one of them ran outside a transaction); "
        if committed
        else ""
    )
    if not in_transaction:
        return (
            f"{before}it runs outside a transaction (CONCURRENTLY): its statements before "
            "this one are committed, and it is not recorded as applied; a failed CREATE "
            "INDEX CONCURRENTLY leaves an INVALID index: DROP INDEX CONCURRENTLY IF EXISTS "
            "it, then deploy again"
        )
    if not transactional_ddl:
        return (
            "statements before it are committed (MySQL commits DDL at once); restore the "
            "pre-deploy backup or finish by hand"
        )
    return (
        f"{before}this migration was undone"
        if committed
        else "nothing of this run was kept; the schema is as before"
    )


def lock_timed_out(e: DBAPIError) -> bool:
    """The statement gave up waiting for a lock (PostgreSQL lock_timeout, MySQL
    lock_wait_timeout or innodb_lock_wait_timeout)."""
    code = (getattr(e.orig, "args", None) or [None])[0]
    return getattr(e.orig, "sqlstate", None) in LOCK_TIMEOUT_STATES or code in LOCK_TIMEOUT_ERRORS


def _head(sql: str, width: int = 80) -> str:
    line = " ".join(sql.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _first_line(e: Exception) -> str:
    orig = getattr(e, "orig", None) or e
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
