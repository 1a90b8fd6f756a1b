"""The audit chain detects any changed, removed or reordered event."""

import hashlib
import json

import pytest
from sqlalchemy import delete, update

from rollwise import audit
from rollwise.audit import Event
from rollwise.checkpoints import Settings
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
    assert audit.verify(engine) == audit.VerifyResult(True, 5, note=audit.NO_CHECKPOINT)


def test_given_a_known_event_then_its_hash_never_changes():
    """Logs written by earlier versions must keep verifying."""
    row = {"seq": 7, "ts": 1700000000.25, "actor": "ana", "action": "deploy", "env": "prod",
           "version": "1.2.3", "git_commit": None, "outcome": "ok", "reason": "é ✓",
           "data": '{"n": 1}'}
    assert audit.digest(audit.GENESIS, row) == \
        "fdc2eabc0a1aba9fad0355383461177d2327ef2f0bf5f4e8d1e6f3df60b2b339"


@pytest.mark.parametrize("text", ['say "hi"\n\t\\', "\x00\x1f\x7f", "ünï ✓ \u2028 😀", ""])
def test_given_any_text_then_the_digest_is_the_canonical_json_one(text):
    row = {"seq": 2**40, "ts": 0.1, "actor": text, "action": "deploy", "env": None,
           "version": text, "git_commit": None, "outcome": "ok", "reason": text, "data": "{}"}
    body = {**row, "ts": repr(0.1)}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(f"{'a' * 64}\n{canon}".encode()).hexdigest()
    assert audit.digest("a" * 64, row) == expected


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


def test_given_no_checkpoint_when_the_tail_is_cut_then_the_chain_alone_cannot_tell(engine):
    with engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq >= 4))
    result = audit.verify(engine)
    assert (result.ok, result.count, result.note) == (True, 3, audit.NO_CHECKPOINT)


def test_given_a_checkpoint_when_the_tail_is_cut_then_verify_fails(engine, tmp_path):
    settings = Settings("shop", tmp_path / "audit.key", tmp_path / "trail" / "audit.jsonl")
    audit.checkpoint(engine, settings)
    with engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq >= 4))
    result = audit.verify_with_checkpoints(engine, settings)
    assert (result.ok, result.count, result.first_bad_seq) == (False, 3, 4)
    assert result.problem.endswith("covers 5 events: events 4\N{EN DASH}5 were removed")
