"""Append-only, hash-chained audit log: verify detects any changed, removed or reordered event."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from rollwise.store.tables import events

GENESIS = "0" * 64


@dataclass(frozen=True)
class Event:
    """One thing that happened: who did what, where, to which version, and how it ended."""

    action: str
    outcome: str
    actor: str
    env: str | None = None
    version: str | None = None
    git_commit: str | None = None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    record: bool = True  # False: progress only (each analysis look), not kept in the log


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str = ""


def digest(prev_hash: str, row: dict[str, Any]) -> str:
    body = {k: row[k] for k in ("seq", "ts", "actor", "action", "env", "version",
                                "git_commit", "outcome", "reason", "data")}
    body["ts"] = repr(float(body["ts"]))
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canon}".encode()).hexdigest()


def recorder(engine: Engine) -> Callable[[Event], None]:
    """An event-bus subscriber that appends every event to the chain."""

    def record(ev: Event) -> None:
        if ev.record:
            append(engine, ev)

    return record


def append(engine: Engine, ev: Event) -> int:
    """Append `ev` to the chain; returns its sequence number."""
    for _ in range(50):
        try:
            with engine.begin() as conn:
                return _append(conn, ev)
        except SAIntegrityError:
            time.sleep(0.01)  # another writer took the same seq; chain onto it
    raise RuntimeError("audit log busy: could not append after 50 attempts")


def _append(conn: Connection, ev: Event) -> int:
    last = conn.execute(
        select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    row = asdict(ev)
    del row["record"]
    row["data"] = json.dumps(ev.data, sort_keys=True, default=str)
    row.update(seq=seq, prev_hash=prev)
    row["hash"] = digest(prev, row)
    conn.execute(insert(events).values(**row))
    return seq


def verify(engine: Engine) -> VerifyResult:
    prev, expected, count = GENESIS, 1, 0
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=5000).execute(
            select(events).order_by(events.c.seq)
        )
        for r in rows.mappings():
            row = dict(r)
            if row["seq"] != expected:
                what = "removed" if row["seq"] > expected else "reordered or duplicated"
                return VerifyResult(False, count, expected, f"event {expected} is {what}")
            if row["prev_hash"] != prev:
                return VerifyResult(False, count, row["seq"],
                                    f"event {row['seq']} does not link to event {expected - 1}")
            if digest(prev, row) != row["hash"]:
                return VerifyResult(False, count, row["seq"],
                                    f"event {row['seq']} was changed after it was written")
            prev, expected, count = row["hash"], expected + 1, count + 1
    return VerifyResult(True, count)


def export(engine: Engine, out: IO[str]) -> int:
    n = 0
    for row in iter_events(engine):
        out.write(json.dumps(row, sort_keys=True) + "\n")
        n += 1
    return n


def iter_events(engine: Engine, env: str | None = None, limit: int | None = None,
                action: str | None = None) -> Iterator[dict[str, Any]]:
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
