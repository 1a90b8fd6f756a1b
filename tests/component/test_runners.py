"""The Alembic runner (an app laid out by `alembic init`, run by its own `alembic` command)
and the command runner (a Flyway-like tool), against real SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from rollwise.data.alembic import AlembicRunner, scan_revisions, versions_dir
from rollwise.data.command import CommandRunner, release_version
from rollwise.data.migrations import down_path, up_path
from rollwise.data.sqlrunner import MigrationFailed, db_lock
from rollwise.errors import ConfigError, LockHeld

REVISIONS = {
    "a1_orders.py": (
        "a1",
        None,
        "op.create_table('orders', sa.Column('id', sa.String(40), "
        "primary_key=True), sa.Column('qty', sa.Integer()))",
        "op.drop_table('orders')",
    ),
    "b2_channel.py": (
        "b2",
        "a1",
        "op.add_column('orders', sa.Column('channel', sa.String(20)))",
        "op.drop_column('orders', 'channel')",
    ),
    "c3_note.py": (
        "c3",
        "b2",
        "op.add_column('orders', sa.Column('note', sa.String(20)))",
        "op.drop_column('orders', 'note')",
    ),
}


def alembic_app(root: Path) -> Path:
    """An app as `alembic init` lays it out, its env.py reading DATABASE_URL (as apps do)."""
    root.mkdir()
    subprocess.run(
        [sys.executable, "-m", "alembic", "init", "migrations"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    env_py = root / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "config = context.config\n",
            "config = context.config\nimport os\n"
            "config.set_main_option('sqlalchemy.url', os.environ['DATABASE_URL'])\n",
            1,
        )
    )
    for name, (rev, parent, up, down) in REVISIONS.items():
        (root / "migrations" / "versions" / name).write_text(
            textwrap.dedent(f'''\
            """{name}"""
            from alembic import op
            import sqlalchemy as sa

            revision = {rev!r}
            down_revision = {parent!r}


            def upgrade():
                {up}


            def downgrade():
                {down}
            ''')
        )
    return root


def columns(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return [c["name"] for c in insp.get_columns("orders")] if insp.has_table("orders") else []
    finally:
        engine.dispose()


def alembic_runner(root: Path, url: str, **kw: object) -> AlembicRunner:
    return AlembicRunner(
        url,
        root,
        "plain",
        "alembic.ini",
        f"{sys.executable} -m alembic -c {{config}}",
        {"DATABASE_URL": url},
        **kw,  # type: ignore[arg-type]
    )


def test_given_a_plain_alembic_app_then_up_down_and_preview_follow_its_revisions(db_url, tmp_path):
    root = alembic_app(tmp_path / "app")
    assert versions_dir(root, "plain", "alembic.ini") == root / "migrations" / "versions"
    ms = scan_revisions(versions_dir(root, "plain", "alembic.ini"))
    run = alembic_runner(root, db_url)
    try:
        assert run.applied_versions(ms) == set()
        assert run.upgrade(up_path(ms, set(), "b2")) == ["a1_orders.py", "b2_channel.py"]
        assert run.applied_versions(ms) == {"a1", "b2"}
        assert run.upgrade(up_path(ms, run.applied_versions(ms))) == ["c3_note.py"]
        assert columns(db_url) == ["id", "qty", "channel", "note"]
        path = down_path(ms, run.applied_versions(ms), "a1")
        sql = "\n".join(run.preview(path, "a1"))
        assert "DROP COLUMN note" in sql and "DROP COLUMN channel" in sql
        assert columns(db_url) == ["id", "qty", "channel", "note"]  # preview runs offline
        assert run.downgrade(path, "a1") == ["c3_note.py (downgrade)", "b2_channel.py (downgrade)"]
        assert columns(db_url) == ["id", "qty"] and run.applied_versions(ms) == {"a1"}
    finally:
        run.close()


def test_given_another_migration_holds_the_lock_then_alembic_is_not_run(pg_url, tmp_path):
    root = alembic_app(tmp_path / "app")
    ms = scan_revisions(versions_dir(root, "plain", "alembic.ini"))
    run = alembic_runner(root, pg_url, lock_timeout_s=0.5)
    holder = create_engine(pg_url)
    try:
        with (
            holder.connect() as conn,
            db_lock(conn, pg_url, 1),
            pytest.raises(LockHeld, match="another migration holds the lock"),
        ):
            run.upgrade(up_path(ms, set()))
        assert columns(pg_url) == []
        run.upgrade(up_path(ms, set()))  # free again
        assert run.applied_versions(ms) == {"a1", "b2", "c3"}
    finally:
        holder.dispose()
        run.close()


def test_given_an_edited_applied_revision_or_a_database_ahead_then_refused(pg_url, tmp_path):
    root = alembic_app(tmp_path / "app")
    ms = scan_revisions(versions_dir(root, "plain", "alembic.ini"))
    run = alembic_runner(root, pg_url)
    try:
        run.upgrade(up_path(ms, set(), "b2"))
        recorded = {m.version: m.checksum for m in ms}
        assert run.verified_applied(ms, recorded) == {"a1", "b2"}  # unchanged copies pass
        with pytest.raises(
            MigrationFailed,
            match=r"b2_channel\.py was edited after it "
            "was applied",
        ):
            run.verified_applied(ms, recorded | {"b2": "0" * 64})
        with pytest.raises(
            MigrationFailed, match="at revision b2, which this release does not have"
        ):
            run.applied_versions(ms[:1])
    finally:
        run.close()


def test_given_a_failing_revision_then_the_error_names_the_command_and_the_schema_stays(
    pg_url, tmp_path
):
    root = alembic_app(tmp_path / "app")
    (root / "migrations" / "versions" / "c3_note.py").write_text(
        (root / "migrations" / "versions" / "c3_note.py")
        .read_text()
        .replace("op.add_column('orders'", "op.add_column('no_such_table'")
    )
    ms = scan_revisions(versions_dir(root, "plain", "alembic.ini"))
    run = alembic_runner(root, pg_url)
    try:
        with pytest.raises(MigrationFailed, match=r"upgrade c3` exited 1") as e:
            run.upgrade(up_path(ms, set()))
        assert "no_such_table" in e.value.message and e.value.where == str(root)
        assert "schema is as before" in (e.value.hint or "")
        assert run.applied_versions(ms) == set() and columns(pg_url) == []
    finally:
        run.close()


TOOL = '''\
"""A Flyway-like tool: versions 1..3 of a schema, applied or undone to a target."""
import os, sys
from sqlalchemy import create_engine, text
STEPS = {1: ("CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY)", "DROP TABLE orders"),
         2: ("ALTER TABLE orders ADD COLUMN channel VARCHAR(20)",
             "ALTER TABLE orders DROP COLUMN channel"),
         3: ("ALTER TABLE orders ADD COLUMN note VARCHAR(20)",
             "ALTER TABLE orders DROP COLUMN note")}
engine = create_engine(os.environ["DATABASE_URL"])
with engine.begin() as c:
    c.execute(text("CREATE TABLE IF NOT EXISTS tool_version (v INTEGER)"))
    cur = c.execute(text("SELECT max(v) FROM tool_version")).scalar() or 0
    cmd = sys.argv[1]
    if cmd == "current":
        print(cur or "")
    elif cmd == "up":
        for v in range(cur + 1, int(sys.argv[2]) + 1):
            c.execute(text(STEPS[v][0])); c.execute(text(f"INSERT INTO tool_version VALUES ({v})"))
    elif cmd == "down":
        for v in range(cur, int(sys.argv[2]), -1):
            c.execute(text(STEPS[v][1])); c.execute(text(f"DELETE FROM tool_version WHERE v={v}"))
'''


def test_given_a_migration_tool_then_the_command_runner_moves_the_schema_both_ways(
    db_url, tmp_path
):
    (tmp_path / "tool.py").write_text(TOOL)
    (tmp_path / "SCHEMA").write_text("3\n")
    ms = release_version(tmp_path, "cat SCHEMA", {}, 30)
    assert [(m.version, m.file) for m in ms] == [("3", "schema 3")]
    tool = f"{sys.executable} tool.py"
    run = CommandRunner(
        db_url,
        tmp_path,
        "cat SCHEMA",
        f"{tool} current",
        f"{tool} up {{version}}",
        f"{tool} down {{version}}",
        env={"DATABASE_URL": db_url},
    )
    try:
        assert run.applied_versions(ms) == set()
        assert run.upgrade(up_path(ms, run.applied_versions(ms))) == ["up to 3"]
        assert columns(db_url) == ["id", "channel", "note"]
        assert up_path(ms, run.applied_versions(ms)) == []
        path = down_path(ms, run.applied_versions(ms), None)  # versions are the tool's own
        assert run.preview(path, "1") == [f"-- runs: {tool} down 1"]
        assert run.downgrade(path, "1") == ["down to 1"]
        assert columns(db_url) == ["id"] and run.applied_versions(ms) == {"1"}
    finally:
        run.close()


def test_given_a_failing_or_missing_tool_then_the_key_and_the_folder_are_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    run = CommandRunner(
        url, tmp_path, "echo 2", "echo 1", "echo boom >&2; exit 3", "no-such-flyway undo"
    )
    try:
        ms = release_version(tmp_path, "echo 2", {}, 30)
        with pytest.raises(MigrationFailed, match=r"migrations.up exited 3.*\n.*boom") as e:
            run.upgrade(ms)
        assert e.value.where == f"migrations.up in {tmp_path}"
        with pytest.raises(ConfigError, match=r"migrations\.down exited 127"):
            run.downgrade(ms, "1")
    finally:
        run.close()


def test_given_a_migration_command_that_is_not_installed_then_a_config_error(tmp_path):
    root = alembic_app(tmp_path / "app")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    ms = scan_revisions(versions_dir(root, "plain", "alembic.ini"))
    run = AlembicRunner(url, root, "plain", "alembic.ini", "no-such-python -m alembic")
    try:
        with pytest.raises(ConfigError, match="migration command not found") as e:
            run.upgrade(ms)
        assert e.value.where == "migrations.command"
        assert run.applied_versions(ms) == set()
    finally:
        run.close()
