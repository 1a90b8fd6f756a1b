"""The audit chain detects any changed, removed or reordered event."""

import hashlib
import json
import os

import pytest
from sqlalchemy import delete, update

from rollwise import audit, chain, checkpoints
from rollwise.audit import Event
from rollwise.checkpoints import Settings
from rollwise.store.db import open_engine
from rollwise.store.tables import events
from tests.unit.test_audit_checkpoints import rewrite_from


@pytest.fixture
def engine(tmp_path):
    e = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    for i in range(5):
        audit.append(
            e,
            Event(
                action="deploy",
                outcome="ok",
                actor="ana",
                env="prod",
                version=f"1.0.{i}",
                data={"n": i},
            ),
        )
    return e


def test_given_an_untouched_log_then_verify_passes(engine):
    assert audit.verify(engine) == audit.VerifyResult(True, 5, note=audit.NO_CHECKPOINT)


def test_given_a_known_event_then_its_hash_never_changes():
    """Logs written by earlier versions must keep verifying."""
    row = {
        "seq": 7,
        "ts": 1700000000.25,
        "actor": "ana",
        "action": "deploy",
        "env": "prod",
        "version": "1.2.3",
        "git_commit": None,
        "outcome": "ok",
        "reason": "é ✓",
        "data": '{"n": 1}',
    }
    assert (
        audit.digest(audit.GENESIS, row)
        == "fdc2eabc0a1aba9fad0355383461177d2327ef2f0bf5f4e8d1e6f3df60b2b339"
    )


@pytest.mark.parametrize("text", ['say "hi"\n\t\\', "\x00\x1f\x7f", "ünï ✓ \u2028 😀", ""])
def test_given_any_text_then_the_digest_is_the_canonical_json_one(text):
    row = {
        "seq": 2**40,
        "ts": 0.1,
        "actor": text,
        "action": "deploy",
        "env": None,
        "version": text,
        "git_commit": None,
        "outcome": "ok",
        "reason": text,
        "data": "{}",
    }
    body = {**row, "ts": repr(0.1)}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(f"{'a' * 64}\n{canon}".encode()).hexdigest()
    assert audit.digest("a" * 64, row) == expected


@pytest.mark.parametrize("text", ['say "hi"\n\t\\', "ünï ✓ \u2028 😀", "", None, 42, 2.5, True])
def test_given_any_value_then_verify_hashes_a_row_as_digest_does(text):
    row = {
        "seq": 9,
        "ts": 1700000000.25,
        "actor": text,
        "action": "deploy",
        "env": text,
        "version": text,
        "git_commit": None,
        "outcome": "ok",
        "reason": text,
        "data": "{}",
    }
    prev = "b" * 64
    stored = (*(row[k] for k in chain.FIELDS), prev, "")
    assert chain.row_hash(stored) == audit.digest(prev, row)


@pytest.mark.parametrize(
    ("change", "first_bad"),
    [
        (update(events).where(events.c.seq == 3).values(version="6.6.6"), 3),
        (update(events).where(events.c.seq == 2).values(outcome="error"), 2),
        (delete(events).where(events.c.seq == 4), 4),
    ],
)
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


def add(engine, n):
    for i in range(n):
        audit.append(
            engine,
            Event(
                action="deploy",
                outcome="ok",
                actor="zoë",
                env=None,
                version=f"1.0.{i}",
                reason="é ✓" if i % 3 else None,
                data={"n": i},
            ),
        )


def swap(a, b):
    return [
        update(events).where(events.c.seq == a).values(seq=-1),
        update(events).where(events.c.seq == b).values(seq=a),
        update(events).where(events.c.seq == -1).values(seq=b),
    ]


def change(at, **values):
    return [update(events).where(events.c.seq == at).values(**values)]


TAMPERINGS = {  # of a log of 12 events; 2 readers split it after event 6, 3 after 4 and 8
    "nothing": [],
    "first changed": change(1, actor="eve"),
    "last of a span changed": change(6, version="x"),
    "first of a span changed": change(7, data="{}"),
    "last changed": change(12, reason="ok"),
    "a hash changed": change(6, hash="f" * 64),
    "a link changed": change(7, prev_hash="f" * 64),
    "first removed": [delete(events).where(events.c.seq == 1)],
    "end of a span removed": [delete(events).where(events.c.seq.between(5, 6))],
    "start of a span removed": [delete(events).where(events.c.seq == 7)],
    "a whole span removed": [delete(events).where(events.c.seq.between(5, 8))],
    "tail cut": [delete(events).where(events.c.seq >= 7)],
    "swapped across spans": swap(6, 7),
    "seq before the first": change(1, seq=0),
    "last seq far ahead": change(12, seq=100),
}


@pytest.fixture
def twelve(tmp_path):
    e = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add(e, 12)
    return e


@pytest.mark.parametrize("processes", [2, 3, 5])
@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_given_a_tampered_log_when_read_by_several_processes_then_the_result_is_one_readers(
    twelve, tampering, processes
):
    with twelve.begin() as conn:
        for statement in TAMPERINGS[tampering]:
            conn.execute(statement)
    one = audit.verify(twelve, processes=1)
    assert audit.verify(twelve, processes=processes) == one
    assert one.ok == (tampering in ("nothing", "tail cut"))


@pytest.mark.parametrize("processes", [2, 3])
@pytest.mark.parametrize(
    ("rewritten", "agreed", "span"),
    [
        (2, 0, "at least one of events 1\N{EN DASH}4 was"),
        (7, 4, "at least one of events 5\N{EN DASH}8 was"),
        (12, 11, "event 12 was"),
    ],
)
def test_given_checkpoints_when_several_processes_read_a_rewritten_chain_then_they_name_the_span(
    tmp_path, rewritten, agreed, span, processes
):
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    settings = Settings("shop", tmp_path / "audit.key", tmp_path / "trail" / "audit.jsonl")
    for n in (4, 4, 3, 1):  # checkpoints at 4, 8, 11 and 12 events
        add(engine, n)
        audit.checkpoint(engine, settings)
    rewrite_from(engine, rewritten, outcome="error")
    signed = checkpoints.load(settings)
    one = audit.verify(engine, signed, processes=1)
    assert audit.verify(engine, signed, processes=processes) == one
    assert (one.ok, one.count, one.first_bad_seq) == (False, agreed, None)
    assert f"{span} changed and the chain recomputed" in one.problem


def in_children(monkeypatch, then):
    """Reading any span but the first (a forked child's) does `then` instead. Children are
    forked even if an earlier test in this worker left a thread behind (e.g. a notification
    sender waiting on its queue), which would otherwise make verify read alone."""
    monkeypatch.setattr(audit, "_can_fork", lambda engine: True)
    read = audit._read
    monkeypatch.setattr(
        audit,
        "_read",
        lambda engine, span, signed: (
            read(engine, span, signed) if span.after is None else then(span)
        ),
    )


def test_given_a_reader_process_that_fails_then_verify_raises_its_error(twelve, monkeypatch):
    def fail(span):
        raise ValueError(f"cannot read after event {span.after}")

    in_children(monkeypatch, fail)
    with pytest.raises(ValueError, match="cannot read after event 6"):
        audit.verify(twelve, processes=2)


def test_given_a_reader_process_that_dies_then_verify_says_so(twelve, monkeypatch):
    in_children(monkeypatch, lambda span: os._exit(3))
    with pytest.raises(RuntimeError, match="a reader process ended without an answer"):
        audit.verify(twelve, processes=2)
