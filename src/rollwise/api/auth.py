"""Who may do what on the team server: API tokens and roles.

A token is `rw_<id>_<secret>`: 32 random bytes of secret, shown once when it is made; the
store keeps only its SHA-256 (a secret that random needs no slow hash; people's passwords
do). Each token has one role and, optionally, the environments it may act on.

Roles, each allowed what the ones before it are:

- viewer: read status, history, releases, jobs;
- deployer: deploy, roll back, promote, abort;
- approver: approve other people's deploys;
- admin: manage tokens, break glass.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from rollwise.errors import NotFound, UsageError
from rollwise.store.tables import tokens

ROLES = ("viewer", "deployer", "approver", "admin")
VIEWER, DEPLOYER, APPROVER, ADMIN = ROLES
PREFIX = "rw_"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    name: str
    role: str
    envs: tuple[str, ...] | None  # None: every environment

    def may(self, role: str, env: str | None = None) -> bool:
        in_scope = env is None or self.envs is None or env in self.envs
        return ROLES.index(self.role) >= ROLES.index(role) and in_scope

    def why_not(self, role: str, env: str | None) -> str:
        if ROLES.index(self.role) < ROLES.index(role):
            return f"token {self.name!r} has role {self.role}; this needs {role} or above"
        return f"token {self.name!r} may act on {', '.join(self.envs or ())}, not on {env!r}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split(token: str) -> tuple[str, str] | None:
    """`rw_<id>_<secret>` -> (id, token); None when it is not shaped so."""
    if not token.startswith(PREFIX):
        return None
    token_id, sep, rest = token[len(PREFIX) :].partition("_")
    return (token_id, token) if sep and token_id and rest else None


def create(
    engine: Engine,
    name: str,
    role: str,
    envs: list[str] | None,
    created_by: str,
    expires_in_s: float | None,
    now: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """Make a token; returns it (shown once) and its record."""
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}", hint=f"roles: {', '.join(ROLES)}")
    now = time.time() if now is None else now
    token_id = secrets.token_hex(4)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    row = {
        "id": token_id,
        "name": name,
        "role": role,
        "envs": envs or None,
        "digest": digest(token),
        "created_at": now,
        "created_by": created_by,
        "expires_at": now + expires_in_s if expires_in_s else None,
        "revoked_at": None,
    }
    with engine.begin() as conn:
        conn.execute(insert(tokens).values(**row))
    return token, public(row)


def public(row: Any) -> dict[str, Any]:
    """A token's record without its digest."""
    return {k: v for k, v in dict(row).items() if k != "digest"}


def authenticate(engine: Engine, token: str, now: Callable[[], float] = time.time) -> Principal:
    """The principal a bearer token stands for; PermissionError says why not."""
    return verify(engine, token, now)[0]


def verify(
    engine: Engine, token: str, now: Callable[[], float] = time.time
) -> tuple[Principal, float | None]:
    """The principal a bearer token stands for and when the token expires (None: never);
    PermissionError says why not."""
    parts = split(token)
    if parts is None:
        raise PermissionError("not a rollwise API token (rw_...)")
    with engine.connect() as conn:
        row = conn.execute(select(tokens).where(tokens.c.id == parts[0])).mappings().first()
    if row is None or not hmac.compare_digest(row["digest"], digest(parts[1])):
        raise PermissionError("unknown token")
    if row["revoked_at"] is not None:
        raise PermissionError(f"token {row['name']!r} was revoked")
    if row["expires_at"] is not None and row["expires_at"] <= now():
        raise PermissionError(f"token {row['name']!r} has expired")
    envs = row["envs"]
    return Principal(row["name"], row["role"], tuple(envs) if envs else None), row["expires_at"]


def listed(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(tokens).order_by(tokens.c.created_at)).mappings().all()
    return [public(r) for r in rows]


def revoke(engine: Engine, token_id: str, now: float | None = None) -> dict[str, Any]:
    with engine.begin() as conn:
        done = conn.execute(
            update(tokens)
            .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=time.time() if now is None else now)
        ).rowcount
    if not done:
        known = ", ".join(t["id"] for t in listed(engine) if t["revoked_at"] is None)
        raise NotFound(
            f"no active token {token_id!r}",
            where="api_tokens",
            hint=f"active tokens: {known or 'none'} (`rollwise token list`)",
        )
    return next(t for t in listed(engine) if t["id"] == token_id)


class Verified:
    """Tokens verified in the last `ttl_s` seconds, so that a client polling status does not
    cost a store query per request. A token's expiry is still checked on every use; a token
    revoked through this server is forgotten at once, one revoked elsewhere (`rollwise token
    revoke` on another machine) stops working within `ttl_s`."""

    def __init__(
        self,
        engine: Engine,
        now: Callable[[], float] = time.time,
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.now, self.ttl_s, self.clock = engine, now, ttl_s, clock
        self._kept: dict[str, tuple[float, float | None, Principal]] = {}

    def cached(self, token: str) -> Principal | None:
        """The token's principal if it was verified within `ttl_s` and has not expired
        since; None when it must be looked up (`authenticate`)."""
        kept = self._kept.get(digest(token))
        fresh = kept is not None and self.clock() <= kept[0]
        if kept is not None and fresh and (kept[1] is None or self.now() < kept[1]):
            return kept[2]
        return None

    def authenticate(self, token: str) -> Principal:
        if (who := self.cached(token)) is not None:
            return who
        key = digest(token)
        self._kept.pop(key, None)
        who, expires = verify(self.engine, token, self.now)  # PermissionError: not kept
        if len(self._kept) > 10_000:  # bounded: many distinct tokens only cost queries
            self._kept.clear()
        self._kept[key] = (self.clock() + self.ttl_s, expires, who)
        return who

    def forget(self) -> None:
        self._kept.clear()
