"""The state store on the machine's real PostgreSQL: schema by Alembic, lock, audit chain."""

from __future__ import annotations

import pytest

from rollwise import audit
from rollwise.audit import Event
from rollwise.controller import lock
from rollwise.errors import RollwiseError
from rollwise.store.db import open_engine


def test_store_on_postgresql_keeps_the_chain_and_the_lease(pg_url):
    engine = open_engine(pg_url)
    open_engine(pg_url).dispose()  # a second open finds the schema at head
    for i in range(3):
        audit.append(engine, Event(action="deploy", outcome="ok", actor="ci", version=f"1.{i}"))
    assert audit.verify(engine).ok and audit.count(engine) == 3
    token = lock.try_acquire(engine, "prod", "ci pid 1 on elsewhere")
    assert token is not None and lock.try_acquire(engine, "prod", "other") is None
    engine.dispose()


def test_unreachable_store_says_which_url_without_its_password():
    with pytest.raises(RollwiseError) as e:
        open_engine("postgresql+psycopg://rw:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(e.value) and "rw:***@127.0.0.1:1" in str(e.value)
