"""Append-only, hash-chained audit log: verify detects any changed, removed or reordered
event, and, against signed checkpoints kept outside the state store (rollwise.checkpoints),
a removed tail or an emptied log."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from rollwise import checkpoints, reasons
from rollwise.checkpoints import GENESIS, Checkpoint
from rollwise.errors import IntegrityError, RollwiseError
from rollwise.store.tables import events

__all__ = ["GENESIS", "Checkpoint", "Event", "VerifyResult", "append", "checkpoint",
           "checkpointer", "count", "digest", "export", "iter_events", "recorder", "verify",
           "verify_with_checkpoints"]

# A checkpoint is written after an event of one of these actions, unless its outcome says
# the operation goes on. An extra checkpoint costs a signature and a line, a missing one
# leaves a tail that can be cut unnoticed: so new outcomes count as ends.
CHECKPOINT_AFTER: Final = frozenset({
    "deploy", "rollback", "abort", "recover", "release", "prune", "secret", "backup_verify",
    "backup_restore",
})
CHECKPOINT: Final = "checkpoint"  # the action of a checkpoint that could not be written
GOES_ON: Final = frozenset({"started", "requested", "resume", "forced", "progress"})
NO_CHECKPOINT: Final = ("no checkpoint: truncation cannot be detected; `rollwise audit "
                        "checkpoint` writes one (see docs/audit.md)")


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
    """`count` events checked and intact; when not `ok`, the first bad event (None when the
    checkpoints cannot say which) and the problem. `checkpoint`: the newest checkpoint the
    log matched; `note`: what an intact result still cannot tell."""

    ok: bool
    count: int
    first_bad_seq: int | None = None
    problem: str = ""
    checkpoint: Checkpoint | None = None
    note: str = ""


_FIELDS = ("seq", "ts", "actor", "action", "env", "version", "git_commit", "outcome",
           "reason", "data")
_SCAN = select(*(events.c[k] for k in (*_FIELDS, "prev_hash", "hash"))).order_by(events.c.seq)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The canonical JSON of an event: json.dumps(body, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False), spelled out because verify computes it for every event.
_CANONICAL = ('{"action":%s,"actor":%s,"data":%s,"env":%s,"git_commit":%s,"outcome":%s,'
              '"reason":%s,"seq":%s,"ts":%s,"version":%s}')


def digest(prev_hash: str, row: Mapping[str, Any]) -> str:
    return _digest(prev_hash, *(row[k] for k in _FIELDS))


def _digest(prev_hash: str, seq: Any, ts: Any, actor: Any, action: Any, env: Any,
            version: Any, git_commit: Any, outcome: Any, reason: Any, data: Any) -> str:
    j = _json  # ts goes in as its float's repr, a JSON string that needs no escaping
    canon = _CANONICAL % (j(action), j(actor), j(data), j(env), j(git_commit), j(outcome),
                          j(reason), j(seq), f'"{float(ts)!r}"', j(version))
    return hashlib.sha256(f"{prev_hash}\n{canon}".encode()).hexdigest()


def _json(v: Any) -> str:
    if v is None:
        return "null"
    if type(v) is str:
        return encode_basestring(v)  # what json.dumps uses when ensure_ascii=False
    if type(v) is int:
        return str(v)
    return _ENCODER.encode(v)


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


def verify(engine: Engine, signed: Sequence[Checkpoint] = ()) -> VerifyResult:
    """Check the chain; with `signed` checkpoints (oldest first, as `checkpoints.load`
    returns them), also that the log still holds every event they cover, unchanged."""
    res = _walk(engine, {cp.count: cp for cp in signed if cp.count})
    if not res.ok:
        return res
    if not signed:
        return replace(res, note=NO_CHECKPOINT)
    newest = signed[-1]
    if res.count < newest.count:
        return _cut(res.count, newest)
    after = f"; {_span(newest.count + 1, res.count)} written after it" \
        if res.count > newest.count else ""
    return replace(res, checkpoint=newest, note=f"newest {newest.label()} (key "
                   f"{newest.key_id}) covers {newest.count} events and matches{after}")


def _walk(engine: Engine, signed: Mapping[int, Checkpoint]) -> VerifyResult:
    """One pass over the events, in order, with no query per event."""
    prev, n, agreed = GENESIS, 0, 0  # agreed: events up to the last checkpoint that matched
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=5000).execute(_SCAN):
            if (bad := _link(n + 1, prev, row)) is not None:
                return VerifyResult(False, n, *bad)
            prev, n = row[-1], n + 1
            if (cp := signed.get(n)) is not None:
                if cp.head != prev:
                    return _rewritten(agreed, cp)
                agreed = n
    return VerifyResult(True, n)


def _link(expected: int, prev: str, row: Sequence[Any]) -> tuple[int, str] | None:
    """(first bad seq, problem) when `row` is not event `expected` chained onto `prev`."""
    *fields, prev_hash, this = row
    seq = fields[0]
    if seq != expected:
        what = "removed" if seq > expected else "reordered or duplicated"
        return expected, f"event {expected} is {what}"
    if prev_hash != prev:
        return seq, f"event {seq} does not link to event {expected - 1}"
    if _digest(prev, *fields) != this:
        return seq, f"event {seq} was changed after it was written"
    return None


def _cut(n: int, cp: Checkpoint) -> VerifyResult:
    ends = f"the log ends at event {n}" if n else "the log is empty"
    return VerifyResult(False, n, n + 1, f"{ends} but {cp.label()} covers {cp.count} events: "
                        f"{_span(n + 1, cp.count)} removed", cp)


def _rewritten(agreed: int, cp: Checkpoint) -> VerifyResult:
    span = f"event {cp.count} was" if agreed + 1 == cp.count \
        else f"at least one of events {agreed + 1}\N{EN DASH}{cp.count} was"
    return VerifyResult(False, agreed, None, f"event {cp.count} is not the one {cp.label()} "
                        f"signed: {span} changed and the chain recomputed after it", cp)


def _span(first: int, last: int) -> str:
    return f"event {first} was" if first == last else f"events {first}\N{EN DASH}{last} were"


def verify_with_checkpoints(engine: Engine, settings: checkpoints.Settings,
                            public_key: Path | None = None) -> VerifyResult:
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
        return replace(res, note=f"{res.note}; the signing key {settings.key_file} exists: "
                       f"if it signed checkpoints, {settings.checkpoint_file} and its public "
                       "key were removed")
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


def _next(engine: Engine, settings: checkpoints.Settings, prev: Checkpoint | None,
          pub: Ed25519PublicKey) -> Checkpoint:
    with engine.connect() as conn:
        if prev is not None:
            _still_holds(conn, settings, prev, pub)
        last = conn.execute(
            select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
        ).first()
    n, head = (int(last.seq), str(last.hash)) if last else (0, GENESIS)
    return Checkpoint(seq=prev.seq + 1 if prev else 1, count=n, head=head, ts=time.time(),
                      prev=prev.digest() if prev else GENESIS, app=settings.app,
                      key_id=checkpoints.key_id(pub))


def _still_holds(conn: Connection, settings: checkpoints.Settings, prev: Checkpoint,
                 pub: Ed25519PublicKey) -> None:
    where, hint = str(settings.checkpoint_file), ("`rollwise audit verify` shows what "
                                                   "changed; docs/audit.md says what to do")
    if not checkpoints.signed_by(pub, prev):
        raise IntegrityError(f"the newest checkpoint ({prev.label()}) is not signed by the "
                             "audit key; not chaining onto it", where=where, hint=hint)
    head = conn.execute(select(events.c.hash).where(events.c.seq == prev.count)).scalar() \
        if prev.count else GENESIS
    if head != prev.head:
        what = "is gone" if head is None else "changed"
        raise IntegrityError(f"event {prev.count}, the last one {prev.label()} covers, {what}; "
                             "not signing over a log that lost what was signed",
                             where=where, hint=hint)


def checkpointer(engine: Engine, settings: checkpoints.Settings,
                 emit: Callable[[Event], None]) -> Callable[[Event], None]:
    """An event-bus subscriber, subscribed after `recorder`, that writes a checkpoint after
    each event ending an operation (CHECKPOINT_AFTER). A failed checkpoint does not fail the
    operation: it is emitted as a `checkpoint` event with outcome `error` and the reason."""

    def after(ev: Event) -> None:
        if not ev.record or ev.action not in CHECKPOINT_AFTER or ev.outcome in GOES_ON:
            return
        try:
            checkpoint(engine, settings)
        except (RollwiseError, OSError) as e:
            emit(Event(action=CHECKPOINT, outcome=reasons.ERROR, actor=ev.actor, env=ev.env,
                       reason=str(e)))

    return after


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
