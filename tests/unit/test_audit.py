"""The audit chain detects any changed, removed or reordered event."""

import pytest
from sqlalchemy import delete, update

from rollwise import audit
from rollwise.audit import Event
from rollwise.store.db import open_engine
from rollwise.store.tables import events


@pytest.fixture
def engine(tmp_path):
    e = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    for i in range(5):
        audit.append(e, Event(action="deploy", outcome="ok", actor="ana", env="prod",
                              version=f"1.0.{i}", data={"n": i}))
    return e


def test_given_an_untouched_log_then_verify_passes(engine):
    assert audit.verify(engine) == audit.VerifyResult(True, 5)


@pytest.mark.parametrize(("change", "first_bad"), [
    (update(events).where(events.c.seq == 3).values(version="6.6.6"), 3),
    (update(events).where(events.c.seq == 2).values(outcome="error"), 2),
    (delete(events).where(events.c.seq == 4), 4),
])
def test_given_a_tampered_log_then_verify_names_the_first_bad_event(engine, change, first_bad):
    with engine.begin() as conn:
        conn.execute(change)
    result = audit.verify(engine)
    assert (result.ok, result.first_bad_seq) == (False, first_bad)


def test_given_two_swapped_events_then_verify_fails(engine):
    with engine.begin() as conn:
        conn.execute(update(events).where(events.c.seq == 2).values(seq=99))
        conn.execute(update(events).where(events.c.seq == 3).values(seq=2))
        conn.execute(update(events).where(events.c.seq == 99).values(seq=3))
    result = audit.verify(engine)
    assert (result.ok, result.first_bad_seq) == (False, 2)
