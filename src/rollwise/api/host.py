"""The state one team server process shares between its routes and pages: the project,
the store, the jobs, who is asking (`principal`) and the role a route needs (`allow`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rollwise.api import auth, users
from rollwise.api.auth import Principal
from rollwise.api.jobs import Jobs
from rollwise.api.snapshots import Snapshots
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.store import repo


class Server:
    """The shared state of one server process: its project, store and jobs."""

    def __init__(self, root: Path, now: Callable[[], float] = time.time) -> None:
        self.ctx = Context.open(root)  # reads, and the store every job shares
        self.jobs = Jobs(root, self.ctx.engine)
        self.now = now
        self.stop = threading.Event()
        self.approved: dict[int, str] = {}  # approval request -> the job it started here
        self.tokens = auth.Verified(self.ctx.engine, now)
        self.status = Snapshots(lambda env: ops.status(self.ctx, env), lambda: self.jobs.generation)

    def principal(self, request: Request) -> Principal:
        """A bearer token's principal, else the user of the session cookie (users.py)."""
        header = request.headers.get("authorization", "")
        if not header and users.COOKIE in request.cookies:
            return users.principal(self, request)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing token (Authorization: Bearer rw_...)")
        try:
            return self.tokens.authenticate(token.strip())
        except PermissionError as e:
            raise HTTPException(401, str(e)) from None

    async def principal_now(self, request: Request) -> Principal:
        """`principal` without leaving the event loop for a token verified moments ago;
        anything that reads the store runs in a worker thread."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and (who := self.tokens.cached(token.strip())):
            return who
        return await run_in_threadpool(self.principal, request)

    def env(self, name: str) -> str:
        if name not in self.ctx.config.environments:
            known = ", ".join(self.ctx.config.environments)
            raise HTTPException(404, f"unknown environment {name!r}; environments: {known}")
        return name

    def takeover(self) -> list[str]:
        """Recover every deployment no live process holds (its server died mid-way)."""
        done = []
        for env in self.ctx.config.environments:
            dep = repo.active_deployment(self.ctx.engine, env)
            if dep is None or ops.running(self.ctx, env) is not None:
                continue
            self.jobs.submit("recover", env, f"server {os.getpid()}", recovering(env))
            done.append(env)
        return done


def recovering(env: str) -> Callable[[Context], ops.Outcome]:
    return lambda ctx: ops.recover(ctx, env)


def allow(server: Server, role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the request's principal, when it may act with `role` (on `env`)."""

    async def check(request: Request) -> Principal:
        who = await server.principal_now(request)
        env = request.path_params.get("env")
        if env is not None:
            server.env(env)
        if not who.may(role, env):
            raise HTTPException(403, who.why_not(role, env))
        return who

    check.role = role  # type: ignore[attr-defined]  # read by the route x role tests
    return check
