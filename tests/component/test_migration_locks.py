"""SQL migrations on real PostgreSQL and MariaDB where the engine decides: a migration that
cannot get its table lock fails fast, naming itself, while the app's writes go on; bodies
with `;` run whole; CREATE INDEX CONCURRENTLY runs outside the run's transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from rollwise.data.migrations import Migration, scan, up_path
from rollwise.data.sqlrunner import MigrationFailed, SqlRunner

ORDERS = {
    "0001_orders.up.sql": "CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY, qty INTEGER);\n",
    "0001_orders.down.sql": "DROP TABLE orders;\n",
}
CHANNEL = {
    "0002_channel.up.sql": "-- rollwise: expand\nCREATE TABLE IF NOT EXISTS audit (id INTEGER);\n"
    "ALTER TABLE orders ADD COLUMN channel VARCHAR(20);\n",
    "0002_channel.down.sql": "ALTER TABLE orders DROP COLUMN channel;\nDROP TABLE audit;\n",
}
# what the engine's session shows while a statement waits for a table lock
WAITING = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
    "AND query LIKE 'ALTER TABLE orders%%'",
    "mysql": "SELECT count(*) FROM information_schema.processlist "
    "WHERE state LIKE 'Waiting for table metadata lock' AND info LIKE 'ALTER%%'",
}


def write(folder: Path, files: dict[str, str]) -> list[Migration]:
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return scan(folder)


@contextmanager
def reader_in_a_transaction(url: str) -> Iterator[Connection]:
    """The live app mid-transaction: it has read orders (PostgreSQL: a row lock; MariaDB: the
    table's metadata lock), so an ALTER TABLE orders must wait for it. It ends on its own
    after 8 s, so that a migration with no lock timeout fails the test instead of hanging."""
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT * FROM orders WHERE id = 'a' FOR UPDATE")).all()
        ends = threading.Timer(8, conn.rollback)
        ends.start()
        yield conn
        ends.cancel()
        conn.rollback()
    engine.dispose()


def writer_behind_the_migration(url: str, out: dict[str, float]) -> threading.Thread:
    """The live app's next write, sent once the migration waits for its lock: it queues
    behind the migration's lock request; `out` gets how long it took."""

    def run() -> None:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            deadline = time.monotonic() + 5
            while not conn.execute(text(WAITING[engine.dialect.name])).scalar():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            start = time.monotonic()
            conn.execute(text("INSERT INTO orders (id, qty) VALUES ('live', 3)"))
            out["write_s"] = time.monotonic() - start
        engine.dispose()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def applied_and_rows(runner: SqlRunner) -> tuple[list[str], int]:
    with runner.engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM orders")).scalar()
    return [a.version for a in runner.applied()], int(rows or 0)


def has_table(runner: SqlRunner, name: str) -> bool:
    from sqlalchemy import inspect

    return inspect(runner.engine).has_table(name)


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_given_the_app_holds_a_table_when_a_migration_needs_it_then_it_fails_fast_and_writes_go_on(
    engine, request, tmp_path
):
    url = str(request.getfixturevalue("pg_url" if engine == "postgresql" else "mysql_url"))
    ms = write(tmp_path / "m", {**ORDERS, **CHANNEL})
    runner = SqlRunner(url, table_lock_timeout_s=1)
    runner.upgrade(up_path(ms, set(), "0001"))
    with runner.engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (id, qty) VALUES ('a', 1), ('b', 2)"))

    timings: dict[str, float] = {}
    with reader_in_a_transaction(url):
        writer = writer_behind_the_migration(url, timings)
        start = time.monotonic()
        with pytest.raises(MigrationFailed) as e:
            runner.upgrade(up_path(ms, {"0001"}))
        waited = time.monotonic() - start
        writer.join(10)
        assert applied_and_rows(runner) == (["0001"], 3)  # nothing applied is damaged
        # PostgreSQL undid the whole migration; MariaDB had committed its CREATE TABLE
        assert has_table(runner, "audit") == (engine == "mariadb")

    assert e.value.message.startswith(
        "0002_channel.up.sql, statement 2 (line 3) waited 1 s for a lock on a table that "
        "another session holds"
    )
    assert "ALTER TABLE orders ADD COLUMN channel VARCHAR(20)" in e.value.message
    assert e.value.where == "0002_channel.up.sql:3"
    assert "pg_stat_activity" in (e.value.hint or "") and "SHOW PROCESSLIST" in (e.value.hint or "")
    assert waited < 4, "the migration gave up after its lock timeout, not later"
    assert 0.2 < timings["write_s"] < 3, (
        "the app's write queued behind the migration only until its lock timeout"
    )
    # once the app's transaction is over, the same migration goes through
    assert runner.upgrade(up_path(ms, {"0001"})) == ["0002_channel.up.sql"]
    assert applied_and_rows(runner) == (["0001", "0002"], 3)
    runner.engine.dispose()


def test_given_plpgsql_bodies_with_semicolons_then_postgresql_runs_them_whole(pg_url, tmp_path):
    ms = write(
        tmp_path / "m",
        {
            **ORDERS,
            "0002_stamp.up.sql": (
                "ALTER TABLE orders ADD COLUMN note TEXT;\n"
                "CREATE FUNCTION stamp() RETURNS trigger AS $$\nBEGIN\n"
                "  NEW.note := 'stamped; by trigger';  -- a comment; inside\n  RETURN NEW;\n"
                "END;\n$$ LANGUAGE plpgsql;\n"
                "CREATE TRIGGER orders_stamp BEFORE INSERT ON orders FOR EACH ROW "
                "EXECUTE FUNCTION stamp();\n"
            ),
            "0002_stamp.down.sql": "DROP TRIGGER orders_stamp ON orders;\nDROP FUNCTION stamp();\n"
            "ALTER TABLE orders DROP COLUMN note;\n",
        },
    )
    runner = SqlRunner(pg_url)
    runner.upgrade(up_path(ms, set()))
    with runner.engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (id, qty) VALUES ('a', 1)"))
        assert conn.execute(text("SELECT note FROM orders")).scalar() == "stamped; by trigger"
    runner.engine.dispose()


def test_given_a_procedure_with_begin_end_then_mariadb_runs_it_whole(mysql_url, tmp_path):
    ms = write(
        tmp_path / "m",
        {
            **ORDERS,
            "0002_bump.up.sql": (
                "CREATE PROCEDURE bump(IN n INT)\nBEGIN\n  UPDATE orders SET qty = qty + n;\n"
                "  INSERT INTO orders (id, qty) VALUES ('bumped; once', n);\nEND;\n"
            ),
            "0002_bump.down.sql": "DROP PROCEDURE bump;\n",
        },
    )
    runner = SqlRunner(mysql_url)
    runner.upgrade(up_path(ms, set()))
    with runner.engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (id, qty) VALUES ('a', 1)"))
        conn.execute(text("CALL bump(10)"))
        assert conn.execute(text("SELECT id, qty FROM orders ORDER BY id")).all() == [
            ("a", 11),
            ("bumped; once", 10),
        ]
    runner.engine.dispose()


def test_given_create_index_concurrently_then_it_runs_outside_the_transaction(pg_url, tmp_path):
    ms = write(
        tmp_path / "m",
        {
            **ORDERS,
            "0002_qty_index.up.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_qty "
            "ON orders (qty);\n",
            "0002_qty_index.down.sql": "DROP INDEX CONCURRENTLY IF EXISTS orders_qty;\n",
            "0003_bad.up.sql": "ALTER TABLE no_such_table ADD COLUMN x INTEGER;\n",
            "0003_bad.down.sql": "SELECT 1;\n",
        },
    )
    runner = SqlRunner(pg_url)
    with pytest.raises(MigrationFailed, match=r"0003_bad\.up\.sql, statement 1") as e:
        runner.upgrade(up_path(ms, set()))
    assert (e.value.hint or "").startswith("the migrations before it in this run are applied")
    assert [a.version for a in runner.applied()] == ["0001", "0002"]
    with runner.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_qty'::regclass")
            ).scalar()
            is True
        )
    assert runner.downgrade([ms[1]]) == ["0002_qty_index.down.sql"]
    assert [a.version for a in runner.applied()] == ["0001"]
    runner.engine.dispose()
