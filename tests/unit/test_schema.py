"""The Alembic migrations build exactly the schema the code declares."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rollwise.store.db import open_engine
from rollwise.store.tables import metadata


def test_migrations_match_the_declared_tables(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
