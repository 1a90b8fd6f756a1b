"""Backups on real SQLite, PostgreSQL (pg_dump) and MariaDB (mysqldump): verified by
restoring them into a scratch database."""

from __future__ import annotations

import dataclasses
import os

import pytest
from sqlalchemy import create_engine, text

from rollwise.data import backups
from rollwise.errors import IntegrityError, RollwiseError


def fill(url: str, n: int, start: int = 0) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE IF NOT EXISTS orders (id VARCHAR(40) PRIMARY KEY, qty INTEGER)")
        )
        conn.execute(text("CREATE TABLE IF NOT EXISTS skus (sku VARCHAR(40) PRIMARY KEY)"))
        for i in range(start, start + n):
            conn.execute(
                text("INSERT INTO orders (id, qty) VALUES (:i, :q)"), {"i": f"o{i}", "q": i}
            )
        conn.execute(text("INSERT INTO skus (sku) VALUES (:s)"), {"s": f"s{start}"})
    engine.dispose()


def test_given_a_backup_then_it_verifies_by_restoring_and_detects_damage(db_url, tmp_path):
    fill(db_url, 50)
    folder = tmp_path / "backups"
    m = backups.create(db_url, folder, "prod", "before deploy 1.1.0")
    assert m.tables["orders"]["rows"] == 50 and m.size > 0
    assert backups.verify(m, folder, db_url)["rows"] == 51
    assert [x.id for x in backups.manifests(folder)] == [m.id]

    lying = dataclasses.replace(
        m, tables={**m.tables, "orders": {**m.tables["orders"], "rows": 49}}
    )
    with pytest.raises(IntegrityError, match="50 restored"):
        backups.verify(lying, folder, db_url)

    path = folder / m.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupted or truncated"):
        backups.verify(m, folder, db_url)
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(IntegrityError, match="corrupted or truncated"):
        backups.verify(m, folder, db_url)


def test_given_rows_written_since_then_restore_names_the_loss_and_brings_the_backup_back(
    db_url, tmp_path
):
    fill(db_url, 10)
    folder = tmp_path / "backups"
    m = backups.create(db_url, folder, "prod", "manual")
    fill(db_url, 5, start=100)
    assert backups.loss(m, db_url) == {"orders": 5, "skus": 1}
    backups.restore(m, folder, db_url)
    assert backups.snapshot(db_url) == m.tables


def test_a_backup_is_not_restored_into_another_database(db_url, tmp_path):
    fill(db_url, 3)
    folder = tmp_path / "backups"
    m = backups.create(db_url, folder, "prod", "manual")
    other = dataclasses.replace(m, database="sqlite:////elsewhere/app.db")
    with pytest.raises(RollwiseError, match="not of"):
        backups.restore(other, folder, db_url)
    assert backups.snapshot(db_url) == m.tables


def test_the_postgresql_row_hash_hashes_exact_types_as_they_are_and_others_as_text():
    assert backups.pg_row_hash_sql(
        'odd "t"', [("id", "text"), ("qty", "int4"), ("at", "timestamptz"), ("j", None)]
    ) == (
        "SELECT count(*), coalesce(sum(hashint8extended("
        'coalesce(hashtextextended(CAST(t."id" AS text) COLLATE "C", 1), 0) # '
        'coalesce(hashint4extended(t."qty", 2), 0) # '
        "coalesce(timestamp_hash_extended(t.\"at\" AT TIME ZONE 'UTC', 3), 0) # "
        'coalesce(hashtextextended(CAST(t."j" AS text) COLLATE "C", 4), 0), 0)), 0) '
        'FROM "odd ""t""" t'
    )
    assert backups.pg_row_hash_sql("empty", []) == (
        'SELECT count(*), coalesce(sum(hashint8extended(0, 0)), 0) FROM "empty" t'
    )


@pytest.mark.service
def test_given_postgresql_values_that_compare_equal_but_differ_then_the_checksum_tells_them_apart(
    pg_url, tmp_path
):
    """The row hash is exact where the types' own hashes are not (1.0 and 1.00, 0 and -0,
    json spacing, a case-insensitive collation), sees values trade places between columns,
    and still verifies an enum (another type object in the restored copy) and a table with a
    dropped column (the restored copy has none)."""
    run = [
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
        "CREATE TABLE odd (name TEXT COLLATE ci, n NUMERIC, f FLOAT8, j JSON, m mood, "
        "d INTERVAL, b BYTEA)",
        "CREATE TABLE exact (a BOOL, gone INT, x INT4, y INT4, big INT8, u UUID, t TIME, "
        "ts TIMESTAMP, tz TIMESTAMPTZ, day DATE)",
        "ALTER TABLE exact DROP COLUMN gone",
        "CREATE TABLE no_columns ()",
        "INSERT INTO no_columns DEFAULT VALUES",
        "INSERT INTO odd VALUES ('Abc', 1.0, 0, '{\"a\": 1}', 'ok', '1 day', NULL), "
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO exact VALUES (true, 1, 2, 3, gen_random_uuid(), '10\\:00', "
        "'2026-01-01', '2026-01-01 10\\:00+02', '2026-01-01'), "
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    ]
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            for s in run:
                conn.execute(text(s))
        m = backups.create(pg_url, tmp_path, "prod", "manual")
        assert m.checksum_kind == backups.PG_ROW_HASH
        assert backups.verify(m, tmp_path, pg_url)["rows"] == 5
        for table, change in [
            ("odd", "UPDATE odd SET name = 'abc' WHERE name = 'Abc'"),
            ("odd", "UPDATE odd SET n = 1.00 WHERE n = 1"),
            ("odd", "UPDATE odd SET f = '-0' WHERE f = 0"),
            ("odd", "UPDATE odd SET j = '{\"a\"\\:1}' WHERE j IS NOT NULL"),
            ("odd", "UPDATE odd SET d = '24 hours' WHERE d IS NOT NULL"),
            ("odd", "UPDATE odd SET b = '' WHERE b IS NULL AND n IS NULL"),
            ("exact", "UPDATE exact SET x = y, y = x"),
            ("exact", "UPDATE exact SET a = false WHERE a"),
            ("exact", "UPDATE exact SET tz = tz + interval '1 microsecond'"),
            ("exact", "UPDATE exact SET big = 0 WHERE big IS NULL"),
        ]:
            with engine.connect() as conn:
                conn.execute(text(change))
                got = backups._snapshot(conn, backups.PG_ROW_HASH)[table]
                assert got != m.tables[table], change
                conn.rollback()
    finally:
        engine.dispose()


@pytest.mark.service
def test_given_a_postgresql_backup_whose_description_or_dump_fails_then_no_file_is_left(
    pg_url, tmp_path, monkeypatch
):
    """pg_dump runs while the manifest is computed: either failing stops both."""
    fill(pg_url, 3)
    folder = tmp_path / "backups"

    def broken(conn):
        raise RollwiseError("description failed")

    with monkeypatch.context() as m:
        m.setattr(backups, "_describe", broken)
        with pytest.raises(RollwiseError, match="description failed"):
            backups.create(pg_url, folder, "prod", "manual")
    assert list(folder.iterdir()) == []

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump: error: disk full' >&2\nexit 1\n")
    (bin_dir / "pg_dump").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RollwiseError, match="pg_dump exited 1:\n  pg_dump: error: disk full"):
        backups.create(pg_url, folder, "prod", "manual")
    assert list(folder.iterdir()) == []
