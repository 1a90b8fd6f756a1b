"""Status as many clients read it at once: one computation per environment shared by every
request that arrives while it runs, and its result reused for a short while.

Status asks the store, the agent, the router and each instance's health endpoint (a few ms
of work); fifty dashboards polling it must not multiply that by fifty. A result is reused
while it is younger than `max_age_s`; once older, one reader computes it again while the
others keep getting the one before (never older than twice `max_age_s` while readers
come). When something changed through this server (a job's event or end bumps the
generation), readers wait for the new result instead; what another process changes shows
within `max_age_s`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from fastapi.encoders import jsonable_encoder


@dataclass(frozen=True)
class Kept:
    at: float
    generation: int
    value: dict[str, Any]
    body: bytes  # the value as a JSON response's body, encoded once


class Snapshots:
    def __init__(
        self,
        compute: Callable[[Any], dict[str, Any]],
        generation: Callable[[], int],
        max_age_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.compute, self.generation = compute, generation
        self.max_age_s, self.clock = max_age_s, clock
        self._kept: dict[Hashable, Kept] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable) -> dict[str, Any]:
        """The status for `key`: kept, or computed now by this caller (the others who ask
        meanwhile get the one before, or wait for it when there is none or it is out of
        date)."""
        return self.kept(key).value

    def body(self, key: Hashable) -> bytes:
        """The same, as JSON."""
        return self.kept(key).body

    def ready(self, key: Hashable) -> bytes | None:
        """The JSON when it can be had without computing (fresh, or the one before while
        another reader computes the next); None when the caller must call `body` (in a
        thread: it may compute)."""
        kept = self._kept.get(key)
        if kept is None or kept.generation != self.generation():
            return None
        lock = self._locks.get(key)
        if self.clock() - kept.at <= self.max_age_s or (lock is not None and lock.locked()):
            return kept.body
        return None

    def kept(self, key: Hashable) -> Kept:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        kept, gen = self._kept.get(key), self.generation()
        if kept is not None and kept.generation == gen:
            if self.clock() - kept.at <= self.max_age_s:
                return kept
            if not lock.acquire(blocking=False):
                return kept  # another reader is computing the next one
            return self._refresh(key, gen, lock)
        lock.acquire()
        kept = self._kept.get(key)
        if kept is not None and kept.generation == gen:  # computed while this one waited
            lock.release()
            return kept
        return self._refresh(key, gen, lock)

    def _refresh(self, key: Hashable, gen: int, lock: threading.Lock) -> Kept:
        try:
            started = self.clock()
            value = self.compute(key)
            body = json.dumps(jsonable_encoder(value), separators=(",", ":")).encode()
            kept = self._kept[key] = Kept(started, gen, value, body)
            return kept
        finally:
            lock.release()
