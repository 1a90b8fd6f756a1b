"""The shop's database connection, shared by the app and its Alembic environment.

DATABASE_URL may come in any form a deploy tool hands out: `postgresql://`, `postgres://`,
`postgresql+psycopg://`, `mysql://`, `mariadb://`, `mysql+pymysql://`, `sqlite:///path`. The
shop always connects with the drivers it ships with (psycopg, PyMySQL, the stdlib sqlite3).
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event

DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite",
}


def sqlalchemy_url(url: str) -> str:
    """`url` with the driver the shop uses; the rest (user, host, database) as given."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+")[0].lower()
    if not sep or base not in DRIVERS:
        raise ValueError(
            f"DATABASE_URL: unsupported scheme {scheme!r}; expected one of "
            f"{', '.join(sorted(DRIVERS))}"
        )
    return f"{DRIVERS[base]}://{rest}"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    return sqlalchemy_url(url)


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def open_engine(url: str, **kw: Any) -> Engine:
    """An engine on `url` (any accepted form); SQLite waits for locks and enforces keys."""
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kw)
