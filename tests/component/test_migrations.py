"""SQL-folder migrations against real SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from rollwise.data.migrations import down_path, scan, up_path
from rollwise.data.sqlrunner import MigrationFailed, SqlRunner, check_applied
from rollwise.errors import LockHeld, RollwiseError


def write(folder: Path, files: dict[str, str]) -> list:
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return scan(folder)


BASE = {
    "0001_orders.up.sql": "CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY, qty INTEGER);\n",
    "0001_orders.down.sql": "DROP TABLE orders;\n",
    "0002_channel.up.sql": "-- rollwise: expand\nALTER TABLE orders ADD COLUMN channel "
    "VARCHAR(20);\n",
    "0002_channel.down.sql": "ALTER TABLE orders DROP COLUMN channel;\n",
}


def columns(url: str, table: str = "orders") -> list[str]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return [c["name"] for c in insp.get_columns(table)] if insp.has_table(table) else []
    finally:
        engine.dispose()


def test_given_migrations_when_up_then_down_then_schema_follows_and_rows_stay(db_url, tmp_path):
    ms = write(tmp_path / "m", BASE)
    runner = SqlRunner(db_url)
    assert runner.upgrade(up_path(ms, set(), "0001")) == ["0001_orders.up.sql"]
    with runner.engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (id, qty) VALUES ('a', 1), ('b', 2)"))
    assert runner.upgrade(up_path(ms, {a.version for a in runner.applied()}, None)) == [
        "0002_channel.up.sql"
    ]
    assert columns(db_url) == ["id", "qty", "channel"]
    applied = {a.version for a in runner.applied()}
    assert runner.downgrade(down_path(ms, applied, "0001")) == ["0002_channel.down.sql"]
    assert columns(db_url) == ["id", "qty"]
    with runner.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 2
    assert [a.version for a in runner.applied()] == ["0001"]
    runner.engine.dispose()


def test_given_a_migration_failing_halfway_then_the_schema_is_as_before_or_named(db_url, tmp_path):
    ms = write(
        tmp_path / "m",
        {
            **BASE,
            "0003_bad.up.sql": "CREATE TABLE audit_log (id INTEGER);\n"
            "ALTER TABLE no_such_table ADD COLUMN x INTEGER;\n",
            "0003_bad.down.sql": "DROP TABLE audit_log;\n",
        },
    )
    runner = SqlRunner(db_url)
    runner.upgrade(up_path(ms, set(), "0001"))
    with pytest.raises(
        MigrationFailed, match=r"0003_bad.up.sql, statement 2 \(line 2\), failed"
    ) as e:
        runner.upgrade(up_path(ms, {"0001"}, None))
    applied = [a.version for a in runner.applied()]
    if runner.transactional_ddl:  # PostgreSQL, SQLite: the whole run undone
        assert applied == ["0001"] and columns(db_url, "audit_log") == []
        assert columns(db_url) == ["id", "qty"]
        assert "schema is as before" in (e.value.hint or "")
    else:  # MySQL committed 0002 and the first statement of 0003
        assert applied == ["0001", "0002"] and "committed" in (e.value.hint or "")
    runner.engine.dispose()


def test_given_an_applied_migration_edited_then_refused(db_url, tmp_path):
    ms = write(tmp_path / "m", BASE)
    runner = SqlRunner(db_url)
    runner.upgrade(up_path(ms, set(), None))
    edited = write(
        tmp_path / "m",
        {"0002_channel.up.sql": "ALTER TABLE orders ADD COLUMN channel VARCHAR(40);\n"},
    )
    with pytest.raises(MigrationFailed, match=r"0002_channel\.up\.sql was edited"):
        check_applied(runner.applied(), edited)
    check_applied(runner.applied(), ms)  # unchanged files pass
    runner.engine.dispose()


def test_given_another_migration_holds_the_lock_then_refused_and_nothing_changes(
    pg_url, mysql_url, tmp_path
):
    ms = write(tmp_path / "m", BASE)
    database = mysql_url.rsplit("/", 1)[1]
    for url, grab in (
        (pg_url, "SELECT pg_advisory_lock(1919904876)"),  # per database already
        (mysql_url, f"SELECT GET_LOCK('rollwise-migrations:{database}', 10)"),  # server-wide
    ):
        holder = create_engine(url)
        with holder.connect() as conn:
            assert conn.execute(text(grab)).scalar() in (1, "")  # it holds the lock now
            runner = SqlRunner(url, lock_timeout_s=0.5)
            with pytest.raises(LockHeld, match="another migration holds the lock"):
                runner.upgrade(up_path(ms, set(), None))
            assert columns(url) == []
        holder.dispose()
        runner.engine.dispose()


def test_given_an_unreachable_database_or_wrong_password_then_a_clear_error():
    for url in (
        "postgresql+psycopg://postgres@127.0.0.1:1/nope",
        "mysql+pymysql://root:wrong-password@127.0.0.1:3306/mysql",
    ):
        with pytest.raises(RollwiseError) as e:
            SqlRunner(url).applied()
        assert "wrong-password" not in str(e.value) and "database" in str(e.value)
        assert e.value.hint and "password" in e.value.hint


def test_given_sqlite_busy_in_another_transaction_then_the_migration_waits_its_turn(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    ms = write(tmp_path / "m", BASE)
    runner = SqlRunner(url)
    runner.applied()
    other = create_engine(url)
    conn = other.connect()
    conn.exec_driver_sql("BEGIN IMMEDIATE")

    def let_go() -> None:
        conn.rollback()
        conn.close()

    threading.Timer(0.5, let_go).start()
    assert runner.upgrade(up_path(ms, set(), None)) == ["0001_orders.up.sql", "0002_channel.up.sql"]
    other.dispose()
    runner.engine.dispose()
