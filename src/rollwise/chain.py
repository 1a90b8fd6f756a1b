"""The audit chain's rows without a store library: the event, its canonical JSON and hash,
and an append to a SQLite store with the standard library alone (the quick `hosts run`
path; rollwise.audit appends through SQLAlchemy, to any store, and verifies)."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

GENESIS = "0" * 64  # the chain's start: `prev` of the first event and of the first checkpoint


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


FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "env",
    "version",
    "git_commit",
    "outcome",
    "reason",
    "data",
)

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The canonical JSON of an event: json.dumps(body, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False), spelled out because verify computes it for every event.
_CANONICAL = (
    '{"action":%s,"actor":%s,"data":%s,"env":%s,"git_commit":%s,"outcome":%s,'
    '"reason":%s,"seq":%s,"ts":"%r","version":%s}'
)


def digest(prev_hash: str, row: Mapping[str, Any]) -> str:
    return _digest(prev_hash, *(row[k] for k in FIELDS))


def _digest(
    prev_hash: str,
    seq: Any,
    ts: Any,
    actor: Any,
    action: Any,
    env: Any,
    version: Any,
    git_commit: Any,
    outcome: Any,
    reason: Any,
    data: Any,
) -> str:
    j = _json  # ts goes in as its float's repr, a JSON string that needs no escaping
    canon = _CANONICAL % (
        j(action),
        j(actor),
        j(data),
        j(env),
        j(git_commit),
        j(outcome),
        j(reason),
        j(seq),
        float(ts),
        j(version),
    )
    return hashlib.sha256(f"{prev_hash}\n{canon}".encode()).hexdigest()


def row_hash(row: Sequence[Any]) -> str:
    """`_digest` of a `_SCAN` row over its own prev_hash, with the encoding of text and
    None written out: verify computes it for every event."""
    seq, ts, actor, action, env, version, git_commit, outcome, reason, data, prev, _ = row
    q = encode_basestring
    try:
        canon = _CANONICAL % (
            q(action),
            q(actor),
            q(data),
            "null" if env is None else q(env),
            "null" if git_commit is None else q(git_commit),
            q(outcome),
            "null" if reason is None else q(reason),
            seq if type(seq) is int else _json(seq),
            float(ts),
            "null" if version is None else q(version),
        )
    except TypeError:  # a value that is neither text nor None: the general encoding
        return _digest(prev, *row[:-2])
    return hashlib.sha256(f"{prev}\n{canon}".encode()).hexdigest()


def _json(v: Any) -> str:
    if v is None:
        return "null"
    if type(v) is str:
        return encode_basestring(v)  # what json.dumps uses when ensure_ascii=False
    if type(v) is int:
        return str(v)
    return _ENCODER.encode(v)


def new_row(ev: Event, seq: int, prev: str) -> dict[str, Any]:
    """The `events` row of `ev` as event `seq` after the event hashing to `prev`."""
    row = asdict(ev)
    del row["record"]
    row["data"] = json.dumps(ev.data, sort_keys=True, default=str)
    row.update(seq=seq, prev_hash=prev)
    row["hash"] = digest(prev, row)
    return row


def append_sqlite(database: Path, ev: Event) -> int:
    """Append `ev` to the chain of the SQLite store `database` (at the schema's head); the
    same row as `audit.append`, written under SQLite's write lock, taken before the last
    event is read. Returns its sequence number."""
    con = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=NORMAL")  # as rollwise.store.db sets it
        con.execute("BEGIN IMMEDIATE")
        last = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        row = new_row(ev, seq, prev)
        con.execute(
            f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        con.execute("COMMIT")
        return seq
    finally:
        con.close()  # without COMMIT, the insert is rolled back


def actor() -> str:
    """Who acts: ROLLWISE_ACTOR (set it in CI), else the login name."""
    if a := os.environ.get("ROLLWISE_ACTOR"):
        return a
    try:
        return getpass.getuser()
    except OSError:
        return str(os.getuid())
