"""Status as many clients read it at once: one computation per environment shared by every
request that arrives while it runs, and its result reused for a short while.

Status asks the store, the agent, the router and each instance's health endpoint (a few ms
of work); fifty dashboards polling it must not multiply that by fifty. A result is reused
while it is younger than `max_age_s` and nothing changed through this server since (a job's
event or end bumps the generation); what another process changes shows within `max_age_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


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
        self._kept: dict[Hashable, tuple[float, int, dict[str, Any]]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable) -> dict[str, Any]:
        """The status for `key`: fresh, or computed now by this caller while the others who
        ask meanwhile wait for it."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            gen = self.generation()
            kept = self._kept.get(key)
            if kept is not None and kept[1] == gen and self.clock() - kept[0] <= self.max_age_s:
                return kept[2]
            started = self.clock()
            value = self.compute(key)
            self._kept[key] = (started, gen, value)
            return value
