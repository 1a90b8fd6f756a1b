"""Operations the team server runs for its clients, each a job in a thread of its own with
its own Context (store connections, event bus): the job keeps the events it emitted, for
clients that follow it (`GET /api/v1/jobs/{id}/events`), and how it ended.

Two jobs for one environment, in one server or in two on one state store, never run at
once: the environment's lease lock refuses the second, as it refuses a second CLI."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from rollwise.audit import Event
from rollwise.controller.context import Context
from rollwise.errors import RollwiseError
from rollwise.events import EventBus

KEEP = 200  # finished jobs kept in memory; their deployments stay in the store


@dataclass
class Job:
    id: str
    kind: str
    env: str
    actor: str
    created_at: float
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "env": self.env,
            "actor": self.actor,
            "created_at": self.created_at,
            "state": "done" if self.done.is_set() else "running",
            "result": self.result,
            "events": len(self.events),
        }


def ended(e: RollwiseError) -> dict[str, Any]:
    """A failed operation, as the CLI's --json prints it."""
    return {
        "ok": False,
        "error": e.message,
        "where": e.where or None,
        "hint": e.hint or None,
        "exit_code": int(e.code),
    }


class Jobs:
    def __init__(self, root: Path, engine: Engine) -> None:
        self.root, self.engine = root, engine
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every job event and end: what status reads changed

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def running(self, env: str) -> list[Job]:
        """`env`'s jobs still running here, oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if j.env == env and not j.done.is_set()]

    def submit(self, kind: str, env: str, actor: str, work: Callable[[Context], Any]) -> Job:
        """Run `work(ctx)` in a thread; it returns an ops.Outcome."""
        with self._lock:
            job = Job(f"{time.strftime('%Y%m%d')}-{next(self._ids)}", kind, env, actor, time.time())
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEEP]:
                if self._jobs[old].done.is_set():
                    del self._jobs[old]
        threading.Thread(target=self._run, args=(job, work), daemon=True).start()
        return job

    def context(self, actor: str, bus: EventBus | None = None) -> Context:
        """A context on the shared store (the config read anew), acting as `actor`."""
        ctx = Context.open(self.root, bus, self.engine)
        ctx.actor = actor
        return ctx

    def _run(self, job: Job, work: Callable[[Context], Any]) -> None:
        def keep(ev: Event) -> None:
            job.events.append(asdict(ev))
            self.generation += 1

        try:
            ctx = self.context(job.actor, EventBus([keep]))
        except RollwiseError as e:
            job.result = ended(e)
            job.done.set()
            return
        try:
            out = work(ctx)
            job.result = {"ok": True, "message": out.message, "changed": out.changed, **out.data}
        except RollwiseError as e:
            job.result = ended(e)
        except Exception as e:  # a bug: the job ends, the server stays up
            job.result = {"ok": False, "error": f"{type(e).__name__}: {e}", "exit_code": 1}
        finally:
            self.generation += 1
            job.done.set()
