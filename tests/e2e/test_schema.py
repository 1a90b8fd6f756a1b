"""End to end: the schema follows the release through deploy and rollback, on the example
app's SQLite database, under load; nothing written before or after the deploy is lost."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import create_engine, inspect, text

from rollwise.errors import ExitCode
from tests.component.conftest import mysql_url  # noqa: F401 (fixture)
from tests.conftest import Project
from tests.helpers import router_version, start_load, status

ORDERS = (
    "-- the app also creates it, IF NOT EXISTS, for a start without migrations\n"
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, sku TEXT NOT NULL,\n"
    "  qty INTEGER NOT NULL, version TEXT NOT NULL);\n"
)


def with_migrations(p: Project) -> None:
    path = p.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["migrations"] = {"type": "sql", "dir": "migrations"}
    cfg["environments"]["dev"]["database"] = {"url": "sqlite:///{shared}/orders.db"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (p.root / "migrations").mkdir(exist_ok=True)
    add(p, "0001_orders", ORDERS, "DROP TABLE orders;\n")


def add(p: Project, name: str, up: str, down: str | None) -> None:
    (p.root / "migrations" / f"{name}.up.sql").write_text(up)
    if down is not None:
        (p.root / "migrations" / f"{name}.down.sql").write_text(down)


def with_channel_releases(p: Project) -> None:
    """1.0.0 with the orders table; 1.1.0 adds a column (not expand: rollback drops it)."""
    with_migrations(p)
    p.release("1.0.0")
    add(
        p,
        "0002_channel",
        "ALTER TABLE orders ADD COLUMN channel TEXT;\n",
        "ALTER TABLE orders DROP COLUMN channel;\n",
    )
    p.release("1.1.0")


def db(p: Project) -> sqlite3.Connection:
    return sqlite3.connect(p.root / ".rollwise" / "envs" / "dev" / "shared" / "orders.db")


def columns(p: Project) -> list[str]:
    with db(p) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(orders)")]


def test_given_a_release_with_a_migration_when_rolled_back_then_schema_back_and_no_order_lost(
    project,
):
    with_channel_releases(project)
    project.cli("deploy", "1.0.0", check=True)
    assert columns(project) == ["id", "sku", "qty", "version"]
    load = start_load(project, 100)
    deployed = project.cli("deploy", "1.1.0", check=True)
    assert "migrate" in deployed.stderr
    assert columns(project)[-1] == "channel"
    plan = project.cli("rollback", "--dry-run", check=True)
    assert (
        "schema:  down" in plan.stderr and "ALTER TABLE orders DROP COLUMN channel" in plan.stderr
    )
    assert "dropped: orders.channel:" in plan.stderr  # 1.1.0 filled it
    assert columns(project)[-1] == "channel"  # a dry run changes nothing
    project.cli("rollback", "--yes", check=True)
    results = load.stop()
    acked = {r for r in results if r.status in (200, 201)}
    assert len(acked) == len(results)  # nothing failed
    assert columns(project) == ["id", "sku", "qty", "version"]
    with db(project) as conn:
        stored = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        by = dict(conn.execute("SELECT version, count(*) FROM orders GROUP BY version"))
        applied = [r[0] for r in conn.execute("SELECT version FROM rollwise_schema")]
    assert stored == len(acked) and by.get("1.1.0", 0) > 0 and by.get("1.0.0", 0) > 0
    assert applied == ["0001"]
    # what only the dropped column held was kept first, with each row's key
    parked = list(
        (project.root / ".rollwise" / "envs" / "dev" / "parked").glob(
            "*-1.1.0-to-1.0.0-orders.channel.jsonl"
        )
    )
    assert len(parked) == 1
    rows = [json.loads(line) for line in parked[0].read_text().splitlines()]
    assert {r["channel"] for r in rows} == {"web"}
    with db(project) as conn:  # every order 1.1.0 took, and those 1.0.0 took on the new schema
        new = {r[0] for r in conn.execute("SELECT id FROM orders WHERE version = '1.1.0'")}
        every = {r[0] for r in conn.execute("SELECT id FROM orders")}
    assert new <= {r["id"] for r in rows} <= every and len(rows) == len({r["id"] for r in rows})
    assert status(project)["live_version"] == "1.0.0" and router_version(project) == "1.0.0"


def test_given_an_expand_migration_when_rolled_back_then_the_schema_is_kept(project):
    with_migrations(project)
    project.release("1.0.0")
    add(
        project,
        "0002_channel",
        "-- rollwise: expand\nALTER TABLE orders ADD COLUMN channel TEXT;\n",
        "ALTER TABLE orders DROP COLUMN channel;\n",
    )
    project.release("1.1.0")
    listed = project.cli("release", "list", check=True).stdout.splitlines()
    assert "schema 0001 " in listed[0] and "code of schema" not in listed[0]
    assert "schema 0002 (code of schema 0001 and later runs on it)" in listed[1]
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.1.0", check=True)
    plan = project.cli("rollback", "--dry-run", check=True)
    assert "schema:  keep" in plan.stderr
    project.cli("rollback", "--yes", check=True)
    assert columns(project)[-1] == "channel"


def test_given_a_failing_migration_then_schema_unchanged_and_old_release_serving(project):
    with_migrations(project)
    project.release("1.0.0")
    add(
        project,
        "0002_bad",
        "CREATE TABLE audit (id INTEGER);\nALTER TABLE no_such_table ADD COLUMN x TEXT;\n",
        "DROP TABLE audit;\n",
    )
    project.release("1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR
    assert "0002_bad.up.sql, statement 2 (line 2), failed" in res.stderr
    with db(project) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "audit" not in tables
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"


def test_given_bad_migrations_then_release_or_deploy_is_refused_and_nothing_changes(project):
    with_migrations(project)
    add(project, "0002_channel", "ALTER TABLE orders ADD COLUMN channel TEXT;\n", None)
    res = project.cli("release", "create", "--version", "1.0.0")
    assert res.returncode == ExitCode.CONFIG and "has no down step" in res.stderr
    assert "0002_channel.down.sql" in res.stderr
    (project.root / "migrations" / "0002_channel.down.sql").write_text(
        "ALTER TABLE orders DROP COLUMN channel;\n"
    )
    (project.root / "migrations" / "0003_drop.up.sql").write_text("DROP TABLE orders;\n")
    (project.root / "migrations" / "0003_drop.down.sql").write_text(ORDERS)
    warned = project.cli("release", "create", "--version", "1.0.0", check=True)
    assert "warning: 0003_drop.up.sql:1: drops table orders" in warned.stdout
    (project.root / "migrations" / "0003_drop.up.sql").unlink()
    (project.root / "migrations" / "0003_drop.down.sql").unlink()
    project.release("1.0.1")
    project.cli("deploy", "1.0.1", check=True)
    # an edited, already applied migration in a later release is refused before anything runs
    add(
        project,
        "0002_channel",
        "ALTER TABLE orders ADD COLUMN channel VARCHAR(9);\n",
        "ALTER TABLE orders DROP COLUMN channel;\n",
    )
    project.release("1.0.2")
    res = project.cli("deploy", "1.0.2")
    assert res.returncode == ExitCode.ERROR and "was edited after it was applied" in res.stderr
    assert status(project)["live_version"] == "1.0.1"
    assert Path(project.root / "migrations").is_dir()


def test_given_the_rollback_window_closed_then_down_migrations_need_force_and_a_reason(project):
    with_migrations(project)
    project.configure(
        database={"url": "sqlite:///{shared}/orders.db"}, rollback_window_h=0.0002
    )  # under a second
    project.release("1.0.0")
    add(
        project,
        "0002_channel",
        "ALTER TABLE orders ADD COLUMN channel TEXT;\n",
        "ALTER TABLE orders DROP COLUMN channel;\n",
    )
    project.release("1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.1.0", check=True)
    time.sleep(1.5)
    refused = project.cli("rollback")
    assert refused.returncode == ExitCode.ERROR
    assert "past the rollback window" in refused.stderr and "--force" in refused.stderr
    assert columns(project)[-1] == "channel" and status(project)["live_version"] == "1.1.0"
    no_reason = project.cli("rollback", "--force")
    assert no_reason.returncode == ExitCode.USAGE and "--reason" in no_reason.stderr
    project.cli("rollback", "--force", "--reason", "INC-42: totals wrong", check=True)
    assert columns(project) == ["id", "sku", "qty", "version"]
    events = [json.loads(x) for x in project.cli("audit", "export", check=True).stdout.splitlines()]
    forced = [e for e in events if e["outcome"] == "forced"]
    assert forced and "INC-42: totals wrong" in forced[0]["reason"]
    assert [e["outcome"] for e in events if e["action"] == "rollback"][:1] == ["refused"]


def test_given_a_deploy_with_migrations_then_a_verified_backup_is_taken_first(project):
    with_channel_releases(project)
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 50)
    time.sleep(1)
    deployed = project.cli("deploy", "1.1.0", check=True)
    load.stop()
    assert "backup" in deployed.stderr
    listed = json.loads(project.cli("backup", "list", "--json", check=True).stdout)
    assert [b["reason"] for b in listed] == ["before deploying 1.1.0"]  # 1.0.0: empty db
    newest = listed[-1]
    assert newest["tables"]["orders"]["rows"] > 0
    ok = project.cli("backup", "verify", check=True)
    assert f"backup {newest['id']} verified" in ok.stdout
    # rows written since the backup: the restore names them and asks first
    with db(project) as conn:
        conn.execute("INSERT INTO orders (id, sku, qty, version) VALUES ('late', 's', 1, 'x')")
    with db(project) as conn:
        since = (
            conn.execute("SELECT count(*) FROM orders").fetchone()[0]
            - newest["tables"]["orders"]["rows"]
        )
    no = project.cli_tty("backup", "restore", newest["id"], answer="n")
    assert no.returncode == 0 and f"orders: {since} rows" in no.stdout
    assert "nothing changed" in no.stdout
    unasked = project.cli("backup", "restore", newest["id"])  # no terminal: --yes needed
    assert unasked.returncode == ExitCode.USAGE and "--yes" in unasked.stderr
    with db(project) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id = 'late'").fetchone()[0] == 1
    project.cli("backup", "restore", newest["id"], "--yes", check=True)
    with db(project) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id = 'late'").fetchone()[0] == 0
    backup_file = project.root / ".rollwise" / "envs" / "dev" / "backups" / newest["file"]
    backup_file.write_bytes(backup_file.read_bytes()[:1000])
    bad = project.cli("backup", "verify", newest["id"])
    assert bad.returncode == ExitCode.INTEGRITY and "corrupted or truncated" in bad.stderr


def test_given_mariadb_when_a_migration_fails_halfway_then_the_backup_is_restored(
    project,
    mysql_url,  # noqa: F811
):
    with_migrations(project)
    project.configure(database={"url": mysql_url})
    (project.root / "migrations" / "0001_orders.up.sql").write_text(
        "CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY, qty INTEGER);\n"
        "INSERT INTO orders (id, qty) VALUES ('a', 1), ('b', 2);\n"
    )
    project.release("1.0.0")
    add(
        project,
        "0002_bad",
        "CREATE TABLE audit (id INTEGER);\n"
        "ALTER TABLE orders ADD COLUMN channel VARCHAR(20);\n"
        "ALTER TABLE no_such_table ADD COLUMN x INTEGER;\n",
        "DROP TABLE audit;\n",
    )
    project.release("1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR
    assert "0002_bad.up.sql, statement 3 (line 3), failed" in res.stderr
    assert "restored from the pre-deploy backup" in res.stderr
    engine = create_engine(mysql_url)
    try:
        insp = inspect(engine)
        assert not insp.has_table("audit")  # MySQL had committed it; the restore removed it
        assert [c["name"] for c in insp.get_columns("orders")] == ["id", "qty"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 2
            assert [r[0] for r in conn.execute(text("SELECT version FROM rollwise_schema"))] == [
                "0001"
            ]
    finally:
        engine.dispose()
    assert status(project)["live_version"] == "1.0.0"


def test_given_a_command_runner_when_deployed_and_rolled_back_then_the_tool_moves_the_schema(
    project,
):
    """A Flyway-like tool (the one the component tests use) through rollwise.yaml only."""
    from tests.component.test_runners import TOOL

    (project.root / "tool.py").write_text(TOOL)
    path = project.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    tool = f"{sys.executable} tool.py"
    cfg["migrations"] = {
        "type": "command",
        "version": "cat SCHEMA",
        "current": f"{tool} current",
        "up": f"{tool} up {{version}}",
        "down": f"{tool} down {{version}}",
        "preview": "echo would run: down to {version}",
    }
    cfg["environments"]["dev"]["database"] = {"url": "sqlite:///{shared}/orders.db"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for version, schema in (("1.0.0", "1"), ("1.1.0", "3")):
        (project.root / "SCHEMA").write_text(schema + "\n")
        project.release(version)
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.1.0", check=True)
    assert [c for c in columns(project) if c in ("channel", "note")] == ["channel", "note"]
    dry = project.cli("rollback", "--dry-run", check=True)
    assert "would run: down to 1" in dry.stdout + dry.stderr
    project.cli("rollback", "--yes", check=True)
    assert "channel" not in columns(project) and "note" not in columns(project)
    with db(project) as conn:
        assert conn.execute("SELECT max(v) FROM tool_version").fetchone() == (1,)
    assert status(project)["live_version"] == "1.0.0"


def test_given_a_backup_from_an_older_schema_when_restored_then_code_and_schema_meet_again(project):
    with_channel_releases(project)
    project.cli("deploy", "1.0.0", check=True)
    with db(project) as conn:
        conn.execute("INSERT INTO orders VALUES ('kept', 'sku', 1, '1.0.0')")
    taken = json.loads(project.cli("backup", "create", "--json", check=True).stdout)
    listed = json.loads(project.cli("backup", "list", "--json", check=True).stdout)
    assert (listed[-1]["release"], listed[-1]["schema"]) == ("1.0.0", ["0001"])
    deployed = project.cli("deploy", "1.1.0", check=True)
    newest = json.loads(project.cli("backup", "list", "--json", check=True).stdout)[-1]
    assert newest["id"] != taken["backup"]
    assert f"backup {newest['id']} taken first: the deploy changes the schema" in deployed.stdout
    assert columns(project)[-1] == "channel"
    # default: the restored data is brought up to the live release's schema
    restored = project.cli("backup", "restore", taken["backup"], "--yes", check=True)
    assert "backup taken under 1.0.0 (schema 0001); live: 1.1.0 (schema 0002)" in restored.stderr
    assert "schema brought up to 1.1.0's: applied 1 migration(s)" in restored.stdout
    assert columns(project)[-1] == "channel"
    s = status(project)
    assert s["live_version"] == "1.1.0" and s["healthy"]
    # or the release the backup was taken under runs on it
    project.cli("backup", "restore", taken["backup"], "--then", "release", "--yes", check=True)
    assert "channel" not in columns(project)
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["healthy"]
    with db(project) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id = 'kept'").fetchone() == (1,)


def test_given_a_deploy_without_pending_migrations_then_no_backup_and_it_says_so(project):
    with_channel_releases(project)
    project.cli("deploy", "1.0.0", check=True)
    project.release("1.0.1")  # carries 0001 and 0002, both applied once 1.1.0 is live
    project.cli("deploy", "1.1.0", check=True)
    again = project.cli("deploy", "1.0.1", check=True)
    assert "no backup: the deploy changes no schema" in again.stdout
    assert "migrate" not in again.stderr
    backups = json.loads(project.cli("backup", "list", "--json", check=True).stdout)
    assert len(backups) == 1  # the one before 1.1.0's migration
