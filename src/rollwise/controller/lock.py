"""A deploy lock per environment, as a lease: TTL, heartbeat, fencing token, holder shown."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from rollwise.errors import LockHeld
from rollwise.store.tables import locks

TTL_S = 20.0


@dataclass(frozen=True)
class LockInfo:
    env: str
    holder: str
    token: int
    acquired_at: float
    expires_at: float

    @property
    def expired(self) -> bool:
        return self.expires_at < time.time()


def holder_id(actor: str) -> str:
    return f"{actor} pid {os.getpid()} on {socket.gethostname()}"


def current(engine: Engine, env: str) -> LockInfo | None:
    with engine.connect() as conn:
        row = conn.execute(select(locks).where(locks.c.env == env)).mappings().first()
    return LockInfo(**row) if row else None


def holder_dead(holder: str) -> bool:
    """True when `holder` names a process on this host that no longer exists."""
    _, _, rest = holder.partition(" pid ")
    pid, _, host = rest.partition(" on ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def try_acquire(engine: Engine, env: str, holder: str, ttl: float = TTL_S) -> int | None:
    """The new fencing token, or None when a live lease is held by someone else. A lease
    whose holder is a dead process on this host is taken over at once, not after its TTL."""
    info = current(engine, env)
    if info is not None and not info.expired and holder_dead(info.holder):
        release(engine, env, info.token)
    now = time.time()
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(locks).values(
                        env=env, holder="", token=0, acquired_at=0.0, expires_at=0.0
                    )
                )
        except SAIntegrityError:
            pass
        res = conn.execute(
            update(locks)
            .where(locks.c.env == env, locks.c.expires_at < now)
            .values(holder=holder, token=locks.c.token + 1, acquired_at=now, expires_at=now + ttl)
        )
        if res.rowcount != 1:
            return None
        return int(conn.execute(select(locks.c.token).where(locks.c.env == env)).scalar_one())


def renew(engine: Engine, env: str, token: int, ttl: float = TTL_S) -> bool:
    with engine.begin() as conn:
        res = conn.execute(
            update(locks)
            .where(locks.c.env == env, locks.c.token == token)
            .values(expires_at=time.time() + ttl)
        )
        return res.rowcount == 1


def release(engine: Engine, env: str, token: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(locks).where(locks.c.env == env, locks.c.token == token).values(expires_at=0.0)
        )


class Lease:
    """Holds the lock while in a `with` block, renewing it from a heartbeat thread."""

    def __init__(self, engine: Engine, env: str, holder: str, wait: float = 0.0) -> None:
        self.engine, self.env, self.holder, self.wait = engine, env, holder, wait
        self.token = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> Lease:
        deadline = time.monotonic() + self.wait
        while (token := try_acquire(self.engine, self.env, self.holder)) is None:
            if time.monotonic() >= deadline:
                info = current(self.engine, self.env)
                who = (
                    f"{info.holder} (token {info.token}, expires in "
                    f"{max(0.0, info.expires_at - time.time()):.0f} s)"
                    if info
                    else "?"
                )
                raise LockHeld(
                    f"environment {self.env!r} is locked by {who}",
                    hint="wait for it to finish, or pass --lock-wait SECONDS; a "
                    "lock whose holder died expires by itself",
                )
            time.sleep(0.2)
        self.token = token
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(TTL_S / 4):
            if not renew(self.engine, self.env, self.token):
                self.lost = True
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        release(self.engine, self.env, self.token)
