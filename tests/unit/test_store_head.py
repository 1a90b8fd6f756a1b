"""The state store's quick check at open (one query, no Alembic) knows the newest revision,
and a store made by an older rollwise is still brought up to it."""

from __future__ import annotations

import sqlite3

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from rollwise.store import HEAD, db


def test_head_is_the_newest_revision_of_the_store_migrations():
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD


def test_a_new_store_and_an_older_one_are_brought_to_head(tmp_path):
    engine = db.open_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()
    with sqlite3.connect(tmp_path / "new.db") as conn:  # as if an older rollwise made it
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
        conn.execute("ALTER TABLE releases DROP COLUMN schema")
        conn.execute("DROP TABLE api_tokens")
        conn.execute("DROP TABLE approvals")
        conn.execute("DROP TABLE freeze_windows")
        conn.execute("DROP TABLE sessions")
        conn.execute("DROP TABLE users")
    engine = db.open_engine(f"sqlite:///{tmp_path / 'new.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
        assert "schema" in {r[1] for r in conn.execute(text("PRAGMA table_info(releases)"))}
