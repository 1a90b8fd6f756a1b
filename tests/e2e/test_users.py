"""Dashboard users on the team server of the example app: made with `rollwise user`, they log
in and out, act on the API with their session (and its CSRF token when they change
something) within their role, cannot approve what they asked for, and stop acting when the
session has ended: logged out, unused too long, password changed or user disabled.

The server is `make_app` served by uvicorn in a thread of the test, with a clock the test
moves."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from rollwise.api import auth, users
from rollwise.api.server import make_app
from rollwise.api.users import COOKIE, IDLE_S, LIFETIME_S, TRIES
from rollwise.ports import free_port
from tests.conftest import Project
from tests.e2e.test_server import role_of

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@dataclass
class Site:
    project: Project
    app: FastAPI
    client: httpx.Client
    clock: Clock

    @property
    def engine(self) -> Engine:
        return self.app.state.server.ctx.engine

    def log_in(self, name: str, password: str = PASSWORD, next: str = "/") -> httpx.Response:
        form = {"name": name, "password": password, "next": next}
        return self.client.post("/login", data=form, follow_redirects=False)

    def session(self, name: str) -> dict[str, str]:
        """Log `name` in; the headers a dashboard page's script sends (cookie, CSRF token)."""
        done = self.log_in(name)
        assert done.status_code == 303, done.text
        sid = done.cookies[COOKIE]
        self.client.cookies.clear()  # each request names its session itself
        found = users.session(self.engine, sid, self.clock())
        assert found is not None
        return {"Cookie": f"{COOKIE}={sid}", "X-CSRF-Token": found.csrf}

    def audit(self) -> list[dict[str, object]]:
        out = self.project.cli("audit", "export", check=True).stdout
        return [json.loads(line) for line in out.splitlines()]


def add_user(p: Project, name: str, role: str, *envs: str, password: str = PASSWORD) -> None:
    scope = [a for e in envs for a in ("--env", e)]
    p.cli(
        "user", "create", name, "--role", role, *scope, "--password-stdin",
        stdin=password + "\n", check=True,
    )  # fmt: skip


def no_csrf(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "X-CSRF-Token"}


@contextlib.contextmanager
def served(project: Project) -> Iterator[Site]:
    """The project's team server, in a thread of this process, and a client of it."""
    clock, port = Clock(), free_port()
    app = make_app(project.root, now=clock)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield Site(project, app, client, clock)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def site(project: Project) -> Iterator[Site]:
    with served(project) as s:
        yield s


def test_a_user_logs_in_acts_with_the_session_and_its_csrf_token_and_logs_out(
    site: Site,
) -> None:
    # Given ana, a deployer made with the CLI
    add_user(site.project, "ana", "deployer")
    listed = site.project.cli("user", "list", "--json", check=True).stdout
    [row] = json.loads(listed)
    assert (row["name"], row["role"], row["disabled_at"]) == ("ana", "deployer", None)
    assert "hash" not in row and "argon2" not in listed

    # When she logs in from the form, Then she goes where she was going, with a session
    page = site.client.get("/login", params={"next": "/environments/dev"})
    assert page.status_code == 200 and 'value="/environments/dev"' in page.text
    assert page.headers["cache-control"] == "no-store"
    done = site.log_in("Ana", next="/environments/dev")  # names are lowercase
    assert (done.status_code, done.headers["location"]) == (303, "/environments/dev")
    cookie = done.headers["set-cookie"].lower()
    assert all(a in cookie for a in ("httponly", "samesite=strict", "path=/"))
    assert "secure" not in cookie  # plain http here; over https the cookie is Secure
    assert site.log_in("ana", next="//evil.example/x").headers["location"] == "/"
    https = site.client.post(  # through a TLS proxy on this host
        "/login",
        data={"name": "ana", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "secure" in https.headers["set-cookie"].lower()
    site.client.cookies.clear()
    ana = site.session("ana")
    whoami = site.client.get("/api/v1/whoami", headers=no_csrf(ana)).json()
    assert whoami == {"name": "ana", "role": "deployer", "envs": None}

    # a change with the cookie needs the CSRF token; a bearer token needs none
    refused = site.client.post("/api/v1/environments/dev/abort", headers=no_csrf(ana))
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
    wrong = site.client.post(
        "/api/v1/environments/dev/abort", headers={**ana, "X-CSRF-Token": "x" * 43}
    )
    assert wrong.status_code == 403
    ok = site.client.post("/api/v1/environments/dev/abort", headers=ana)
    assert ok.status_code == 200 and "nothing to abort" in ok.json()["message"]
    token = auth.create(site.engine, "ana", "deployer", None, "test", None)[0]
    by_token = site.client.post(
        "/api/v1/environments/dev/abort", headers={"Authorization": f"Bearer {token}"}
    )
    assert by_token.status_code == 200

    # When she logs out (the form's csrf field), Then the session has ended on the server
    no_field = site.client.post("/logout", headers=no_csrf(ana), follow_redirects=False)
    assert no_field.status_code == 403
    out = site.client.post(
        "/logout", headers=no_csrf(ana), data={"csrf": ana["X-CSRF-Token"]}, follow_redirects=False
    )
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert f'{COOKIE}=""' in out.headers["set-cookie"]
    after = site.client.get("/api/v1/whoami", headers=no_csrf(ana))
    assert after.status_code == 401 and "your session has ended" in after.json()["error"]

    # the audit log tells her session from a token of the same name
    events = [(e["actor"], e["action"], e["outcome"]) for e in site.audit()]
    assert ("ana (dashboard)", "user", "logged-in") in events
    assert ("ana (dashboard)", "abort", "noop") in events
    assert ("ana (api)", "abort", "noop") in events
    assert ("ana (dashboard)", "user", "logged-out") in events
    [made] = [e for e in site.audit() if (e["action"], e["outcome"]) == ("user", "created")]
    assert made["data"] == {"name": "ana", "role": "deployer", "envs": None}


def test_a_wrong_password_or_name_gets_one_answer_and_five_failures_make_the_name_wait(
    site: Site,
) -> None:
    add_user(site.project, "ana", "viewer")
    wrong = site.log_in("ana", "wrong password!")
    unknown = site.log_in("nobody", PASSWORD)
    assert (wrong.status_code, unknown.status_code) == (401, 401)
    assert "wrong name or password" in wrong.text and "wrong name or password" in unknown.text
    assert COOKIE not in wrong.headers.get("set-cookie", "")
    for _ in range(TRIES - 1):
        site.log_in("ana", "wrong password!")
    held = site.log_in("ana")  # the right password, but too many tries
    assert held.status_code == 429 and "too many failed logins for this name" in held.text
    site.clock.t += 61
    assert site.log_in("ana").status_code == 303


def test_a_disabled_user_or_a_changed_password_ends_the_sessions(site: Site) -> None:
    add_user(site.project, "ana", "viewer")
    add_user(site.project, "bo", "viewer")
    ana, bo = site.session("ana"), site.session("bo")

    site.project.cli(
        "user", "passwd", "bo", "--password-stdin", stdin="a new long passphrase\n", check=True
    )
    assert site.client.get("/api/v1/whoami", headers=bo).status_code == 401
    assert site.log_in("bo").status_code == 401
    assert site.log_in("bo", "a new long passphrase").status_code == 303

    site.project.cli("user", "disable", "ana", check=True)
    assert site.client.get("/api/v1/whoami", headers=ana).status_code == 401
    refused = site.log_in("ana")
    assert refused.status_code == 403 and "this user is disabled" in refused.text
    listed = site.project.cli("user", "list", check=True).stdout
    assert "disabled" in listed.splitlines()[0] and "active" in listed.splitlines()[1]
    outcomes = {(e["action"], e["outcome"]) for e in site.audit()}
    assert {("user", "password-set"), ("user", "disabled")} <= outcomes


def test_a_session_ends_12_hours_after_its_last_use_and_7_days_after_login(
    site: Site,
) -> None:
    add_user(site.project, "ana", "viewer")
    ana = site.session("ana")
    start = site.clock.t
    while site.clock.t + IDLE_S - 60 < start + LIFETIME_S:  # used every 12 h less a minute
        site.clock.t += IDLE_S - 60
        assert site.client.get("/api/v1/whoami", headers=ana).status_code == 200
    site.clock.t = start + LIFETIME_S
    assert site.client.get("/api/v1/whoami", headers=ana).status_code == 401

    idle = site.session("ana")
    site.clock.t += IDLE_S
    assert site.client.get("/api/v1/whoami", headers=idle).status_code == 401


def test_bad_user_commands_say_what_was_wrong(site: Site) -> None:
    p = site.project
    weak = p.cli("user", "create", "ana", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert weak.returncode == 2 and "password refused: a password needs 12" in weak.stderr
    prompt = p.cli("user", "create", "ana", "--role", "viewer")  # stdin is not a terminal
    assert prompt.returncode == 2 and "--password-stdin" in prompt.stderr
    scope = p.cli("user", "create", "ana", "--role", "viewer", "--env", "nope", "--password-stdin")
    assert scope.returncode != 0 and "nope" in scope.stderr
    missing = p.cli("user", "disable", "bo")
    assert missing.returncode == 7 and "no user 'bo'" in missing.stderr
    assert json.loads(p.cli("user", "list", "--json", check=True).stdout) == []


def test_a_viewer_user_is_refused_a_deploy_and_no_user_approves_their_own_request(
    project: Project,
) -> None:
    project.release("1.0.0")
    project.configure(approvals={"required": 2, "expire_h": 1})
    with served(project) as site:
        add_user(site.project, "vera", "viewer")
        add_user(site.project, "ana", "approver")
        add_user(site.project, "bo", "approver")
        vera, ana, bo = site.session("vera"), site.session("ana"), site.session("bo")
        deploy = "/api/v1/environments/dev/deploy"

        refused = site.client.post(deploy, headers=vera, json={"version": "1.0.0"})
        assert refused.status_code == 403
        assert (
            refused.json()["error"] == "user 'vera' has role viewer; this needs deployer or above"
        )

        asked = site.client.post(deploy, headers=ana, json={"version": "1.0.0"})
        assert asked.status_code == 202, asked.text
        rid = asked.json()["approval"]["id"]
        own = site.client.post(f"/api/v1/approvals/{rid}/approve", headers=ana)
        assert own.status_code == 409
        assert "ana asked for this deploy and cannot approve it" in own.json()["error"]
        her_token = auth.create(site.engine, "ana", "approver", None, "test", None)[0]
        by_token = site.client.post(
            f"/api/v1/approvals/{rid}/approve", headers={"Authorization": f"Bearer {her_token}"}
        )
        assert by_token.status_code == 409  # her token is her too

        other = site.client.post(f"/api/v1/approvals/{rid}/approve", headers=bo)
        assert other.status_code == 200 and other.json()["approval"]["approvers"] == ["bo"]
        events = {(e["actor"], e["action"], e["outcome"]) for e in site.audit()}
        assert {
            ("ana (dashboard)", "approval", "needed"),
            ("bo (dashboard)", "approval", "approved"),
        } <= events


def call(client: httpx.Client, route: APIRoute, headers: dict[str, str]) -> httpx.Response:
    path = route.path.format(
        env="dev", job_id="none", token_id="none", version="none", request_id="1"
    )
    method = next(iter(route.methods or ()))
    return client.request(method, path, headers=headers, json={} if method == "POST" else None)


def test_every_route_takes_a_session_with_the_role_it_names_and_changes_need_csrf(
    site: Site,
) -> None:
    for role in auth.ROLES:
        add_user(site.project, role, role)
    users.create(site.engine, "nowhere", "admin", ["nowhere"], PASSWORD, "test")
    sessions = {r: site.session(r) for r in auth.ROLES}
    outside = site.session("nowhere")
    api = site.app.routes
    routes = [r for r in api if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    assert len(routes) >= 12
    for route in routes:
        need = role_of(route)
        assert need in auth.ROLES, f"{route.path} names no role"
        unsafe = bool((route.methods or set()) & users.UNSAFE)
        for have in auth.ROLES:
            got = call(site.client, route, sessions[have]).status_code
            allowed = auth.ROLES.index(have) >= auth.ROLES.index(need)
            assert (got == 403) == (not allowed), (route.path, have, got)
            assert got != 401 and got < 500, (route.path, have, got)
            if unsafe:
                bare = call(site.client, route, no_csrf(sessions[have])).status_code
                assert bare == 403, (route.path, have, bare)
        if "{env}" in route.path:
            assert call(site.client, route, outside).status_code == 403, route.path
