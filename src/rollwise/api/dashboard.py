"""The web dashboard (docs/dashboard.md): server-rendered pages over the team server's store
and operations, for people logged in (api/users.py). Pages read; actions (deploy, promote,
abort, roll back, approve, reject) are buttons that post to the same /api/v1 routes the CLI
uses, with the session's CSRF token, so the API's role checks decide. A page shows a
button only to a role that may use it.

Live parts poll JSON routes added here (`/api/v1/environments/{env}/live`, `/api/v1/audit`,
`/api/v1/freezes`) once a second; the pages work without JavaScript, minus the live parts
and the buttons. Nothing is loaded from another origin (static/ holds the script and CSS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import NoResultFound
from starlette.exceptions import HTTPException

from rollwise import approvals, audit, checkpoints, freeze, metrics
from rollwise.api import users, web
from rollwise.api.auth import VIEWER, Principal
from rollwise.api.host import Server, allow
from rollwise.controller import drills, freezes, ops
from rollwise.controller.progressive import version_summary
from rollwise.errors import RollwiseError
from rollwise.report import Period, drill_rows, figures
from rollwise.store import repo

NAV = (
    ("/", "Environments"),
    ("/releases", "Releases"),
    ("/approvals", "Approvals"),
    ("/freezes", "Freezes"),
    ("/audit", "Audit"),
    ("/incidents", "Incidents"),
    ("/report", "Report"),
)
AUDIT_PAGE = 200  # newest events on the audit page
TIMELINE = 50  # deployments on an environment's page
EVENTS_READ = 5000  # newest events of an environment searched for a deployment's
REPORT_DAYS = 30
LOOK = "look"  # a running deployment's progress event (not recorded; kept by its job)

Page = Callable[..., Response]


def mount(api: FastAPI, server: Server) -> None:
    """The dashboard's static files, JSON routes and pages, on the API's app."""
    api.mount("/static", web.static, name="static")
    _json_routes(api, server)
    _pages(api, server)


# --- who is looking ------------------------------------------------------------------------


def _render(
    server: Server,
    request: Request,
    who: Principal,
    name: str,
    status: int = 200,
    **context: Any,
) -> Response:
    return web.templates.TemplateResponse(
        request,
        name,
        {
            "user": who,
            "csrf": users.csrf_token(server, request),
            "nav": NAV,
            "path": request.url.path,
            "may": who.may,
            **context,
        },
        status_code=status,
    )


def _login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _not_found(
    server: Server, request: Request, who: Principal, what: str, known: list[tuple[str, str]]
) -> Response:
    """A 404 page saying what was asked for and what exists (label, link)."""
    return _render(server, request, who, "not_found.html", 404, what=what, known=known)


def _envs(server: Server, who: Principal) -> list[str]:
    return [e for e in server.ctx.config.environments if who.may(VIEWER, e)]


# --- JSON for the live parts ------------------------------------------------------------------


def live(server: Server, env: str) -> dict[str, Any]:
    """An environment now, for the live canary view: the versions it serves with their share
    of traffic and the router's counters (cumulative; the page plots the differences), the
    deployment in progress with the analysis decision so far, and the decisions recorded."""
    ctx = server.ctx
    environment = ctx.environment(env)
    state = repo.env_state(ctx.engine, env)
    dep = repo.active_deployment(ctx.engine, env)
    last = dep or next(iter(repo.list_deployments(ctx.engine, env, 1)), None)
    shares, counters, error = _router_now(environment)
    return {
        "env": env,
        "at": time.time(),
        "live_version": state["live_version"],
        "in_progress": None
        if dep is None
        else {"id": dep["id"], "kind": dep["kind"], "to": dep["to_version"]},
        "deployment": None if last is None else ops.dep_summary(last),
        "shares": shares,
        "versions": {v: {**version_summary(c), "raw": _raw(c)} for v, c in counters.items()},
        "look": _look(server, env),
        "decisions": ops.decisions(ctx, env, last["id"] if last else None),
        "router_error": error,
    }


def _router_now(environment: Any) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """(version -> percent of traffic, version -> router counters, why not)."""
    try:
        counters = dict(metrics.router_counters(environment).get("versions", {}))
        names = {i.name: i.version for i in environment.target.instances()}
        weights = environment.router.weights()
    except RollwiseError as e:
        return {}, {}, e.message
    by_version: dict[str, int] = {}
    for name, w in weights.items():
        if name in names:
            by_version[names[name]] = by_version.get(names[name], 0) + int(w)
    total = sum(by_version.values())
    shares = {v: round(100 * w / total, 1) for v, w in by_version.items()} if total else {}
    return shares, counters, None


def _raw(c: dict[str, Any]) -> dict[str, Any]:
    """What the page needs to plot one interval: counts and the latency histogram."""
    return {
        "requests": int(c.get("requests", 0)) + int(c.get("conn_errors", 0)),
        "errors": int(c.get("status_5xx", 0)) + int(c.get("conn_errors", 0)),
        "buckets_ms": c.get("buckets_ms", []),
        "bucket_counts": c.get("bucket_counts", []),
    }


def _look(server: Server, env: str) -> dict[str, Any] | None:
    """The newest progress of a deployment this server runs in `env` (step, its clock, the
    decision so far); None when it runs elsewhere (a CLI) or nothing runs."""
    for job in reversed(server.jobs.running(env)):
        for ev in reversed(job.events):
            if ev["action"] == LOOK:
                return {**ev["data"], "ts": ev["ts"], "version": ev["version"], "job": job.id}
    return None


def audit_view(server: Server, env: str | None, limit: int) -> dict[str, Any]:
    """The newest events (newest first) and whether the chain verifies."""
    ctx = server.ctx
    rows = list(audit.iter_events(ctx.engine, env, limit=limit))
    rows.reverse()
    try:
        settings = checkpoints.settings(ctx.config, ctx.state_dir, ctx.engine)
        res = audit.verify_with_checkpoints(ctx.engine, settings)
        check = {
            "ok": res.ok,
            "count": res.count,
            "first_bad_seq": res.first_bad_seq,
            "problem": res.problem,
            "note": res.note,
        }
    except RollwiseError as e:
        check = {"ok": False, "count": None, "first_bad_seq": None, "problem": e.message}
    return {"verify": check, "events": rows}


def freeze_view(server: Server, envs: list[str]) -> list[dict[str, Any]]:
    """Every window with its current or next occurrence, in its zone and the viewer's
    (the page turns the UTC times into the browser's zone; `here` is the server's)."""
    c, here = freezes.clock(), freezes.here()
    out = []
    for env in envs:
        for e, w, o in freezes.listed(server.ctx, env, c.now):
            row: dict[str, Any] = {"env": e, **w.view(), "occurrence": None}
            if o is not None:
                row["occurrence"] = {
                    **freeze.view(o, c.now, here),
                    "span_zone": freeze.shown_span(o, freeze.zone(w.zone)),
                    "span_server": freeze.shown_span(o, here),
                }
            out.append(row)
    return out


def _json_routes(api: FastAPI, server: Server) -> None:
    view = Depends(allow(server, VIEWER))

    @api.get("/api/v1/environments/{env}/live", tags=["dashboard"])
    def live_now(env: str, who: Principal = view) -> dict[str, Any]:
        """For the live canary view, polled about once a second."""
        return live(server, env)

    @api.get("/api/v1/audit", tags=["dashboard"])
    def audit_log(
        env: str | None = None, limit: int = 100, who: Principal = view
    ) -> dict[str, Any]:
        """The newest events (of `env`) and the chain's verification."""
        if env is not None and not who.may(VIEWER, env):
            raise HTTPException(403, who.why_not(VIEWER, env))
        out = audit_view(server, env, max(1, min(limit, 1000)))
        out["events"] = [e for e in out["events"] if e["env"] is None or who.may(VIEWER, e["env"])]
        return out

    @api.get("/api/v1/freezes", tags=["dashboard"])
    def freeze_list(who: Principal = view) -> list[dict[str, Any]]:
        """Each environment's freeze windows with their current or next occurrence."""
        return freeze_view(server, _envs(server, who))


# --- pages --------------------------------------------------------------------------------


def _pages(api: FastAPI, server: Server) -> None:
    def page(path: str) -> Callable[[Page], Page]:
        """A GET page: logged-in users only (others go to /login?next=...)."""

        def wrap(fn: Page) -> Page:
            def handler(request: Request) -> Response:
                who = users.page_user(server, request)
                if who is None:
                    return _login(request)
                return fn(request, who, **request.path_params)

            api.add_api_route(
                path, handler, methods=["GET"], include_in_schema=False, response_class=HTMLResponse
            )
            return fn

        return wrap

    @page("/")
    def overview(request: Request, who: Principal) -> Response:
        envs = _envs(server, who)
        status = {e: _status(server, e) for e in envs}
        waiting = [r for r in approvals.listed(server.ctx.engine) if r.state == approvals.PENDING]
        return _render(
            server,
            request,
            who,
            "overview.html",
            envs=status,
            config=server.ctx.config,
            waiting=[r for r in waiting if who.may(VIEWER, r.env)],
        )

    @page("/environments/{env}")
    def environment(request: Request, who: Principal, env: str) -> Response:
        if (missing := _no_env(server, request, who, env)) is not None:
            return missing
        s = _status(server, env)
        deps = ops.history(server.ctx, env, TIMELINE)
        rows = repo.list_releases(server.ctx.engine)
        return _render(
            server, request, who, "environment.html", env=env, s=s, deps=deps, releases=rows
        )

    @page("/environments/{env}/live")
    def live_view(request: Request, who: Principal, env: str) -> Response:
        if (missing := _no_env(server, request, who, env)) is not None:
            return missing
        return _render(server, request, who, "live.html", env=env, now=live(server, env))

    @page("/environments/{env}/deployments/{dep_id}")
    def deployment(request: Request, who: Principal, env: str, dep_id: str) -> Response:
        if (missing := _no_env(server, request, who, env)) is not None:
            return missing
        dep = _deployment(server, env, dep_id)
        if dep is None:
            known = [
                (f"#{d['id']}: {d['kind']} {d['to_version']} ({d['status']})", _dep_url(d))
                for d in ops.history(server.ctx, env, 10)
            ]
            return _not_found(server, request, who, f"deployment {dep_id!r} of {env}", known)
        return _render(server, request, who, "deployment.html", env=env, **dep)

    @page("/environments/{env}/rollback")
    def rollback_plan(request: Request, who: Principal, env: str) -> Response:
        if (missing := _no_env(server, request, who, env)) is not None:
            return missing
        to = request.query_params.get("to") or None
        plan = _rollback_plan(server, env, to)
        return _render(server, request, who, "rollback.html", env=env, to=to, **plan)

    @page("/releases")
    def releases(request: Request, who: Principal) -> Response:
        rows = repo.list_releases(server.ctx.engine, include_pruned=True)
        marks: dict[str, list[dict[str, Any]]] = {}
        for m in repo.get_marks(server.ctx.engine):
            if who.may(VIEWER, m["env"]):
                marks.setdefault(m["version"], []).append(m)
        live = {e: repo.env_state(server.ctx.engine, e)["live_version"] for e in _envs(server, who)}
        return _render(server, request, who, "releases.html", releases=rows, marks=marks, live=live)

    @page("/approvals")
    def approvals_page(request: Request, who: Principal) -> Response:
        now = server.now()
        rows = [
            approvals.current(r, now)
            for r in approvals.listed(server.ctx.engine)
            if who.may(VIEWER, r.env)
        ]
        pending = [r for r in rows if r.state == approvals.PENDING]
        done = [r for r in rows if r.state != approvals.PENDING][:50]
        return _render(
            server,
            request,
            who,
            "approvals.html",
            pending=pending,
            done=done,
            jobs=server.approved,
        )

    @page("/approvals/{request_id}")
    def approval_page(request: Request, who: Principal, request_id: str) -> Response:
        """One request (notifications link here): the inbox with it alone."""
        found = _approval(server, who, request_id)
        if found is None:
            known = [
                (f"#{r.id}: {r.version} to {r.env} ({r.state})", f"/approvals/{r.id}")
                for r in approvals.listed(server.ctx.engine)
                if who.may(VIEWER, r.env)
            ]
            return _not_found(server, request, who, f"approval request {request_id!r}", known)
        waiting = found.state == approvals.PENDING
        return _render(
            server,
            request,
            who,
            "approvals.html",
            pending=[found] if waiting else [],
            done=[] if waiting else [found],
            jobs=server.approved,
        )

    @page("/freezes")
    def freeze_page(request: Request, who: Principal) -> Response:
        c = freezes.clock()
        rows = freeze_view(server, _envs(server, who))
        return _render(
            server,
            request,
            who,
            "freezes.html",
            windows=rows,
            now=c.now,
            here=freezes.here(),
            overridden=c.overridden,
        )

    @page("/audit")
    def audit_page(request: Request, who: Principal) -> Response:
        env = request.query_params.get("env") or None
        if env is not None and env not in _envs(server, who):
            return _not_found(server, request, who, f"environment {env!r}", _env_links(server, who))
        found = audit_view(server, env, AUDIT_PAGE)
        events = [e for e in found["events"] if e["env"] is None or who.may(VIEWER, e["env"])]
        return _render(
            server,
            request,
            who,
            "audit.html",
            verify=found["verify"],
            events=events,
            env=env,
            config_envs=_envs(server, who),
        )

    @page("/incidents")
    def incidents_page(request: Request, who: Principal) -> Response:
        rows = [i for i in ops.incident_list(server.ctx, None) if who.may(VIEWER, i.env)]
        return _render(server, request, who, "incidents.html", incidents=rows)

    @page("/report")
    def report_page(request: Request, who: Principal) -> Response:
        now = time.time()
        period = Period(now - REPORT_DAYS * 86400, now)
        deps = [
            d
            for d in repo.list_deployments(server.ctx.engine, None, 10_000_000)
            if who.may(VIEWER, d["env"])
        ]
        rows = [d for d in drills.history(server.ctx, None) if who.may(VIEWER, d["env"])]
        return _render(
            server,
            request,
            who,
            "report.html",
            report=figures(deps, lambda _: None, period),
            drills=drill_rows(rows, period),
            days=REPORT_DAYS,
        )


def _approval(server: Server, who: Principal, request_id: str) -> approvals.Request | None:
    if not request_id.isdigit() or not 0 < int(request_id) < 2**31:
        return None
    try:
        r = approvals.get(server.ctx.engine, int(request_id))
    except RollwiseError:
        return None
    return approvals.current(r, server.now()) if who.may(VIEWER, r.env) else None


def _status(server: Server, env: str) -> dict[str, Any]:
    """`env`'s status, shared with the API's readers (computed at most every 0.5 s)."""
    found: dict[str, Any] = server.status.get(env)["environments"][env]
    return found


def _no_env(server: Server, request: Request, who: Principal, env: str) -> Response | None:
    """A 404 page for an environment that does not exist (or that `who` may not see)."""
    if env in _envs(server, who):
        return None
    return _not_found(server, request, who, f"environment {env!r}", _env_links(server, who))


def _env_links(server: Server, who: Principal) -> list[tuple[str, str]]:
    return [(e, f"/environments/{quote(e)}") for e in _envs(server, who)]


def _dep_url(d: dict[str, Any]) -> str:
    return f"/environments/{quote(str(d['env']))}/deployments/{d['id']}"


def _deployment(server: Server, env: str, dep_id: str) -> dict[str, Any] | None:
    """A deployment with its journal and analysis decisions; None when `env` has no such."""
    ctx = server.ctx
    if not dep_id.isdigit() or not 0 < int(dep_id) < 2**31:
        return None
    try:
        dep = repo.get_deployment(ctx.engine, int(dep_id))
    except NoResultFound:
        return None
    if dep["env"] != env:
        return None
    journal = repo.journal_rows(ctx.engine, dep["id"])
    return {
        "dep": dep,
        "steps": _steps(journal),
        "decisions": ops.decisions(ctx, env, dep["id"]),
        "events": [
            e for e in audit.iter_events(ctx.engine, env, limit=EVENTS_READ) if belongs(e, dep)
        ],
    }


def belongs(event: dict[str, Any], dep: dict[str, Any]) -> bool:
    """An event shown on a deployment's page: one that names the deployment, or one that
    names none and happened while it ran (analysis decisions have a table of their own)."""
    named = event["data"].get("deployment")
    if named is not None:
        return bool(named == dep["id"])
    ran = float(dep["created_at"]) <= float(event["ts"]) <= float(dep["updated_at"]) + 1
    return ran and event["action"] != "analysis"


def _steps(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step: when it started and ended, its last phase and what it recorded."""
    steps: dict[str, dict[str, Any]] = {}
    for row in journal:
        s = steps.setdefault(row["step"], {"step": row["step"], "started": row["at"]})
        s.update(phase=row["phase"], at=row["at"], data=row["data"] or s.get("data"))
    return list(steps.values())


def _rollback_plan(server: Server, env: str, to: str | None) -> dict[str, Any]:
    """What a rollback of `env` (to `to`) would change, or why it cannot run."""
    ctx = server.ctx
    try:
        live, target = ops.rollback_plan(ctx, env, to)
        schema_rows, dropped = ops.describe_schema(ctx, env, live, target)
    except RollwiseError as e:
        return {"refused": {"error": e.message, "where": e.where, "hint": e.hint}}
    return {
        "refused": None,
        "live": live,
        "target": target,
        "change": ops.describe_change(live, target) + ops.describe_hosts(ctx, env),
        "schema": schema_rows,
        "dropped": dropped,
        "running": ops.running(ctx, env),
    }
