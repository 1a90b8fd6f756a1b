"""Append-only, hash-chained audit log: verify detects any changed, removed or reordered
event, and, against signed checkpoints kept outside the state store (rollwise.checkpoints),
a removed tail or an emptied log."""

from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, Final, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, Select, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from rollwise import checkpoints, reasons, retry
from rollwise.chain import FIELDS, GENESIS, Event, digest, new_row, row_hash
from rollwise.checkpoints import Checkpoint
from rollwise.errors import IntegrityError, RollwiseError
from rollwise.store.tables import events

__all__ = [
    "GENESIS",
    "Checkpoint",
    "Event",
    "VerifyResult",
    "append",
    "checkpoint",
    "checkpointer",
    "count",
    "digest",
    "export",
    "iter_events",
    "recorder",
    "verify",
    "verify_with_checkpoints",
]

# A checkpoint is written after an event of one of these actions, unless its outcome says
# the operation goes on. An extra checkpoint costs a signature and a line, a missing one
# leaves a tail that can be cut unnoticed: so new outcomes count as ends.
CHECKPOINT_AFTER: Final = frozenset(
    {
        "deploy",
        "rollback",
        "abort",
        "recover",
        "release",
        "prune",
        "secret",
        "backup_verify",
        "backup_restore",
    }
)
CHECKPOINT: Final = "checkpoint"  # the action of a checkpoint that could not be written
GOES_ON: Final = frozenset({"started", "requested", "resume", "forced", "progress"})
MIN_SPAN: Final = 50_000  # fewer events per reader: forking costs more than it saves
MAX_READERS: Final = 8  # each reader process holds a database connection
NO_CHECKPOINT: Final = (
    "no checkpoint: truncation cannot be detected; `rollwise audit "
    "checkpoint` writes one (see docs/audit.md)"
)


@dataclass(frozen=True)
class VerifyResult:
    """`count` events checked and intact; when not `ok`, the first bad event (None when the
    checkpoints cannot say which) and the problem. `checkpoint`: the newest checkpoint the
    log matched; `note`: what an intact result still cannot tell."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str = ""
    checkpoint: Checkpoint | None = None
    note: str = ""


_SCAN = select(*(events.c[k] for k in (*FIELDS, "prev_hash", "hash"))).order_by(events.c.seq)


def recorder(engine: Engine) -> Callable[[Event], None]:
    """An event-bus subscriber that appends every event to the chain."""

    def record(ev: Event) -> None:
        if ev.record:
            append(engine, ev)

    return record


def append(engine: Engine, ev: Event) -> int:
    """Append `ev` to the chain; returns its sequence number."""

    def once() -> int:
        with engine.begin() as conn:
            return _append(conn, ev)

    try:  # another writer took the same seq: chain onto it
        return retry.call(
            once,
            attempts=50,
            on_error=lambda e: isinstance(e, SAIntegrityError),
            wait=lambda n, _: 0.01,
        )
    except SAIntegrityError:
        raise RuntimeError("audit log busy: could not append after 50 attempts") from None


def _append(conn: Connection, ev: Event) -> int:
    last = conn.execute(
        select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    conn.execute(insert(events).values(**new_row(ev, seq, prev)))
    return seq


def verify(
    engine: Engine, signed: Sequence[Checkpoint] = (), processes: int | None = None
) -> VerifyResult:
    """Check the chain; with `signed` checkpoints (oldest first, as `checkpoints.load`
    returns them), also that the log still holds every event they cover, unchanged.
    `processes` read and hash spans of the log side by side (None: one per usable core, up
    to MAX_READERS, each with at least MIN_SPAN events); the result is one reader's."""
    res = _walk(engine, {cp.count: cp for cp in signed if cp.count}, processes)
    if not res.ok:
        return res
    if not signed:
        return replace(res, note=NO_CHECKPOINT)
    newest = signed[-1]
    if res.count < newest.count:
        return _cut(res.count, newest)
    after = (
        f"; {_span(newest.count + 1, res.count)} written after it"
        if res.count > newest.count
        else ""
    )
    return replace(
        res,
        checkpoint=newest,
        note=f"newest {newest.label()} (key "
        f"{newest.key_id}) covers {newest.count} events and matches{after}",
    )


@dataclass(frozen=True)
class _Span:
    """The events with `after` < seq <= `upto` (None: no bound), a reader's share."""

    after: int | None
    upto: int | None

    @property
    def first(self) -> int:
        return 1 if self.after is None else self.after + 1


@dataclass(frozen=True)
class _Part:
    """What a reader found in its span: `result` as if the log began at event `first`;
    `head`, the prev_hash of the span's first event (None when the span is empty or that
    event has the wrong seq), whose link the reader cannot check; `last`, the hash of its
    last event when `result` is ok."""

    first: int
    result: VerifyResult
    head: str | None = None
    last: str = GENESIS


def _walk(engine: Engine, signed: Mapping[int, Checkpoint], processes: int | None) -> VerifyResult:
    """One pass over the events, in order, with no query per event: split in spans read
    side by side when there are cores to spare, then joined."""
    with engine.connect() as conn:
        got = conn.execute(select(func.max(events.c.seq))).scalar()
    top = got if type(got) is int else 0  # SQLite keeps whatever was written there
    n = max(1, processes or min(_cores(), MAX_READERS, top // MIN_SPAN))
    if n == 1 or not _can_fork(engine):
        return _join([_read(engine, _Span(None, None), signed)])
    return _join(_read_all(engine, _spans(top, n), signed))


def _spans(top: int, n: int) -> list[_Span]:
    """`n` spans of about `top / n` seqs; the first and the last are open-ended, so that
    together they hold every event whatever its seq."""
    cuts = [None, *(top * i // n for i in range(1, n)), None]
    return [_Span(a, b) for a, b in pairwise(cuts)]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _can_fork(engine: Engine) -> bool:
    """A forked child of a process with other threads can deadlock on a lock one held; an
    SQLite database in memory is seen by its own connection only."""
    u = engine.url
    in_memory = u.get_backend_name() == "sqlite" and (
        u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"
    )
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1 and not in_memory


def _read_all(
    engine: Engine, spans: Sequence[_Span], signed: Mapping[int, Checkpoint]
) -> list[_Part]:
    """The first span read here, each other one by a forked child at the same time."""
    ctx = mp.get_context("fork")
    children = []
    try:
        for span in spans[1:]:
            answer, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_child, args=(engine, span, signed, send), daemon=True)
            child.start()
            send.close()
            children.append((child, answer))
        parts = [_read(engine, spans[0], signed)]
        return parts + [_answer(answer) for _, answer in children]
    except BaseException:
        for child, _ in children:
            child.terminate()
        raise
    finally:
        for child, answer in children:
            answer.close()
            child.join()


def _child(
    engine: Engine, span: _Span, signed: Mapping[int, Checkpoint], send: mp_connection.Connection
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-c: the parent ends its children
    engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    try:
        part: _Part | Exception = _read(engine, span, signed)
    except Exception as e:  # raised again in the parent
        part = e
    engine.dispose()  # closes the child's own connection before it exits
    send.send(part)


def _answer(answer: mp_connection.Connection) -> _Part:
    try:
        got = answer.recv()
    except EOFError:
        raise RuntimeError("audit verify: a reader process ended without an answer") from None
    if isinstance(got, Exception):
        raise got
    return cast(_Part, got)


def _read(engine: Engine, span: _Span, signed: Mapping[int, Checkpoint]) -> _Part:
    q = _SCAN
    if span.after is not None:
        q = q.where(events.c.seq > span.after)
    if span.upto is not None:
        q = q.where(events.c.seq <= span.upto)
    with engine.connect() as conn:
        return _check(_rows(conn, q), span.first, signed)


def _rows(conn: Connection, q: Select[Any]) -> Iterator[Sequence[Any]]:
    """The rows of `q` as the driver's own tuples where its cursor streams them (sqlite3;
    psycopg with a named, server-side cursor): SQLAlchemy rows add about 8% to verify's
    time. Other drivers go through SQLAlchemy."""
    raw: Any = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        cur = raw.cursor()
    elif conn.dialect.driver in ("psycopg", "psycopg2"):
        cur = raw.cursor(name="rollwise_audit_verify")
        cur.itersize = 5000
    else:
        yield from conn.execution_options(yield_per=5000).execute(q)
        return
    with closing(cur):
        cur.execute(str(q.compile(conn, compile_kwargs={"literal_binds": True})))
        yield from cur


def _check(rows: Iterable[Sequence[Any]], first: int, signed: Mapping[int, Checkpoint]) -> _Part:
    """`rows` as events `first`, `first + 1`, …; the first one's link is left to `_join`."""
    n, head, last = first - 1, None, None
    for row in rows:
        n += 1
        if n == first and row[0] == first:
            head = row[-2]
        if (problem := _link(n, last, row)) is not None:
            return _Part(first, VerifyResult(False, n - 1, n, problem), head)
        last = row[-1]
        if (cp := signed.get(n)) is not None and cp.head != last:
            return _Part(first, _rewritten(cp, signed), head)
    return _Part(first, VerifyResult(True, n), head, last or GENESIS)


def _join(parts: Sequence[_Part]) -> VerifyResult:
    """The readers' parts, in order, as one reader of the whole log finds it."""
    n, last = 0, GENESIS
    for part in parts:
        if part.head is None and part.result.ok:
            continue  # an empty span
        if part.first != n + 1:  # the spans before ended early
            return VerifyResult(False, n, n + 1, f"event {n + 1} is removed")
        if part.head is not None and part.head != last:
            return VerifyResult(False, n, n + 1, f"event {n + 1} does not link to event {n}")
        if not part.result.ok:
            return part.result
        n, last = part.result.count, part.last
    return VerifyResult(True, n)


def _link(n: int, last: str | None, row: Sequence[Any]) -> str | None:
    """What is wrong with `row` as event `n` chained onto the event hashing to `last`
    (None: not known here), if anything."""
    seq, prev_hash, this = row[0], row[-2], row[-1]
    if seq != n:
        return f"event {n} is {'removed' if seq > n else 'reordered or duplicated'}"
    if last is not None and prev_hash != last:
        return f"event {n} does not link to event {n - 1}"
    if row_hash(row) != this:
        return f"event {n} was changed after it was written"
    return None


def _cut(n: int, cp: Checkpoint) -> VerifyResult:
    ends = f"the log ends at event {n}" if n else "the log is empty"
    return VerifyResult(
        False,
        n,
        n + 1,
        f"{ends} but {cp.label()} covers {cp.count} events: {_span(n + 1, cp.count)} removed",
        cp,
    )


def _rewritten(cp: Checkpoint, signed: Mapping[int, Checkpoint]) -> VerifyResult:
    """Event `cp.count` is not the one `cp` signed; every checkpoint before it matched."""
    agreed = max((count for count in signed if count < cp.count), default=0)
    span = (
        f"event {cp.count} was"
        if agreed + 1 == cp.count
        else f"at least one of events {agreed + 1}\N{EN DASH}{cp.count} was"
    )
    return VerifyResult(
        False,
        agreed,
        None,
        f"event {cp.count} is not the one {cp.label()} "
        f"signed: {span} changed and the chain recomputed after it",
        cp,
    )


def _span(first: int, last: int) -> str:
    return f"event {first} was" if first == last else f"events {first}\N{EN DASH}{last} were"


def verify_with_checkpoints(
    engine: Engine, settings: checkpoints.Settings, public_key: Path | None = None
) -> VerifyResult:
    """`verify` against the checkpoint file of `settings`, checked first (links, key,
    signature; `public_key` instead of the one beside it). A broken chain of events is
    reported before a tampered checkpoint file."""
    try:
        signed = checkpoints.load(settings, public_key)
    except IntegrityError as e:
        res = verify(engine)
        return replace(res, ok=False, problem=str(e), note="") if res.ok else res
    res = verify(engine, signed)
    if not signed and settings.key_file.exists():  # keygen alone, or checkpoints deleted
        return replace(
            res,
            note=f"{res.note}; the signing key {settings.key_file} exists: "
            f"if it signed checkpoints, {settings.checkpoint_file} and its public "
            "key were removed",
        )
    return res


def checkpoint(engine: Engine, settings: checkpoints.Settings) -> Checkpoint:
    """Sign a checkpoint of the chain as it is now and append it to the checkpoint file,
    then send copies (syslog, webhook). The key is created on first use. Refuses to chain
    onto a checkpoint the key did not sign, or over a log that lost what it covered."""
    key = checkpoints.signing_key(settings)
    file = checkpoints.FileSink(settings.checkpoint_file)
    with file.locked():
        prev = file.read_latest()
        cp = checkpoints.sign(key, _next(engine, settings, prev, key.public_key()))
        file.write(cp)
    checkpoints.ship(cp, checkpoints.copies(settings))
    return cp


def _next(
    engine: Engine, settings: checkpoints.Settings, prev: Checkpoint | None, pub: Ed25519PublicKey
) -> Checkpoint:
    with engine.connect() as conn:
        if prev is not None:
            _still_holds(conn, settings, prev, pub)
        last = conn.execute(
            select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
        ).first()
    n, head = (int(last.seq), str(last.hash)) if last else (0, GENESIS)
    return Checkpoint(
        seq=prev.seq + 1 if prev else 1,
        count=n,
        head=head,
        ts=time.time(),
        prev=prev.digest() if prev else GENESIS,
        app=settings.app,
        key_id=checkpoints.key_id(pub),
    )


def _still_holds(
    conn: Connection, settings: checkpoints.Settings, prev: Checkpoint, pub: Ed25519PublicKey
) -> None:
    where, hint = (
        str(settings.checkpoint_file),
        ("`rollwise audit verify` shows what changed; docs/audit.md says what to do"),
    )
    if not checkpoints.signed_by(pub, prev):
        raise IntegrityError(
            f"the newest checkpoint ({prev.label()}) is not signed by the "
            "audit key; not chaining onto it",
            where=where,
            hint=hint,
        )
    head = (
        conn.execute(select(events.c.hash).where(events.c.seq == prev.count)).scalar()
        if prev.count
        else GENESIS
    )
    if head != prev.head:
        what = "is gone" if head is None else "changed"
        raise IntegrityError(
            f"event {prev.count}, the last one {prev.label()} covers, {what}; "
            "not signing over a log that lost what was signed",
            where=where,
            hint=hint,
        )


def checkpointer(
    engine: Engine, settings: checkpoints.Settings, emit: Callable[[Event], None]
) -> Callable[[Event], None]:
    """An event-bus subscriber, subscribed after `recorder`, that writes a checkpoint after
    each event ending an operation (CHECKPOINT_AFTER). A failed checkpoint does not fail the
    operation: it is emitted as a `checkpoint` event with outcome `error` and the reason."""

    def after(ev: Event) -> None:
        if not ev.record or ev.action not in CHECKPOINT_AFTER or ev.outcome in GOES_ON:
            return
        try:
            checkpoint(engine, settings)
        except (RollwiseError, OSError) as e:
            emit(
                Event(
                    action=CHECKPOINT,
                    outcome=reasons.ERROR,
                    actor=ev.actor,
                    env=ev.env,
                    reason=str(e),
                )
            )

    return after


def export(engine: Engine, out: IO[str]) -> int:
    n = 0
    for row in iter_events(engine):
        out.write(json.dumps(row, sort_keys=True) + "\n")
        n += 1
    return n


def iter_events(
    engine: Engine, env: str | None = None, limit: int | None = None, action: str | None = None
) -> Iterator[dict[str, Any]]:
    q = select(events).order_by(events.c.seq)
    if env:
        q = q.where(events.c.env == env)
    if action:
        q = q.where(events.c.action == action)
    if limit:
        q = q.order_by(None).order_by(events.c.seq.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for row in sorted(rows, key=lambda r: int(r["seq"])):
        row["data"] = json.loads(row["data"])
        yield row


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())
