"""What a down migration is about to drop, counted for the rollback plan and kept before it
runs: the non-empty values of each dropped column (with the row's primary key) and the rows
of each dropped table, as JSON lines in `.rollwise/envs/<env>/parked/`. A fix-forward
release can put them back; the rollback never waits for a full backup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, Select, Table, func, inspect, select

from rollwise.data.sqlrunner import open_db

Dropped = list[tuple[str, str | None]]


def _query(conn: Connection, table: str, column: str | None) -> Select[Any] | None:
    """The rows holding what is dropped; None when the table or column is not there."""
    insp = inspect(conn)
    if not insp.has_table(table):
        return None
    t = Table(table, MetaData(), autoload_with=conn)
    if column is None:
        return select(t)
    if column not in t.c:
        return None
    keys = [t.c[c] for c in insp.get_pk_constraint(table)["constrained_columns"]]
    return select(*keys, t.c[column]).where(t.c[column].is_not(None))


def _name(table: str, column: str | None) -> str:
    return table if column is None else f"{table}.{column}"


@contextmanager
def _connect(url: str) -> Iterator[Connection]:
    engine = open_db(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def count(url: str, dropped: Dropped) -> dict[str, int]:
    """Values per dropped column, rows per dropped table."""
    out: dict[str, int] = {}
    with _connect(url) as conn:
        for table, column in dropped:
            q = _query(conn, table, column)
            if q is not None:
                sub = q.subquery()
                out[_name(table, column)] = int(
                    conn.execute(select(func.count()).select_from(sub)).scalar() or 0
                )
    return out


def park(url: str, dropped: Dropped, folder: Path, stamp: str) -> dict[str, dict[str, Any]]:
    """Write what is dropped to `<folder>/<stamp>-<table>[.<column>].jsonl`, a JSON object a
    line (dates and decimals as text); empty ones write no file."""
    out: dict[str, dict[str, Any]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    with _connect(url) as conn:
        for table, column in dropped:
            q = _query(conn, table, column)
            if q is None:
                continue
            path = folder / f"{stamp}-{_name(table, column)}.jsonl"
            rows = 0
            with path.open("w") as f:
                for row in conn.execution_options(yield_per=1000).execute(q).mappings():
                    f.write(json.dumps(dict(row), default=str) + "\n")
                    rows += 1
            if rows:
                out[_name(table, column)] = {"rows": rows, "file": str(path)}
            else:
                path.unlink()
    return out
