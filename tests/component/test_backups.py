"""Backups on real SQLite, PostgreSQL (pg_dump) and MariaDB (mysqldump): verified by
restoring them into a scratch database."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import create_engine, text

from rollwise.data import backups
from rollwise.errors import IntegrityError, RollwiseError


def fill(url: str, n: int, start: int = 0) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id VARCHAR(40) PRIMARY KEY, "
                          "qty INTEGER)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS skus (sku VARCHAR(40) PRIMARY KEY)"))
        for i in range(start, start + n):
            conn.execute(text("INSERT INTO orders (id, qty) VALUES (:i, :q)"),
                         {"i": f"o{i}", "q": i})
        conn.execute(text("INSERT INTO skus (sku) VALUES (:s)"), {"s": f"s{start}"})
    engine.dispose()


def test_given_a_backup_then_it_verifies_by_restoring_and_detects_damage(db_url, tmp_path):
    fill(db_url, 50)
    folder = tmp_path / "backups"
    m = backups.create(db_url, folder, "prod", "before deploy 1.1.0")
    assert m.tables["orders"]["rows"] == 50 and m.size > 0
    assert backups.verify(m, folder, db_url)["rows"] == 51
    assert [x.id for x in backups.manifests(folder)] == [m.id]

    lying = dataclasses.replace(m, tables={**m.tables, "orders": {**m.tables["orders"],
                                                                   "rows": 49}})
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
        db_url, tmp_path):
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
