"""`rollwise server`: the team's API over one state store (docs/server.md).

Everything is under /api/v1 and needs `Authorization: Bearer rw_...` (a token made by
`rollwise token create`); each route names the role it needs (auth.py), checked with the
environment it acts on. Deploys and rollbacks run as jobs in this process (jobs.py): the
request returns 202 with the job, whose events stream as server-sent events. A deployment
left interrupted by a server that died is taken over: its lease expires (at once when its
holder was a process of this host) and this server recovers it from its journal.

Errors are one JSON object — error, where, hint, exit_code — with the status that fits:
401 no or bad token, 403 not allowed, 404 unknown, 409 refused in this state, 422 a
malformed body."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rollwise import approvals, artifacts, freeze
from rollwise.api import alerts, auth, dashboard, users
from rollwise.api.auth import ADMIN, APPROVER, DEPLOYER, VIEWER, Principal
from rollwise.api.host import Server, allow
from rollwise.api.jobs import Job
from rollwise.api.limits import Limits
from rollwise.artifacts import ReleaseMeta
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.errors import ExitCode, IntegrityError, RollwiseError, UsageError
from rollwise.store import repo

STATUS = {
    ExitCode.USAGE: 400,
    ExitCode.CONFIG: 400,
    ExitCode.NOT_FOUND: 404,
    ExitCode.LOCKED: 409,
    ExitCode.HEALTH: 409,
    ExitCode.INTEGRITY: 409,
    ExitCode.INTERRUPTED: 409,
    ExitCode.ERROR: 409,
}
TAKEOVER_EVERY_S = 5.0
MAX_UPLOAD = 2 << 30  # bytes of one release's artifact
META_FIELDS = {f.name for f in dataclasses.fields(ReleaseMeta)}
RequestId = Annotated[int, InPath(ge=1, le=2**31 - 1, description="An approval request.")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeployBody(Body):
    version: str = Field(min_length=1, max_length=64)
    lock_wait: float = Field(0.0, ge=0, le=600)
    force_reason: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="Deploy a release marked bad: why, naming the incident that marked it.",
    )
    approval: int | None = Field(None, description="An approved request to run it on.")
    break_freeze: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="Why it goes ahead inside a freeze window (admin role; audited).",
    )
    zone: str | None = Field(
        None,
        max_length=64,
        description="The user's IANA time zone: a freeze window's end is shown in it too.",
    )

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            freeze.zone(v)  # ValueError names close zones
        return v


class DecisionBody(Body):
    reason: str | None = Field(None, max_length=500)


class RollbackBody(Body):
    to: str | None = Field(None, min_length=1, max_length=64)
    lock_wait: float = Field(0.0, ge=0, le=600)
    force_reason: str | None = Field(None, min_length=1, max_length=500)
    yes: bool = Field(False, description="Confirm values the down migrations drop.")
    dry_run: bool = Field(False, description="Only show what changes.")


class PromoteBody(Body):
    full: bool = False


class TokenBody(Body):
    name: str = Field(min_length=1, max_length=128)
    role: str = Field(pattern="^(viewer|deployer|approver|admin)$")
    envs: list[str] | None = None
    expires_in_s: float | None = Field(None, gt=0)


def problem(status: int, message: str, where: str = "", hint: str = "", code: int = 1) -> Any:
    body = {"error": message, "where": where or None, "hint": hint or None, "exit_code": code}
    return JSONResponse(body, status_code=status)


def make_app(
    root: Path, now: Callable[[], float] = time.time, listen: str = "127.0.0.1:9748"
) -> FastAPI:
    """The API; with ROLLWISE_WEBHOOK_TOKEN set, also `rollwise serve`'s alert hooks,
    /metrics and /sd under /alerts (docs/alerts.md)."""
    server = Server(root, now)
    api = FastAPI(
        title="rollwise",
        version="1",
        description="The team server: status, deploys, rollbacks and tokens (docs/server.md).",
        docs_url=None,  # the pages load scripts from a CDN; /openapi.json is the document
        redoc_url=None,
    )
    api.state.server = server
    _errors(api)
    _reads(api, server)
    _operations(api, server)
    _tokens(api, server)
    users.mount(api, server)
    dashboard.mount(api, server)

    @api.get("/health", tags=["public"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if token := os.environ.get(alerts.TOKEN_ENV):
        api.mount("/alerts", alerts.make_app(root, token, Limits(), listen))
    return api


def _errors(api: FastAPI) -> None:
    @api.exception_handler(RollwiseError)
    async def refused(request: Request, e: RollwiseError) -> Any:
        return problem(STATUS.get(e.code, 409), e.message, e.where, e.hint, int(e.code))

    @api.exception_handler(HTTPException)
    async def http(request: Request, e: HTTPException) -> Any:
        code = {401: ExitCode.USAGE, 403: ExitCode.USAGE, 404: ExitCode.NOT_FOUND}
        return problem(e.status_code, str(e.detail), code=int(code.get(e.status_code, 1)))

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Any:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        return problem(422, "malformed request body", where, "see /openapi.json", 2)


def _reads(api: FastAPI, server: Server) -> None:
    view = Depends(allow(server, VIEWER))

    @api.get("/api/v1/whoami")
    def whoami(who: Principal = view) -> dict[str, Any]:
        return {"name": who.name, "role": who.role, "envs": who.envs}

    @api.get("/api/v1/status")
    def status_all(who: Principal = view) -> dict[str, Any]:
        out = dict(server.status.get(None))
        out["environments"] = {k: v for k, v in out["environments"].items() if who.may(VIEWER, k)}
        return out

    @api.get("/api/v1/environments/{env}/status")
    async def status(env: str, who: Principal = view) -> Response:
        body = server.status.ready(env)  # polled by many: no thread when it is at hand
        if body is None:
            body = await run_in_threadpool(server.status.body, env)
        return Response(body, media_type="application/json")

    @api.get("/api/v1/environments/{env}/history")
    def history(env: str, limit: int = 20, who: Principal = view) -> list[dict[str, Any]]:
        return ops.history(server.ctx, env, max(1, min(limit, 500)))

    @api.get("/api/v1/history")
    def history_all(limit: int = 20, who: Principal = view) -> list[dict[str, Any]]:
        rows = ops.history(server.ctx, None, max(1, min(limit, 500)))
        return [r for r in rows if who.may(VIEWER, r["env"])]

    @api.get("/api/v1/releases")
    def releases(who: Principal = view) -> list[dict[str, Any]]:
        return repo.list_releases(server.ctx.engine)

    @api.get("/api/v1/jobs/{job_id}")
    def job(job_id: str, who: Principal = view) -> dict[str, Any]:
        return _job(server, job_id, who).view()

    @api.get("/api/v1/jobs/{job_id}/events")
    async def events(job_id: str, who: Principal = view) -> StreamingResponse:
        found = _job(server, job_id, who)
        return StreamingResponse(_stream(found), media_type="text/event-stream")


def _job(server: Server, job_id: str, who: Principal) -> Job:
    job = server.jobs.get(job_id)
    if job is None or not who.may(VIEWER, job.env):
        raise HTTPException(404, f"no job {job_id!r}")
    return job


async def _stream(job: Job) -> AsyncIterator[str]:
    """Each event the job emitted (from the first), then `end` with its result."""
    sent = 0
    while True:
        finished = job.done.is_set()
        while sent < len(job.events):
            yield f"event: event\ndata: {json.dumps(job.events[sent], default=str)}\n\n"
            sent += 1
        if finished:
            yield f"event: end\ndata: {json.dumps(job.result, default=str)}\n\n"
            return
        await asyncio.sleep(0.05)


def _operations(api: FastAPI, server: Server) -> None:
    deployer = Depends(allow(server, DEPLOYER))
    viewer = Depends(allow(server, VIEWER))
    approver = Depends(allow(server, APPROVER))

    def submit(kind: str, env: str, who: Principal, work: Callable[[Context], Any]) -> Any:
        job = server.jobs.submit(kind, env, users.actor(who), work)
        return JSONResponse(job.view(), status_code=202)

    @api.post("/api/v1/environments/{env}/deploy", status_code=202)
    def deploy(env: str, body: DeployBody, who: Principal = deployer) -> Any:
        if body.break_freeze is not None and not who.may(ADMIN, env):
            raise HTTPException(403, f"breaking a freeze window: {who.why_not(ADMIN, env)}")
        zone = freeze.zone(body.zone) if body.zone else None
        # refused now, not in the job
        ops.check_deployable(
            server.ctx, env, body.version, body.break_freeze, zone, body.force_reason
        )
        rule = server.ctx.env(env).approvals
        if rule is not None and body.approval is None:
            asked = approvals.ask(
                server.ctx.engine, env, body.version, who.name, rule.required, rule.expire_h
            )
            _as(server, who).emit(
                "approval", "needed", env=env, version=body.version, data=asked.view()
            )
            return JSONResponse({"approval": asked.view()}, status_code=202)
        return submit("deploy", env, who, deploying(env, body))

    @api.get("/api/v1/approvals")
    def approvals_list(env: str | None = None, who: Principal = viewer) -> list[dict[str, Any]]:
        rows = approvals.listed(server.ctx.engine, env)
        return [r.view() for r in rows if who.may(VIEWER, r.env)]

    @api.get("/api/v1/approvals/{request_id}")
    def approval(request_id: RequestId, who: Principal = viewer) -> dict[str, Any]:
        r = approvals.get(server.ctx.engine, request_id)
        if not who.may(VIEWER, r.env):
            raise HTTPException(404, f"no approval request {request_id}")
        return {**r.view(), "job": server.approved.get(r.id)}

    @api.post("/api/v1/approvals/{request_id}/approve")
    def approve(request_id: RequestId, who: Principal = approver) -> dict[str, Any]:
        return _decide(server, request_id, who, True, None)

    @api.post("/api/v1/approvals/{request_id}/reject")
    def reject(
        request_id: RequestId, body: DecisionBody, who: Principal = approver
    ) -> dict[str, Any]:
        return _decide(server, request_id, who, False, body.reason)

    @api.post("/api/v1/environments/{env}/rollback", status_code=202)
    def rollback(env: str, body: RollbackBody, who: Principal = deployer) -> Any:
        ctx = server.ctx
        if body.to is None and ops.running(ctx, env):
            return _outcome(ops.rollback(_as(server, who), env, None, body.lock_wait))
        live, target = ops.rollback_plan(ctx, env, body.to)
        rows, dropped = ops.describe_schema(ctx, env, live, target)
        if body.dry_run:
            plan = [*ops.describe_change(live, target), *rows]
            return {
                "ok": True,
                "message": "dry run: nothing changed",
                "changed": False,
                "dropped": dropped,
                "plan": plan,
            }
        if dropped and not body.yes:
            return JSONResponse(
                {
                    "error": f"the down migrations drop {sum(dropped.values())} values "
                    "(kept in parked files first)",
                    "where": f"rollback of {env}",
                    "hint": "send yes: true to confirm",
                    "exit_code": int(ExitCode.USAGE),
                    "dropped": dropped,
                    "plan": [*ops.describe_change(live, target), *rows],
                },
                status_code=409,
            )
        return submit(
            "rollback",
            env,
            who,
            lambda c: ops.rollback(c, env, body.to, body.lock_wait, force_reason=body.force_reason),
        )

    @api.put("/api/v1/releases/{version}", status_code=201)
    async def upload(version: str, request: Request, who: Principal = deployer) -> Any:
        """A release made elsewhere (a CI runner): its artifact as the body, its record in
        the X-Rollwise-Release header (JSON); the bytes must hash to the record's sha256."""
        meta = _release_meta(request.headers.get("x-rollwise-release", ""), version)
        ctx = _as(server, who)
        if repo.get_release(ctx.engine, version) is not None:
            raise RollwiseError(
                f"release {version} already exists",
                hint="releases are immutable; use a new version",
            )
        await _receive(request, ctx, meta)
        repo.add_release(ctx.engine, meta)
        ctx.emit(
            "release",
            "ok",
            version=version,
            git_commit=meta.git_commit,
            data={"sha256": meta.sha256, "size": meta.size, "uploaded": True},
        )
        pruned = ops.gc(ctx)
        return {"ok": True, "version": version, "sha256": meta.sha256, "pruned": pruned}

    @api.post("/api/v1/environments/{env}/promote")
    def promote(env: str, body: PromoteBody, who: Principal = deployer) -> dict[str, Any]:
        return _outcome(ops.promote(_as(server, who), env, body.full))

    @api.post("/api/v1/environments/{env}/abort")
    def abort(env: str, who: Principal = deployer) -> dict[str, Any]:
        return _outcome(ops.abort(_as(server, who), env))


def _release_meta(header: str, version: str) -> ReleaseMeta:
    try:
        fields = json.loads(header)
        meta = ReleaseMeta(**{k: fields[k] for k in META_FIELDS if k in fields})
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"the X-Rollwise-Release header is not a release record: {e}",
            hint="upload with `rollwise release create` and ROLLWISE_URL set",
        ) from None
    if meta.version != version:
        raise UsageError(f"the record is of release {meta.version}, the path names {version}")
    return meta


async def _receive(request: Request, ctx: Context, meta: ReleaseMeta) -> None:
    """Stream the body into the artifacts folder, hashing it; kept only when it matches."""
    folder = ctx.artifacts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".upload-{meta.sha256[:16]}-{os.getpid()}"
    digest, size = hashlib.sha256(), 0
    try:
        with part.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise UsageError(f"artifact larger than {MAX_UPLOAD} bytes")
                digest.update(chunk)
                f.write(chunk)
        if (digest.hexdigest(), size) != (meta.sha256, meta.size):
            raise IntegrityError(
                f"the uploaded artifact of {meta.version} is {size} bytes with sha256 "
                f"{digest.hexdigest()[:12]}, its record says {meta.size} and {meta.sha256[:12]}",
                hint="upload it again; nothing was stored",
            )
        part.replace(artifacts.artifact_path(folder, meta.sha256))
    finally:
        part.unlink(missing_ok=True)


def deploying(env: str, body: DeployBody) -> Callable[[Context], ops.Outcome]:
    return lambda c: ops.deploy(
        c,
        env,
        body.version,
        lock_wait=body.lock_wait,
        force_reason=body.force_reason,
        approval=body.approval,
        break_freeze=body.break_freeze,
    )


def _decide(
    server: Server, request_id: int, who: Principal, approve: bool, reason: str | None
) -> dict[str, Any]:
    """Approve or reject; the last approval needed starts the deploy as a job."""
    engine = server.ctx.engine
    r = approvals.get(engine, request_id)
    if not who.may(APPROVER, r.env):
        raise HTTPException(403, who.why_not(APPROVER, r.env))
    after = approvals.save(
        engine, approvals.decide(r, who.name, approve, server.now(), reason), r.state
    )
    ctx = _as(server, who)
    ctx.emit(
        "approval",
        "approved" if approve else "rejected",
        env=r.env,
        version=r.version,
        reason=reason,
        data=after.view(),
    )
    out: dict[str, Any] = {"approval": after.view()}
    if after.state == approvals.APPROVED:
        body = DeployBody(version=r.version, approval=r.id)
        actor = f"{r.requested_by} (api), approved by {', '.join(after.approvers)}"
        job = server.jobs.submit("deploy", r.env, actor, deploying(r.env, body))
        server.approved[r.id] = job.id
        out["job"] = job.view()
    return out


def _as(server: Server, who: Principal) -> Context:
    """The server's context, acting as `who`."""
    return server.jobs.context(users.actor(who))


def _outcome(out: ops.Outcome) -> dict[str, Any]:
    return {"ok": True, "message": out.message, "changed": out.changed, **out.data}


def _tokens(api: FastAPI, server: Server) -> None:
    admin = Depends(allow(server, ADMIN))

    @api.post("/api/v1/tokens", status_code=201)
    def create(body: TokenBody, who: Principal = admin) -> dict[str, Any]:
        for env in body.envs or []:
            server.env(env)
        token, row = auth.create(
            server.ctx.engine,
            body.name,
            body.role,
            body.envs,
            users.actor(who),
            body.expires_in_s,
            server.now(),
        )
        _as(server, who).emit("token", "created", data={"id": row["id"], "role": body.role})
        return {"token": token, **row}

    @api.get("/api/v1/tokens")
    def listed(who: Principal = admin) -> list[dict[str, Any]]:
        return auth.listed(server.ctx.engine)

    @api.delete("/api/v1/tokens/{token_id}")
    def revoke(token_id: str, who: Principal = admin) -> dict[str, Any]:
        row = auth.revoke(server.ctx.engine, token_id, server.now())
        server.tokens.forget()
        _as(server, who).emit("token", "revoked", data={"id": token_id})
        return row


def serve(root: Path, listen: str) -> None:
    import uvicorn

    from rollwise.ports import parse_address

    host, port = parse_address(listen)
    app = make_app(root, listen=listen)
    server: Server = app.state.server

    def takeovers() -> None:
        while not server.stop.wait(TAKEOVER_EVERY_S):
            server.takeover()

    server.takeover()
    threading.Thread(target=takeovers, daemon=True).start()
    print(json.dumps({"event": "server", "listen": listen, "pid": os.getpid()}), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
