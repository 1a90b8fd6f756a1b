"""The two-person rule (docs/approvals.md): an environment with `approvals` runs a deploy
only once `required` people other than the one who asked have approved it, before it
expires. The rules are pure functions of a request and the clock (`decide`); the store keeps
requests in `approvals`. A rollback needs no approval: it is the safe action.

A request is pending, then approved (the deploy may run, once), rejected, expired or used.
The deploy checks its approval when it runs, under the environment's lock, not only when
it was asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, insert, select, update

from rollwise.errors import NotFound, RollwiseError, UsageError
from rollwise.store.tables import approvals

PENDING, APPROVED, REJECTED, EXPIRED, USED = "pending", "approved", "rejected", "expired", "used"


@dataclass(frozen=True)
class Request:
    id: int
    env: str
    version: str
    requested_by: str
    created_at: float
    expires_at: float
    required: int
    state: str = PENDING
    approvers: tuple[str, ...] = ()
    decided_by: str | None = None
    reason: str | None = None

    def view(self) -> dict[str, Any]:
        return {**self.__dict__, "approvers": list(self.approvers)}


class Refused(RollwiseError):
    pass


def current(r: Request, now: float) -> Request:
    """The request as of `now`: a pending or approved one past its time has expired."""
    if r.state in (PENDING, APPROVED) and now >= r.expires_at:
        return replace(r, state=EXPIRED)
    return r


def decide(r: Request, who: str, approve: bool, now: float, reason: str | None = None) -> Request:
    """`who` approves (or rejects) `r` at `now`; the request after it, or Refused."""
    r = current(r, now)
    if r.state != PENDING:
        raise Refused(
            f"approval request {r.id} is {r.state}, not pending",
            hint="ask for a new one: deploy again through the team server",
        )
    if who == r.requested_by:
        raise Refused(
            f"{who} asked for this deploy and cannot approve it",
            where=f"approval request {r.id}",
            hint=f"{r.required} approval(s) from someone else are needed",
        )
    if not approve:
        return replace(r, state=REJECTED, decided_by=who, reason=reason)
    if who in r.approvers:
        raise Refused(f"{who} has approved request {r.id} already", where=f"approval {r.id}")
    approvers = (*r.approvers, who)
    done = len(approvers) >= r.required
    return replace(
        r,
        approvers=approvers,
        state=APPROVED if done else PENDING,
        decided_by=who if done else None,
    )


def usable(r: Request, env: str, version: str, now: float) -> None:
    """Refuse a deploy of `version` to `env` with `r` unless it is approved and unused."""
    r = current(r, now)
    if (r.env, r.version) != (env, version):
        raise Refused(
            f"approval request {r.id} is for {r.version} on {r.env}, not {version} on {env}",
            where=f"approval request {r.id}",
        )
    if r.state != APPROVED:
        got = f"{len(r.approvers)} of {r.required} approvals"
        raise Refused(
            f"approval request {r.id} is {r.state} ({got}); the deploy does not run",
            where=f"approval request {r.id}",
            hint="`rollwise approval list` shows it; an approver runs `rollwise approval "
            f"approve {r.id}`",
        )


def _row(m: Any) -> Request:
    return Request(
        id=m["id"],
        env=m["env"],
        version=m["version"],
        requested_by=m["requested_by"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        required=m["required"],
        state=m["state"],
        approvers=tuple(m["approvers"] or ()),
        decided_by=m["decided_by"],
        reason=m["reason"],
    )


def ask(
    engine: Engine, env: str, version: str, who: str, required: int, expire_h: float
) -> Request:
    now = time.time()
    values = {
        "env": env,
        "version": version,
        "requested_by": who,
        "created_at": now,
        "expires_at": now + expire_h * 3600,
        "required": required,
        "state": PENDING,
        "approvers": [],
    }
    with engine.begin() as conn:
        key = conn.execute(insert(approvals).values(**values)).inserted_primary_key
    assert key is not None
    return get(engine, int(key[0]))


def get(engine: Engine, request_id: int) -> Request:
    with engine.connect() as conn:
        m = conn.execute(select(approvals).where(approvals.c.id == request_id)).mappings().first()
    if m is None:
        raise NotFound(f"no approval request {request_id}", hint="`rollwise approval list`")
    return current(_row(m), time.time())


def listed(engine: Engine, env: str | None = None) -> list[Request]:
    q = select(approvals).order_by(approvals.c.id.desc()).limit(200)
    if env:
        q = q.where(approvals.c.env == env)
    with engine.connect() as conn:
        return [current(_row(m), time.time()) for m in conn.execute(q).mappings()]


def save(engine: Engine, r: Request, was: str) -> Request:
    """Store `r`'s new state, if the stored one is still `was` (two approvers at once: the
    second is refused, not lost)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(approvals)
            .where(approvals.c.id == r.id, approvals.c.state == was)
            .values(
                state=r.state,
                approvers=list(r.approvers),
                decided_by=r.decided_by,
                reason=r.reason,
            )
        ).rowcount
    if not done:
        raise UsageError(f"approval request {r.id} changed meanwhile; look again and retry")
    return r


def use(engine: Engine, request_id: int, env: str, version: str) -> Request:
    """Take an approved request for this deploy: once only."""
    r = get(engine, request_id)
    usable(r, env, version, time.time())
    return save(engine, replace(r, state=USED), APPROVED)
