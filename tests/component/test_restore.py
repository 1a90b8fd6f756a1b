"""Restore is all or nothing, checked before it takes effect, and survives kill -9 at every
boundary: on real SQLite, PostgreSQL and MariaDB. The scenario is the one that broke
`pg_restore --clean` on a live database: since the backup, a new table with a foreign key to
a backed-up table, a new column, a new unique index, and rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from rollwise.artifacts import sha256_file
from rollwise.data import backups
from rollwise.errors import IntegrityError, RollwiseError
from rollwise.failpoint import FAILPOINT_ENV

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.service),
]
SCRATCH = re.compile(r"_rollwise_(?:restore|old)_[0-9a-f]{8}|\.rollwise_restore_[0-9a-f]{8}")
RESTORE_IN_A_PROCESS = (
    "import sys; from pathlib import Path; from rollwise.data import backups; "
    "f = Path(sys.argv[2]); m = backups.get(f, sys.argv[3]); "
    "getattr(backups, sys.argv[1])(m, f, sys.argv[4])"
)


@pytest.fixture(params=ENGINES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url"))


def run(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        engine.dispose()


def app_at_backup_time(url: str) -> None:
    run(
        url,
        "CREATE TABLE customers (id VARCHAR(40) PRIMARY KEY, email VARCHAR(80))",
        "CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY, customer_id VARCHAR(40) "
        "REFERENCES customers (id), qty INTEGER)",
        "CREATE INDEX ix_orders_qty ON orders (qty)",
        "INSERT INTO customers (id, email) VALUES ('c1', 'a@x'), ('c2', 'b@x')",
        "INSERT INTO orders (id, customer_id, qty) VALUES ('o1', 'c1', 1), ('o2', 'c2', 2)",
    )


def app_moves_on(url: str) -> None:
    """What happens after the backup: rows, a column, a unique index, a table whose foreign
    key points into a backed-up table (what `pg_restore --clean` could not drop)."""
    run(
        url,
        "INSERT INTO customers (id, email) VALUES ('c3', 'c@x')",
        "UPDATE orders SET qty = 10 WHERE id = 'o1'",
        "INSERT INTO orders (id, customer_id, qty) VALUES ('o3', 'c3', 3)",
        "ALTER TABLE orders ADD COLUMN note VARCHAR(40)",
        "CREATE UNIQUE INDEX ux_customers_email ON customers (email)",
        "CREATE TABLE shipments (id VARCHAR(40) PRIMARY KEY, order_id VARCHAR(40) "
        "REFERENCES orders (id))",
        "INSERT INTO shipments (id, order_id) VALUES ('s1', 'o1'), ('s2', 'o3')",
    )


def state(url: str) -> tuple[backups.Snapshot, backups.Structure]:
    return backups.snapshot(url), backups.structure(url)


def leftovers(url: str, folder: Path) -> list[str]:
    """Scratch databases, previous copies and scratch files a restore left behind."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return sorted(
            p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")
        )
    admin = create_engine(
        u.set(database="postgres" if u.get_backend_name() == "postgresql" else "mysql")
    )
    query = (
        "SELECT datname FROM pg_database"
        if u.get_backend_name() == "postgresql"
        else "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
    )
    try:
        with admin.connect() as conn:
            names = conn.execute(text(query)).scalars().all()
    finally:
        admin.dispose()
    return sorted(n for n in names if n.startswith(f"{u.database}_rollwise_"))


def backed_up(url: str, folder: Path) -> backups.Manifest:
    app_at_backup_time(url)
    m = backups.create(
        url, folder, "prod", "before deploy", release="1.0.0", schema=["0001", "0002"]
    )
    app_moves_on(url)
    return m


def in_a_process(
    fn: str, m: backups.Manifest, folder: Path, url: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, FAILPOINT_ENV: failpoint or ""}
    return subprocess.run(
        [sys.executable, "-c", RESTORE_IN_A_PROCESS, fn, str(folder), m.id, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def without_scratch_names(message: str) -> str:
    return SCRATCH.sub("<scratch>", message)


def test_given_a_newer_table_with_a_foreign_key_and_more_when_restored_then_it_is_the_backup(
    url, tmp_path
):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    assert m.release == "1.0.0" and m.schema == ["0001", "0002"]
    assert (
        m.structure is not None
        and m.structure["orders"]["foreign_keys"][0]["referred_table"] == "customers"
    )
    assert backups.loss(m, url) == {"customers": 1, "orders": 1, "shipments": 2}

    info = backups.restore(m, folder, url)

    assert state(url) == (m.tables, m.structure)
    assert "shipments" not in m.tables and info["leftover"] is None
    assert leftovers(url, folder) == []
    backups.restore(m, folder, url)  # and again: a restore is repeatable
    assert state(url) == (m.tables, m.structure)


def unloadable(url: str, folder: Path) -> backups.Manifest:
    """A backup whose manifest vouches for a dump that does not load. PostgreSQL: it grants
    to a role this server no longer has; MariaDB and SQLite: the file was damaged after the
    sha check read it."""
    if make_url(url).get_backend_name() == "postgresql":
        role = f"rollwise_gone_{uuid.uuid4().hex[:8]}"
        app_at_backup_time(url)
        run(url, f"CREATE ROLE {role}", f"GRANT SELECT ON orders TO {role}")
        m = backups.create(url, folder, "prod", "manual")
        run(url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
        app_moves_on(url)
        return m
    m = backed_up(url, folder)
    path = folder / m.file
    if m.engine == "mysql":
        path.write_bytes(path.read_bytes() + b"\nINSERT INTO no_such_table VALUES (1);\n")
    else:
        path.write_bytes(b"this is not an SQLite database\n" * 200)
    return dataclasses.replace(m, sha256=sha256_file(path), size=path.stat().st_size)


def test_given_a_dump_that_fails_to_load_then_restore_changes_nothing_and_shows_the_tool(
    url, tmp_path
):
    folder = tmp_path / "backups"
    m = unloadable(url, folder)
    before = state(url)

    with pytest.raises(IntegrityError) as failed:
        backups.restore(m, folder, url)

    assert state(url) == before
    message = failed.value.message
    assert message.endswith(backups.NOT_CHANGED)
    assert "does not restore" in message
    tool = {
        "postgresql": [
            "pg_restore: error: could not execute query: ERROR:  role",
            "Command was: GRANT SELECT ON TABLE public.orders TO",
        ],
        "mysql": ["INSERT INTO no_such_table VALUES (1)", "ERROR 1146"],
        "sqlite": ["file is not a database"],
    }[m.engine]
    assert all(line in message for line in tool), message  # the tool's error, all of it
    assert leftovers(url, folder) == []
    # verify takes the same path and fails with the same words
    with pytest.raises(IntegrityError) as verified:
        backups.verify(m, folder, url)
    assert without_scratch_names(verified.value.message) == without_scratch_names(
        message.removesuffix("\n" + backups.NOT_CHANGED)
    )
    assert leftovers(url, folder) == []


def test_given_a_manifest_the_restore_does_not_match_then_nothing_is_swapped_in(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    before = state(url)
    assert m.structure is not None
    lying_rows = dataclasses.replace(
        m, tables={**m.tables, "orders": {**m.tables["orders"], "rows": 1}}
    )
    shape = m.structure["orders"]
    extra: backups.Index = {"name": "ix_orders_extra", "columns": ["qty"], "unique": False}
    lying_keys = dataclasses.replace(
        m, structure={**m.structure, "orders": {**shape, "indexes": [*shape["indexes"], extra]}}
    )

    with pytest.raises(IntegrityError, match="1 rows at backup time, 2 restored") as e1:
        backups.restore(lying_rows, folder, url)
    with pytest.raises(
        IntegrityError, match=re.escape("index ix_orders_extra (qty) missing in the restore")
    ) as e2:
        backups.restore(lying_keys, folder, url)

    assert backups.NOT_CHANGED in e1.value.message and backups.NOT_CHANGED in e2.value.message
    assert state(url) == before
    assert leftovers(url, folder) == []


def test_an_older_manifest_without_keys_release_or_schema_still_restores(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    path = folder / f"{m.id}.json"
    old = {
        k: v
        for k, v in json.loads(path.read_text()).items()
        if k not in ("structure", "release", "schema")
    }
    path.write_text(json.dumps(old))
    loaded = backups.get(folder, m.id)
    assert (loaded.structure, loaded.release, loaded.schema) == (None, None, None)

    assert backups.verify(loaded, folder, url)["structure"] is False
    backups.restore(loaded, folder, url)
    assert state(url) == (m.tables, m.structure)


ROW_CHANGES = {  # what the restore would hold instead, each undone after it is described
    "changed": (
        ["UPDATE orders SET qty = 3 WHERE id = 'o2'"],
        ["UPDATE orders SET qty = 2 WHERE id = 'o2'"],
    ),
    "values swapped between rows": (
        ["UPDATE orders SET qty = 3 - qty"],
        ["UPDATE orders SET qty = 3 - qty"],
    ),
    "one row for another": (
        [
            "DELETE FROM orders WHERE id = 'o2'",
            "INSERT INTO orders (id, customer_id, qty) VALUES ('o9', 'c2', 2)",
        ],
        [
            "DELETE FROM orders WHERE id = 'o9'",
            "INSERT INTO orders (id, customer_id, qty) VALUES ('o2', 'c2', 2)",
        ],
    ),
    "missing": (
        ["DELETE FROM orders WHERE id = 'o2'"],
        ["INSERT INTO orders (id, customer_id, qty) VALUES ('o2', 'c2', 2)"],
    ),
    "extra": (
        ["INSERT INTO orders (id, customer_id, qty) VALUES ('o3', 'c1', 1)"],
        ["DELETE FROM orders WHERE id = 'o3'"],
    ),
}


def test_given_a_changed_missing_or_extra_row_then_verify_and_restore_refuse_the_backup(
    url, tmp_path
):
    """A manifest describing the tables with one row changed, replaced, missing or extra
    does not match what its dump restores to."""
    folder = tmp_path / "backups"
    app_at_backup_time(url)
    m = backups.create(url, folder, "prod", "manual")
    lying = {}
    for what, (change, undo) in ROW_CHANGES.items():
        run(url, *change)
        lying[what] = dataclasses.replace(m, tables=backups.snapshot(url, m.checksum_kind))
        run(url, *undo)
    assert backups.snapshot(url, m.checksum_kind) == m.tables
    before = state(url)

    for what, manifest in lying.items():
        expected = (
            "2 rows at backup time|1 rows at backup time, 2|3 rows at backup time, 2"
            if what in ("missing", "extra")
            else "same row count, different content"
        )
        with pytest.raises(IntegrityError, match=f"table orders: ({expected})"):
            backups.verify(manifest, folder, url)
    with pytest.raises(IntegrityError, match="same row count, different content") as e:
        backups.restore(lying["changed"], folder, url)

    assert backups.NOT_CHANGED in e.value.message and state(url) == before
    assert leftovers(url, folder) == []


def older_checksums(m: backups.Manifest, rows: dict[str, list[str]]) -> backups.Snapshot:
    """A manifest's tables as rollwise computed them before it recorded the kind:
    PostgreSQL's md5 of the sorted row md5s (each row as its text); the others unchanged."""
    if m.engine != "postgresql":
        return m.tables

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    return {
        t: {"rows": len(r), "checksum": md5("".join(sorted(md5(x) for x in r)))}
        for t, r in rows.items()
    }


def test_an_older_manifest_with_the_checksums_of_its_time_still_verifies_and_restores(
    url, tmp_path
):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    path = folder / f"{m.id}.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "checksum_kind"}
    old["tables"] = older_checksums(
        m, {"customers": ["(c1,a@x)", "(c2,b@x)"], "orders": ["(o1,c1,1)", "(o2,c2,2)"]}
    )
    path.write_text(json.dumps(old))
    loaded = backups.get(folder, m.id)
    assert loaded.checksum_kind is None
    assert loaded.tables != m.tables or m.engine != "postgresql"

    assert backups.verify(loaded, folder, url)["rows"] == 4
    tampered = {**loaded.tables, "orders": {**loaded.tables["orders"], "checksum": "0" * 32}}
    with pytest.raises(IntegrityError, match="table orders: same row count, different content"):
        backups.verify(dataclasses.replace(loaded, tables=tampered), folder, url)
    backups.restore(loaded, folder, url)
    assert state(url) == (m.tables, m.structure)


def test_a_manifest_whose_checksum_kind_is_unknown_is_refused_before_the_swap(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    before = state(url)
    newer = dataclasses.replace(m, checksum_kind="from-a-newer-rollwise")
    with pytest.raises(IntegrityError, match=r"kind this rollwise does not know \(from-a-newer"):
        backups.restore(newer, folder, url)
    assert state(url) == before
    assert leftovers(url, folder) == []


def test_given_writes_while_the_backup_runs_then_its_manifest_describes_the_dump(url, tmp_path):
    """The manifest is what the dump holds, not the database a moment before or after
    (PostgreSQL: pg_dump shares the described snapshot; SQLite: the dump file is described;
    MariaDB: described again after the dump, and from the dump when they differ)."""
    app_at_backup_time(url)
    if url.startswith("sqlite"):
        run(url, "PRAGMA journal_mode=WAL")
    stop = threading.Event()
    written: list[int] = []

    def app_writes() -> None:
        engine = create_engine(url)
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(
                        text("INSERT INTO customers (id, email) VALUES (:i, 'w')"),
                        {"i": f"w{len(written)}"},
                    )
                written.append(1)
        finally:
            engine.dispose()

    writer = threading.Thread(target=app_writes)
    writer.start()
    try:
        time.sleep(0.2)
        m = backups.create(url, tmp_path / "backups", "prod", "under load")
        time.sleep(0.1)
    finally:
        stop.set()
        writer.join()
    assert len(written) > 10
    assert backups.verify(m, tmp_path / "backups", url)["tables"] == 2


def test_backup_files_are_private(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        m.file: 0o600,
        f"{m.id}.json": 0o600,
    }


@pytest.mark.parametrize("point", backups.RESTORE_POINTS)
def test_given_a_kill_9_at_each_restore_boundary_then_the_live_database_is_whole(
    url, tmp_path, point
):
    """Before the swap: the live database as it was; after: the backup. Never in between;
    the next restore succeeds and leaves nothing behind."""
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    before = state(url)

    killed = in_a_process("restore", m, folder, url, failpoint=f"restore:{point}")

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after = state(url)
    expected = before if point in backups.BEFORE_SWAP else (m.tables, m.structure)
    assert after == expected, f"killed at restore:{point}"
    backups.restore(m, folder, url)
    assert state(url) == (m.tables, m.structure)
    assert leftovers(url, folder) == []


def test_verify_takes_the_restore_path_and_its_leftovers_are_swept(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    before = state(url)

    killed = in_a_process("verify", m, folder, url, failpoint="restore:checked")

    assert killed.returncode == -signal.SIGKILL, killed.stderr  # the restore's failpoint
    assert len(leftovers(url, folder)) >= 1
    assert backups.verify(m, folder, url)["tables"] == 2
    assert leftovers(url, folder) == []
    assert state(url) == before


def test_a_restore_under_way_keeps_its_scratch_while_another_sweeps(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    with backups._opened(url, folder) as running:
        running.create()
        backups.verify(m, folder, url)  # sweeps what dead restores left, and only that
        assert len(leftovers(url, folder)) >= 1
        running.drop()
    assert leftovers(url, folder) == []


def test_given_mariadb_views_then_restore_refuses_what_it_cannot_swap_at_once(mysql_url, tmp_path):
    folder = tmp_path / "backups"
    app_at_backup_time(mysql_url)
    run(mysql_url, "CREATE VIEW big_orders AS SELECT id FROM orders WHERE qty > 1")
    m = backups.create(mysql_url, folder, "prod", "manual")
    app_moves_on(mysql_url)
    before = state(mysql_url)

    with pytest.raises(RollwiseError, match="view big_orders in the backup") as e:
        backups.restore(m, folder, mysql_url)

    assert backups.NOT_CHANGED in e.value.message and state(mysql_url) == before
    with pytest.raises(RollwiseError, match="view big_orders in the backup"):
        backups.verify(m, folder, mysql_url)
    assert leftovers(mysql_url, folder) == []


def pg_database(url: str) -> dict[str, Any]:
    u = make_url(url)
    admin = create_engine(u.set(database="postgres"))
    try:
        with admin.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT d.datacl::text[], d.datconnlimit, shobj_description(d.oid, "
                    "'pg_database'), (SELECT s.setconfig FROM pg_db_role_setting s WHERE "
                    "s.setdatabase = d.oid AND s.setrole = 0) FROM pg_database d WHERE "
                    "d.datname = :n"
                ),
                {"n": u.database},
            ).one()
    finally:
        admin.dispose()
    return {
        "acl": sorted(row[0] or []),
        "limit": row[1],
        "comment": row[2],
        "set": sorted(row[3] or []),
    }


@pytest.mark.service
def test_given_postgresql_then_the_swapped_in_database_keeps_grants_settings_and_comment(
    pg_url, tmp_path
):
    name = make_url(pg_url).database
    run(
        pg_url,
        f"ALTER DATABASE {name} SET work_mem = '8MB'",
        f"ALTER DATABASE {name} SET search_path = app, public",
        f"ALTER DATABASE {name} CONNECTION LIMIT 40",
        f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {name} TO pg_monitor",
        f"COMMENT ON DATABASE {name} IS 'orders: it''s the shop'",
    )
    before = pg_database(pg_url)
    m = backed_up(pg_url, tmp_path / "backups")

    backups.restore(m, tmp_path / "backups", pg_url)

    assert pg_database(pg_url) == before
    assert before["set"] == ["search_path=app, public", "work_mem=8MB"]
    assert before["comment"] == "orders: it's the shop" and "=T/postgres" in before["acl"]


def test_the_scratch_database_is_created_like_the_live_one():
    db = backups.PgDatabase(
        "UTF8",
        "C.UTF-8",
        "C.UTF-8",
        None,
        "app",
        "pg_default",
        5,
        "shop",
        [("CONNECT", "app", False), ("TEMPORARY", "PUBLIC", True)],
        [(None, "search_path=app, public"), ("web", "work_mem=8MB")],
    )
    assert backups.pg_create_sql(db, "shop_rollwise_restore_0a", "postgres") == [
        "CREATE DATABASE \"shop_rollwise_restore_0a\" TEMPLATE template0 ENCODING 'UTF8' "
        "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' OWNER \"app\" CONNECTION LIMIT 5",
        "COMMENT ON DATABASE \"shop_rollwise_restore_0a\" IS 'shop'",
        'REVOKE ALL ON DATABASE "shop_rollwise_restore_0a" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "shop_rollwise_restore_0a" FROM "app"',
        'GRANT CONNECT ON DATABASE "shop_rollwise_restore_0a" TO "app"',
        'GRANT TEMPORARY ON DATABASE "shop_rollwise_restore_0a" TO PUBLIC WITH GRANT OPTION',
        "ALTER DATABASE \"shop_rollwise_restore_0a\" SET \"search_path\" = 'app', 'public'",
        'ALTER ROLE "web" IN DATABASE "shop_rollwise_restore_0a" SET "work_mem" = \'8MB\'',
    ]
    assert backups.pg_create_sql(None, "x", "postgres") == [
        'CREATE DATABASE "x" TEMPLATE template0'
    ]


def test_given_a_client_connected_to_the_live_database_then_the_restore_still_swaps(url, tmp_path):
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    engine = create_engine(url)
    try:
        with engine.connect() as client:
            client.execute(text("SELECT count(*) FROM orders")).scalar()
            client.commit()  # idle, connected (PostgreSQL: terminated at the swap)
            backups.restore(m, folder, url)
    finally:
        engine.dispose()
    assert state(url) == (m.tables, m.structure)


def test_scratch_names_fit_the_engines_limit_and_are_found_again():
    live = "é" * 40  # 80 bytes: longer than PostgreSQL's 63
    name = backups._side_name(live, "restore", "0123abcd", backups.PG_NAME_MAX)
    assert len(name.encode()) <= backups.PG_NAME_MAX
    found = backups._side_tokens(
        [name, live, "other_rollwise_old_0123abce"], live, backups.PG_NAME_MAX
    )
    assert found == {"0123abcd"}


@pytest.mark.parametrize("url", [ENGINES[0], ENGINES[2]], indirect=True)
def test_given_a_writer_that_holds_the_live_database_then_the_swap_gives_up_and_changes_nothing(
    url, tmp_path
):
    """SQLite: a write transaction; MariaDB: a transaction on a table RENAME must move.
    (PostgreSQL disconnects its clients at the swap instead.)"""
    folder = tmp_path / "backups"
    m = backed_up(url, folder)
    before = state(url)
    engine = create_engine(url)
    try:
        with engine.connect() as client:
            client.execute(text("UPDATE orders SET qty = qty WHERE id = 'o1'"))  # holds it
            with pytest.raises(RollwiseError, match="the swap failed") as e:
                backups.restore(m, folder, url, wait_s=1)
            client.rollback()
    finally:
        engine.dispose()
    assert e.value.message.endswith(backups.NOT_CHANGED)
    assert state(url) == before
    assert leftovers(url, folder) == []
