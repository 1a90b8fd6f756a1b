"""The team server on the example app: every API route checked against every role, the CLI
pointed at a server (ROLLWISE_URL) deploying, rolling back and reading status with the same
output and exit codes, and two servers on one PostgreSQL state store: one job per
environment at a time, and a deployment whose server died taken over and recovered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from rollwise.api import auth
from rollwise.api.server import make_app
from rollwise.errors import ExitCode
from rollwise.ports import free_port
from tests.component.conftest import pg_url  # noqa: F401 (fixture)
from tests.conftest import Project
from tests.helpers import incident_of

pytestmark = pytest.mark.xdist_group("server")


def token(p: Project, name: str, role: str, *envs: str, env: dict[str, str] | None = None) -> str:
    scope = [a for e in envs for a in ("--env", e)]
    out = p.cli("token", "create", name, "--role", role, *scope, "--json", env=env, check=True)
    return str(json.loads(out.stdout)["token"])


def role_of(route: APIRoute) -> str | None:
    for dep in route.dependant.dependencies:
        if role := getattr(dep.call, "role", None):
            return str(role)
    return None


def call(client: httpx.Client, route: APIRoute, bearer: str | None) -> httpx.Response:
    path = route.path.format(
        env="dev", job_id="none", token_id="none", version="none", request_id="1"
    )
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    method = next(iter(route.methods or ()))
    return client.request(method, path, headers=headers, json={} if method == "POST" else None)


def test_every_route_needs_a_token_and_the_role_it_names(project: Project) -> None:
    api = make_app(project.root)
    engine = api.state.server.ctx.engine
    tokens = {r: auth.create(engine, r, r, None, "test", None)[0] for r in auth.ROLES}
    other = auth.create(engine, "other", "admin", ["nowhere"], "test", None)[0]
    routes = [r for r in api.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    assert len(routes) >= 12
    seen = {}
    with httpx.Client(base_url=Server(project, {}, "a").url, timeout=30) as client:
        for route in routes:
            need = role_of(route)
            assert need in auth.ROLES, f"{route.path} names no role"
            assert call(client, route, None).status_code == 401, route.path
            for have in auth.ROLES:
                got = call(client, route, tokens[have]).status_code
                allowed = auth.ROLES.index(have) >= auth.ROLES.index(need)
                assert (got == 403) == (not allowed), (route.path, have, got)
                assert got != 401 and got < 500, (route.path, have, got)
                seen[route.path, have] = got
            if "{env}" in route.path:
                assert call(client, route, other).status_code == 403, route.path
        spec = client.get("/openapi.json").json()
    assert {p for p in spec["paths"] if p.startswith("/api/")} == {r.path for r in routes}
    assert seen["/api/v1/environments/{env}/deploy", "deployer"] == 422  # {} is malformed


def test_bad_requests_get_a_reason_and_change_nothing(project: Project) -> None:
    project.release("1.0.0")
    api = make_app(project.root)
    engine = api.state.server.ctx.engine
    deployer = {
        "Authorization": f"Bearer {auth.create(engine, 'ci', 'deployer', None, 't', None)[0]}"
    }
    with httpx.Client(base_url=Server(project, {}, "a").url, timeout=30) as client:
        bad = client.post(
            "/api/v1/environments/dev/deploy", headers=deployer, json={"versoin": "1"}
        )
        assert bad.status_code == 422 and "body.version: Field required" in bad.json()["where"]
        nope = client.post(
            "/api/v1/environments/nope/deploy", headers=deployer, json={"version": "1.0.0"}
        )
        assert nope.status_code == 404 and "unknown environment 'nope'" in nope.json()["error"]
        missing = client.post(
            "/api/v1/environments/dev/deploy", headers=deployer, json={"version": "9.9.9"}
        )
        assert missing.status_code == 404 and missing.json()["exit_code"] == ExitCode.NOT_FOUND
        wrong = client.get("/api/v1/status", headers={"Authorization": "Bearer rw_x_y"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unknown token"
        history = client.get("/api/v1/history", headers=deployer).json()
    assert history == []


class Server:
    def __init__(self, p: Project, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = p.root / f"server-{name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rollwise",
                    "server",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "-C",
                    str(p.root),
                ],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        p.cleanups.append(self.stop)
        for _ in range(150):
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise AssertionError(f"rollwise server did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def team(project: Project, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Project:  # noqa: F811
    """The example with its state in PostgreSQL, 1.0.0 and 1.1.0 released."""
    monkeypatch.setenv("ROLLWISE_DATABASE_URL", pg_url)
    project.release("1.0.0", "1.1.0")
    return project


def remote(url: str, tok: str) -> dict[str, str]:
    return {"ROLLWISE_URL": url, "ROLLWISE_TOKEN": tok}


def test_the_cli_through_a_server_deploys_rolls_back_and_reads_as_it_does_here(
    team: Project,
) -> None:
    ci, viewer = token(team, "ci", "deployer"), token(team, "dash", "viewer")
    server = Server(team, {"ROLLWISE_WEBHOOK_TOKEN": "w" * 24}, "a")
    hook = httpx.post(f"{server.url}/alerts/hooks/generic", json={"env": "dev"}, timeout=10)
    assert hook.status_code == 401  # the alert hooks, behind the webhook token
    via = remote(server.url, ci)

    done = team.cli("deploy", "1.0.0", env=via)
    assert done.returncode == 0, done.stderr
    assert "✓ switch" in done.stderr and "deployed to 1.0.0" in done.stdout
    here = json.loads(team.cli("status", "--json", check=True).stdout)
    there = json.loads(
        team.cli("status", "--json", env=remote(server.url, viewer), check=True).stdout
    )
    keys = ("live_version", "weights", "healthy")
    assert {k: there["environments"]["dev"][k] for k in keys} == {
        k: here["environments"]["dev"][k] for k in keys
    }

    refused = team.cli("deploy", "1.1.0", env=remote(server.url, viewer))
    assert refused.returncode == ExitCode.USAGE
    assert "token 'dash' has role viewer; this needs deployer or above" in refused.stderr
    unknown = team.cli("deploy", "1.1.0", "--env", "nope", env=via)
    assert (
        unknown.returncode == ExitCode.NOT_FOUND and "unknown environment 'nope'" in unknown.stderr
    )
    missing = team.cli("deploy", "7.0.0", env=via)
    assert missing.returncode == ExitCode.NOT_FOUND, missing.stderr

    team.cli("deploy", "1.1.0", env=via, check=True)
    back = json.loads(team.cli("rollback", "--yes", "--json", env=via, check=True).stdout)
    assert back["ok"] is True and "1.0.0" in back["message"], back
    rows = json.loads(team.cli("history", "--json", env=via, check=True).stdout)
    assert [(r["kind"], r["to_version"], r["actor"]) for r in rows[:3]] == [
        ("rollback", "1.0.0", "ci (api)"),
        ("deploy", "1.1.0", "ci (api)"),
        ("deploy", "1.0.0", "ci (api)"),
    ]
    assert rows == json.loads(team.cli("history", "--json", check=True).stdout)  # one store

    bad = team.cli("deploy", "1.1.0", env=via)  # rolled back: marked bad
    assert bad.returncode != 0 and "marked bad" in bad.stderr, bad.stderr
    why = f"{incident_of(team, '1.1.0')}: fixed the config"
    forced = team.cli("deploy", "1.1.0", "--force", "--reason", why, env=via)
    assert forced.returncode == 0, forced.stderr
    assert (
        json.loads(team.cli("status", "--json", check=True).stdout)["environments"]["dev"][
            "live_version"
        ]
        == "1.1.0"
    )


def test_a_release_made_on_a_ci_runner_is_uploaded_and_deployed_through_the_server(
    team: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ci = token(team, "ci", "deployer")
    server = Server(team, {}, "a")
    runner = Project(tmp_path / "runner")  # a checkout on a CI runner: its own scratch state
    shutil.copytree(team.root, runner.root, ignore=shutil.ignore_patterns(".rollwise", "*.log"))
    monkeypatch.delenv("ROLLWISE_DATABASE_URL")
    runner.write_version("1.2.0")
    made = runner.cli(
        "release", "create", "--version", "1.2.0", "--json", env=remote(server.url, ci)
    )
    assert made.returncode == 0, made.stderr
    sent = json.loads(made.stdout)["uploaded"]
    assert sent["version"] == "1.2.0" and sent["sha256"] == json.loads(made.stdout)["sha256"]
    again = runner.cli("release", "create", "--version", "1.2.0", env=remote(server.url, ci))
    assert again.returncode != 0 and "already exists" in again.stderr

    meta = {
        **sent,
        "version": "1.3.0",
        "app": "x",
        "size": 3,
        "git_commit": None,
        "built_at": 1.0,
        "builder": "ci",
        "changelog": None,
        "config_sha256": "0" * 64,
        "schema": None,
    }
    meta.pop("ok"), meta.pop("pruned")
    bad = httpx.put(
        f"{server.url}/api/v1/releases/1.3.0",
        content=b"abc",
        headers={"Authorization": f"Bearer {ci}", "X-Rollwise-Release": json.dumps(meta)},
    )
    assert bad.status_code == 409 and bad.json()["exit_code"] == ExitCode.INTEGRITY, bad.text

    done = team.cli("deploy", "1.2.0", env=remote(server.url, ci))
    assert done.returncode == 0, done.stderr
    there = json.loads(team.cli("status", "--json", env=remote(server.url, ci)).stdout)
    assert there["environments"]["dev"]["live_version"] == "1.2.0"


def wait(pred: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_two_servers_on_one_store_run_one_job_per_environment_and_take_over_a_dead_one(
    team: Project,
) -> None:
    ci = token(team, "ci", "deployer")
    team.cli("deploy", "1.0.0", check=True)
    team.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 2, "bake_s": 0},
        analysis={"router": {"enabled": False}},
    )
    b, c = Server(team, {}, "b"), Server(team, {}, "c")
    auth_header = {"Authorization": f"Bearer {ci}"}

    # Given both asked for a deploy of one environment at once, one runs, one is refused
    jobs = [
        httpx.post(
            f"{s.url}/api/v1/environments/dev/deploy",
            headers=auth_header,
            json={"version": "1.1.0"},
            timeout=30,
        ).json()
        | {"url": s.url}
        for s in (b, c)
    ]

    def job(j: dict[str, Any]) -> dict[str, Any]:
        return httpx.get(f"{j['url']}/api/v1/jobs/{j['id']}", headers=auth_header).json()

    wait(lambda: all(job(j)["state"] == "done" for j in jobs))
    ends = [job(j)["result"] for j in jobs]
    assert sorted(e["ok"] for e in ends) == [False, True], ends
    refused = next(e for e in ends if not e["ok"])
    assert refused["exit_code"] == ExitCode.LOCKED, refused

    # When server a dies mid-canary, Then server b recovers the deployment from its journal
    team.release("1.2.0")
    # server a dies (kill -9) once its job has half the traffic on 1.1.0
    a = Server(team, {"ROLLWISE_FAILPOINT": "canary:50:after"}, "a")
    started = httpx.post(
        f"{a.url}/api/v1/environments/dev/deploy",
        headers=auth_header,
        json={"version": "1.2.0"},
        timeout=30,
    )
    assert started.status_code == 202, started.text
    a.proc.wait(timeout=60)
    assert a.proc.returncode == -9

    def recovered() -> bool:
        s = json.loads(team.cli("status", "--json", check=True).stdout)["environments"]["dev"]
        return s["in_progress"] is None and s["live_version"] == "1.1.0"

    wait(recovered, timeout=60)
    rows = json.loads(team.cli("history", "--json", check=True).stdout)
    assert rows[0]["kind"] == "deploy" and rows[0]["to_version"] == "1.2.0"
    assert rows[0]["status"] != "running", rows[0]
    s = json.loads(team.cli("status", "--json", check=True).stdout)["environments"]["dev"]
    assert s["weights"] and all(n.startswith("1.1.0") for n in s["weights"]), s
    events = [json.loads(x) for x in team.cli("audit", "export", check=True).stdout.splitlines()]
    [took] = [e for e in events if e["actor"].startswith("server ") and e["action"] == "deploy"]
    assert (took["outcome"], took["version"]) == ("aborted", "1.2.0")
    assert took["actor"] in {f"server {b.proc.pid}", f"server {c.proc.pid}"}, took
    assert "interrupted at step canary:50" in took["reason"]


def test_a_deploy_needing_approval_waits_for_someone_else_and_a_rollback_never_does(
    team: Project,
) -> None:
    team.configure(approvals={"required": 1, "expire_h": 1})
    ana, bo = token(team, "ana", "approver"), token(team, "bo", "approver")
    viewer = token(team, "dash", "viewer")
    server = Server(team, {}, "a")
    refused = team.cli("deploy", "1.0.0")  # not through the server: no approval to run on
    assert refused.returncode == ExitCode.ERROR
    assert "dev needs 1 approval(s) from someone other than the requester" in refused.stderr

    env = {**os.environ, **remote(server.url, ana)}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "rollwise", "deploy", "1.0.0", "-C", str(team.root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    team.background.append(waiting)
    pending: list[dict[str, Any]] = []

    def asked() -> bool:
        out = team.cli("approval", "list", "--json", env=remote(server.url, viewer), check=True)
        pending[:] = [r for r in json.loads(out.stdout) if r["state"] == "pending"]
        return bool(pending)

    wait(asked, timeout=30)
    rid = str(pending[0]["id"])
    own = team.cli("approval", "approve", rid, env=remote(server.url, ana))
    assert own.returncode != 0 and "ana asked for this deploy and cannot approve it" in own.stderr
    low = team.cli("approval", "approve", rid, env=remote(server.url, viewer))
    assert low.returncode == ExitCode.USAGE and "needs approver or above" in low.stderr
    ok = team.cli("approval", "approve", rid, env=remote(server.url, bo), check=True)
    assert f"request {rid}: 1/1 approved; deploy started" in ok.stdout

    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "waiting for approval" in err and "deployed to 1.0.0" in out
    rows = json.loads(team.cli("history", "--json", check=True).stdout)
    assert (rows[0]["to_version"], rows[0]["actor"]) == ("1.0.0", "ana (api), approved by bo")
    again = team.cli("approval", "approve", rid, env=remote(server.url, bo))
    assert again.returncode != 0 and "is used, not pending" in again.stderr

    # a rollback needs no approval
    cy = token(team, "cy", "approver")
    asked_for = httpx.post(
        f"{server.url}/api/v1/environments/dev/deploy",
        headers={"Authorization": f"Bearer {bo}"},
        json={"version": "1.1.0"},
        timeout=30,
    ).json()["approval"]
    started = httpx.post(
        f"{server.url}/api/v1/approvals/{asked_for['id']}/approve",
        headers={"Authorization": f"Bearer {cy}"},
        timeout=30,
    ).json()["job"]
    jobs = f"{server.url}/api/v1/jobs/{started['id']}"
    wait(
        lambda: httpx.get(jobs, headers={"Authorization": f"Bearer {cy}"}).json()["state"] == "done"
    )
    back = team.cli("rollback", "--yes", env=remote(server.url, ana))
    assert back.returncode == 0, back.stderr
    rows = json.loads(team.cli("history", "--json", check=True).stdout)
    assert [(r["kind"], r["to_version"], r["actor"]) for r in rows[:2]] == [
        ("rollback", "1.0.0", "ana (api)"),
        ("deploy", "1.1.0", "bo (api), approved by cy"),
    ]
