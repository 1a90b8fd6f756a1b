"""Alerts in: Alertmanager webhooks and generic JSON roll back the environment they name.

POST /hooks/alertmanager   Alertmanager's webhook payload (version 4); each *firing* alert
                           whose labels name this app (`app`, optional) and an environment
                           (`rollwise_env`, `env` or `environment`) rolls that environment back.
POST /hooks/generic        {"env": "prod", "app": "order-sync", "reason": "..."}
GET  /metrics[?env=E]      Prometheus exposition of every environment (or one): router
                           counters per version, deployments, decisions, lock (`metrics`)
GET  /sd[?env=E]           Prometheus HTTP service discovery: every instance, labelled

The hooks need `Authorization: Bearer <ROLLWISE_WEBHOOK_TOKEN>`, checked before the body is read;
bodies are bounded in size and time (`limits.Guard`), and no API pages are served. A rollout
in progress is asked to roll back (traffic goes back at once); otherwise the environment is
rolled back to its last known-good release, in the background (202 Accepted). An alert is
acted on once: when the environment was already rolled back after the alert began
(Alertmanager repeats firing alerts), or, for alerts without a start time, within
`COOLDOWN_S` of the last rollback, it is ignored, so a repeated notification never walks an
environment further back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollwise import domain as d
from rollwise import metrics
from rollwise.api.limits import Guard, HeaderDeadline, Limits
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.errors import ConfigError, RollwiseError
from rollwise.ports import parse_address
from rollwise.store import repo

TOKEN_ENV = "ROLLWISE_WEBHOOK_TOKEN"
ENV_LABELS = ("rollwise_env", "env", "environment")
COOLDOWN_S = 600.0


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = "firing"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str | None = None


class AlertmanagerPayload(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = "firing"
    alerts: list[Alert]


class GenericAlert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str
    app: str | None = None
    reason: str = "alert"


@dataclass(frozen=True)
class Trigger:
    env: str
    reason: str
    started_at: float | None = None


def parse_time(text: str | None) -> float | None:
    """Alertmanager's RFC 3339 times (nanoseconds allowed); None when absent or unset."""
    if not text or text.startswith("0001-"):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def already_handled(last: dict[str, Any] | None, trigger: Trigger, now: float) -> bool:
    """True when the environment was rolled back after this alert began (or, without a
    start time, within the cooldown)."""
    if last is None or last["kind"] != d.ROLLBACK:
        return False
    since = trigger.started_at if trigger.started_at is not None else now - COOLDOWN_S
    return float(last["created_at"]) >= since


def triggers(payload: AlertmanagerPayload, app: str) -> list[Trigger]:
    """The environments a payload asks to roll back (pure; tested by equality)."""
    out: dict[str, Trigger] = {}
    for a in payload.alerts:
        if a.status != "firing" or a.labels.get("app", app) != app:
            continue
        env = next((a.labels[k] for k in ENV_LABELS if k in a.labels), None)
        if env and env not in out:
            name = a.labels.get("alertname", "alert")
            summary = a.annotations.get("summary", "")
            out[env] = Trigger(
                env, f"alert {name}" + (f": {summary}" if summary else ""), parse_time(a.startsAt)
            )
    return list(out.values())


def make_app(root: Path, token: str, limits: Limits, listen: str = "127.0.0.1:9747") -> ASGIApp:
    """The routes behind `Guard`: /health, /metrics and /sd answer without the token."""
    # No /docs, /redoc or /openapi.json: they answered anyone, and the docs pages load
    # scripts from a public CDN.
    api = FastAPI(
        title="rollwise alerts", version="1", docs_url=None, redoc_url=None, openapi_url=None
    )
    api.add_exception_handler(RequestValidationError, _invalid)
    lock = threading.Lock()
    with _opened(root) as ctx:
        app = ctx.config.app

    def act(trigger: Trigger) -> dict[str, Any]:
        result = decide(trigger)
        log_line("alert", alert=trigger.reason, **result)
        return result

    def decide(trigger: Trigger) -> dict[str, Any]:
        with lock, _opened(root) as ctx:
            try:
                ctx.env(trigger.env)
            except ConfigError as e:
                return {"env": trigger.env, "action": "refused", "error": e.message}
            ctx.actor = f"alert ({ctx.actor})"
            last = next(iter(repo.list_deployments(ctx.engine, trigger.env, 1)), None)
            if already_handled(last, trigger, time.time()):
                assert last is not None
                return {
                    "env": trigger.env,
                    "action": "ignored",
                    "reason": f"already rolled back to {last['to_version']} "
                    f"(deployment {last['id']}) after this alert began",
                }
            if ops.running(ctx, trigger.env):
                res = ops.rollback(ctx, trigger.env, None, reason=trigger.reason)
                return {"env": trigger.env, "action": "requested", "message": res.message}
        threading.Thread(target=_rollback, args=(root, trigger), daemon=True).start()
        return {"env": trigger.env, "action": "rolling back"}

    @api.post("/hooks/alertmanager", status_code=202)
    def alertmanager(payload: AlertmanagerPayload) -> dict[str, Any]:
        return {"results": [act(t) for t in triggers(payload, app)]}

    @api.post("/hooks/generic", status_code=202)
    def generic(payload: GenericAlert) -> dict[str, Any]:
        if payload.app not in (None, app):
            raise HTTPException(404, f"this rollwise serves app {app!r}, not the alert's")
        return {"results": [act(Trigger(payload.env, payload.reason))]}

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    _metrics_routes(api, root, listen, None)
    log = _RequestLog(api)
    return Guard(log, token, limits, public=frozenset({"/health", "/metrics", "/sd"}))


def _metrics_routes(api: FastAPI, root: Path, listen: str, only: str | None) -> None:
    """GET /metrics and /sd: of environment `only`, or of `?env=` / every environment."""

    def envs(ctx: Context, env: str | None) -> list[str]:
        names = [only] if only else [env] if env else sorted(ctx.config.environments)
        for name in names:
            if name not in ctx.config.environments:
                raise HTTPException(404, f"no environment {name!r} in {ctx.config_path}")
        return names

    @api.get("/metrics")
    def exposition(env: str | None = None) -> Response:
        with _opened(root) as ctx:
            body = metrics.exposition(metrics.read(ctx, envs(ctx, env)))
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/sd")
    def sd(env: str | None = None) -> list[dict[str, Any]]:
        with _opened(root) as ctx:
            names = envs(ctx, env)
            return metrics.discovery(metrics.read(ctx, names), metrics_targets(ctx, listen))


def metrics_targets(ctx: Context, listen: str) -> dict[str, dict[str, str]]:
    """Where each environment's rollwise metrics are scraped: its `metrics.listen`, else
    `serve`'s address with `?env=`."""
    out = {}
    for name, env in ctx.config.environments.items():
        if env.metrics.listen:
            out[name] = {"target": env.metrics.listen}
        else:
            out[name] = {"target": listen, "__param_env": name}
    return out


def metrics_app(root: Path, env: str, listen: str) -> ASGIApp:
    """An environment's own `metrics.listen`: its /metrics and /sd, and /health."""
    api = FastAPI(
        title=f"rollwise metrics {env}",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    _metrics_routes(api, root, listen, env)
    return _RequestLog(api)


class _RequestLog:
    """One JSON line on stderr per request: time, method, path, status, milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.monotonic(), 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            log_line(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.monotonic() - began) * 1000, 2),
                client=(scope.get("client") or ["?"])[0],
            )


def log_line(event: str, **fields: Any) -> None:
    """A structured log line (JSON) on stderr, where a service manager collects it."""
    print(
        json.dumps({"ts": round(time.time(), 3), "event": event, **fields}),
        file=sys.stderr,
        flush=True,
    )


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 naming what is wrong and where, without the values sent (FastAPI's default
    echoes them)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _rollback(root: Path, trigger: Trigger) -> None:
    with _opened(root) as ctx:
        ctx.actor = f"alert ({ctx.actor})"
        try:
            res = ops.rollback(ctx, trigger.env, None, lock_wait=60.0, reason=trigger.reason)
            log_line("rollback", env=trigger.env, alert=trigger.reason, message=res.message)
        except RollwiseError as e:
            log_line("rollback", env=trigger.env, alert=trigger.reason, error=e.message)
            ctx.emit("rollback", "error", env=trigger.env, reason=f"{trigger.reason}: {e.message}")


@contextmanager
def _opened(root: Path) -> Iterator[Context]:
    """A Context whose store connections are closed on leaving, not whenever the garbage
    collector gets to it (its event bus refers to itself). In this long-running process an
    open SQLite connection loses its file locks when a later Context.open opens and closes
    the database file, and another process may then remove the WAL index under it."""
    ctx = Context.open(root)
    try:
        yield ctx
    finally:
        ctx.engine.dispose()


def serve(root: Path, listen: str, limits: Limits | None = None) -> None:
    import uvicorn

    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise ConfigError(
            "not set or shorter than 16 characters",
            where=TOKEN_ENV,
            hint="set it to a long random value, e.g. "
            "`export ROLLWISE_WEBHOOK_TOKEN=$(openssl rand -hex 24)`",
        )
    limits = limits or Limits()
    # a bad rollwise.yaml fails here, not at the first alert
    apps = [(make_app(root, token, limits, listen), listen)]
    with _opened(root) as ctx:
        apps += [
            (metrics_app(root, name, listen), env.metrics.listen)
            for name, env in sorted(ctx.config.environments.items())
            if env.metrics.listen
        ]
    servers = []
    for api, address in apps:
        host, port = parse_address(address)
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    api,
                    host=host,
                    port=port,
                    log_level="warning",
                    http=HeaderDeadline,
                    ws="none",
                    server_header=False,
                    timeout_keep_alive=limits.timeout_s,
                    limit_concurrency=limits.max_connections,
                )
            )
        )
    log_line("serve", listen=[address for _, address in apps], pid=os.getpid())

    async def run_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(run_all())
