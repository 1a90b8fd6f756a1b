"""Scratch databases on the machine's real PostgreSQL and MariaDB, and SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import require

PG = os.environ.get("ROLLWISE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
MYSQL = os.environ.get("ROLLWISE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")


def scratch(base: str, admin_db: str, drop: str, what: str, how: str) -> Iterator[str]:
    admin = create_engine(f"{base}/{admin_db}", isolation_level="AUTOCOMMIT")
    name = f"rollwise_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except OperationalError:
        require(False, what, how)
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(drop.format(name=name)))
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from scratch(
        PG,
        "postgres",
        "DROP DATABASE {name} WITH (FORCE)",
        "PostgreSQL on 127.0.0.1:5432",
        "start it, or set ROLLWISE_TEST_PG=postgresql+psycopg://user@host:port",
    )


@pytest.fixture
def mysql_url() -> Iterator[str]:
    yield from scratch(
        MYSQL,
        "mysql",
        "DROP DATABASE {name}",
        "MariaDB on 127.0.0.1:3306",
        "start it (start-stop-daemon --start --background --exec "
        "/usr/sbin/mariadbd), or set ROLLWISE_TEST_MYSQL=mysql+pymysql://...",
    )


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))
