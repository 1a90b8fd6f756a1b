"""Engine creation and schema upgrade for rollwise's state store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError

from rollwise.errors import ConfigError, RollwiseError
from rollwise.store import HEAD, URL_ENV

MIGRATIONS = Path(__file__).with_name("migrations")


def default_url(state_dir: Path) -> str:
    return os.environ.get(URL_ENV) or f"sqlite:///{state_dir / 'state.db'}"


def open_engine(url: str) -> Engine:
    """An engine on `url` with rollwise's schema at head."""
    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError) as e:
        raise ConfigError(
            f"not a state store URL rollwise can open: {e}",
            where=URL_ENV,
            hint="use sqlite:///path/state.db, postgresql+psycopg://user@host/db "
            f"or mysql+pymysql://user@host/db (or unset {URL_ENV} to use "
            ".rollwise/state.db)",
        ) from None
    if url.startswith("sqlite"):
        _private_sqlite(make_url(url).database)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    try:
        _upgrade(engine)
    except OperationalError as e:
        raise RollwiseError(
            f"cannot open the state store: {e.orig}",
            where=_safe(url),
            hint=f"check {URL_ENV} (or unset it to use .rollwise/state.db)",
        ) from e
    return engine


def _private_sqlite(database: str | None) -> None:
    """The database file, created 0600 before SQLite opens it; it, its -wal and -shm (which
    SQLite creates with the database's mode) made 0600 when an older version left them
    wider."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    # only a missing file is created: closing any descriptor of an open database drops this
    # process's SQLite locks on it (POSIX), which long-running processes (webhook) still hold
    if not os.path.exists(database):
        with contextlib.suppress(OSError):  # SQLite says what is wrong, with the hint below
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for path in (database, f"{database}-wal", f"{database}-shm"):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _upgrade(engine: Engine) -> None:
    """Bring the store to HEAD. A store already there is read with one query, without
    loading Alembic (every command opens the store)."""
    with engine.connect() as conn:
        try:
            at = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except (OperationalError, ProgrammingError):  # a new store: no table yet
            at = []
    if at == [HEAD]:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _safe(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"
