"""End to end: the real agent, router and example app, driven through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rollwise import loadgen
from rollwise.controller.context import Context
from rollwise.controller.lock import try_acquire
from rollwise.errors import ExitCode
from tests.conftest import Project
from tests.helpers import router_version, status


def set_config(p: Project, **changes: object) -> None:
    path = p.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))


def test_given_two_releases_when_deploy_then_rollback_under_load_then_nothing_fails(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    host, port = status(project)["router"].rsplit(":", 1)
    load = loadgen.Load(host, int(port), rate=200, max_duration_s=60).start()
    deployed = project.cli("deploy", "1.1.0", check=True)
    assert "deployed to 1.1.0" in deployed.stdout
    rolled = project.cli("rollback", check=True)
    results = load.stop()
    assert "rolled back to 1.0.0" in rolled.stdout
    assert "version: 1.1.0 -> 1.0.0" in rolled.stderr  # shown before acting
    summary = loadgen.summarize(results)
    assert summary["requests_failed"] == 0, summary
    assert summary["by_version"].get("1.1.0", 0) > 0
    s = status(project)
    assert (s["live_version"], s["marks"]["1.1.0"], s["marks"]["1.0.0"]) == ("1.0.0", "bad", "good")
    assert {i["version"] for i in s["instances"]} == {"1.0.0"}
    assert router_version(project) == "1.0.0"
    # a second rollback never lands on the release marked bad, nor moves forward
    again = project.cli("rollback")
    assert again.returncode == ExitCode.NOT_FOUND
    assert "no known-good release deployed before 1.0.0" in again.stderr
    assert router_version(project) == "1.0.0"


def test_given_a_release_that_never_gets_ready_then_nothing_is_switched(project):
    set_config(project, health={"path": "/health", "ready_timeout_s": 2})
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    (project.root / "app.py").write_text(
        (project.root / "app.py")
        .read_text()
        .replace('if self.path == "/health":', 'if self.path == "/never":')
    )
    project.release("1.2.0")
    bad = project.cli("deploy", "1.2.0")
    assert bad.returncode == ExitCode.HEALTH
    assert "was not ready within 2 s" in bad.stderr and "HTTP 404" in bad.stderr
    s = status(project)
    assert (s["live_version"], s["marks"]["1.2.0"]) == ("1.0.0", "bad")
    assert [i["version"] for i in s["instances"]] == ["1.0.0"]
    assert s["last_deployment"]["status"] == "failed"
    assert router_version(project) == "1.0.0"


def test_given_a_release_that_crashes_at_start_then_the_log_is_named(project):
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    (project.root / "app.py").write_text("raise SystemExit('cannot reach the marketplace')\n")
    project.release("1.3.0")
    bad = project.cli("deploy", "1.3.0")
    assert bad.returncode == ExitCode.HEALTH
    assert "exited before it was ready" in bad.stderr and ".log" in bad.stderr
    assert router_version(project) == "1.0.0"


def test_given_bad_input_then_clear_errors_and_nothing_changes(project, tmp_path):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)

    missing = project.cli("deploy", "9.9.9")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert "release 9.9.9 does not exist" in missing.stderr and "1.0.0, 1.1.0" in missing.stderr
    unknown_to = project.cli("rollback", "--to", "0.0.1")
    assert unknown_to.returncode == ExitCode.NOT_FOUND and "--to" in unknown_to.stderr
    not_semver = project.cli("release", "create", "--version", "latest")
    assert not_semver.returncode == 1 and "not a semantic version" in not_semver.stderr
    dup = project.cli("release", "create", "--version", "1.0.0")
    assert dup.returncode == 1 and "already exists" in dup.stderr

    ctx = Context.open(project.root)
    artifact = ctx.artifacts_dir() / f"{_sha(ctx, '1.1.0')}.tar.gz"
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))
    tampered = project.cli("deploy", "1.1.0")
    assert tampered.returncode == ExitCode.INTEGRITY
    assert "artifact of release 1.1.0 was modified" in tampered.stderr
    assert status(project)["live_version"] == "1.0.0"

    token = try_acquire(ctx.engine, "dev", "ci-runner pid 4242 on build-7")
    assert token is not None
    locked = project.cli("deploy", "1.1.0")
    assert locked.returncode == ExitCode.LOCKED and "ci-runner pid 4242" in locked.stderr

    cfg = (project.root / "rollwise.yaml").read_text()
    (project.root / "rollwise.yaml").write_text(cfg + "keep_releases: 1\n")
    low = project.cli("deploy", "1.1.0")
    assert low.returncode == ExitCode.CONFIG and "keep_releases" in low.stderr
    (project.root / "rollwise.yaml").write_text(cfg + "  unknown_key: 1\n")
    assert project.cli("status").returncode == ExitCode.CONFIG
    (project.root / "rollwise.yaml").write_text(cfg)
    assert status(project)["live_version"] == "1.0.0"


def _sha(ctx: Context, version: str) -> str:
    from rollwise.store import repo

    rel = repo.get_release(ctx.engine, version)
    assert rel is not None
    return str(rel["sha256"])


def test_given_the_router_port_in_use_then_deploy_says_so(project):
    import socket

    project.release("1.0.0")
    host, port = yaml.safe_load((project.root / "rollwise.yaml").read_text())["environments"][
        "dev"
    ]["router"]["listen"].rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        res = project.cli("deploy", "1.0.0")
    assert res.returncode == ExitCode.CONFIG
    assert f"router address {host}:{port} of environment 'dev' is in use" in res.stderr


def test_given_router_listen_changed_when_the_agent_runs_then_it_moves_or_refuses(project):
    import socket

    from rollwise.ports import free_port

    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    old = status(project)["router"]
    moved_to = f"127.0.0.1:{free_port()}"
    project.configure(router={"listen": moved_to})

    project.cli("deploy", "1.1.0", check=True)

    assert status(project)["router"] == moved_to and router_version(project) == "1.1.0"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect((old.rsplit(":", 1)[0], int(old.rsplit(":", 1)[1])))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        project.configure(router={"listen": taken})
        refused = project.cli("deploy", "1.0.0")
    assert refused.returncode == ExitCode.CONFIG, refused.stderr
    assert f"router address {taken} of environment 'dev' is in use" in refused.stderr
    project.configure(router={"listen": moved_to})
    assert router_version(project) == "1.1.0" and status(project)["live_version"] == "1.1.0"


def test_given_nothing_in_progress_then_rollback_and_abort_are_safe_noops(project):
    project.release("1.0.0")
    nothing = project.cli("rollback")
    assert nothing.returncode == ExitCode.NOT_FOUND
    assert "nothing to roll back to" in nothing.stderr and "nothing was changed" in nothing.stderr
    assert "nothing to abort" in project.cli("abort", check=True).stdout
    project.cli("deploy", "1.0.0", check=True)
    same = project.cli("rollback", "--to", "1.0.0", check=True)
    assert "already serving" in same.stdout
    assert "nothing to abort" in project.cli("abort", check=True).stdout
    assert router_version(project) == "1.0.0"


def test_audit_verify_names_the_first_tampered_event(project):
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    ok = project.cli("audit", "verify", check=True)
    assert "chain intact" in ok.stdout
    exported = [
        json.loads(x) for x in project.cli("audit", "export", check=True).stdout.split("\n") if x
    ]
    assert {"release", "deploy", "switch", "step"} <= {e["action"] for e in exported}
    import sqlite3

    with sqlite3.connect(project.root / ".rollwise" / "state.db") as conn:
        conn.execute("UPDATE events SET actor = 'mallory' WHERE seq = 3")
    bad = project.cli("audit", "verify")
    assert bad.returncode == ExitCode.INTEGRITY
    assert "first bad event: 3" in bad.stderr


def test_secrets_reach_the_app_and_nowhere_else(project):
    set_config(
        project,
        environments={
            "dev": {
                "router": yaml.safe_load((project.root / "rollwise.yaml").read_text())[
                    "environments"
                ]["dev"]["router"],
                "secrets": ["MARKETPLACE_TOKEN"],
            }
        },
    )
    project.release("1.0.0")
    no_value = project.cli("deploy", "1.0.0")
    assert no_value.returncode == ExitCode.CONFIG and "MARKETPLACE_TOKEN" in no_value.stderr
    value = "tok-4f1d9c2a77"
    res = project.cli(
        "deploy", "1.0.0", env={"ROLLWISE_SECRET_MARKETPLACE_TOKEN": value}, check=True
    )
    pid = json.loads(project.cli("status", "--json", check=True).stdout)
    inst = pid["environments"]["dev"]["instances"][0]
    agent = project.root / ".rollwise" / "envs" / "dev"
    assert value not in res.stdout + res.stderr
    assert value not in project.cli("audit", "export", check=True).stdout
    # only the agent's restart state holds instance environments, and only its owner reads it
    assert (agent / "agent.json").stat().st_mode & 0o777 == 0o600
    assert [
        f
        for f in (project.root / ".rollwise").rglob("*")
        if f.is_file() and f.name != "agent.json" and value.encode() in f.read_bytes()
    ] == []
    environ = Path(f"/proc/{_pid(agent, inst['name'])}/environ").read_bytes()
    assert f"MARKETPLACE_TOKEN={value}".encode() in environ


def _pid(env_dir: Path, name: str) -> int:
    from rollwise.agent.client import AgentClient

    insts = AgentClient(env_dir, "dev").call("instances")
    return int(next(i["pid"] for i in insts if i["name"] == name))


def test_retention_never_prunes_live_or_rollback_target(project):
    set_config(project, keep_releases=3)
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    project.cli("deploy", "1.1.0", check=True)
    project.release("1.2.0", "1.3.0", "1.4.0", "1.5.0")
    listed = json.loads(project.cli("release", "list", "--json", check=True).stdout)
    assert [r["version"] for r in listed] == ["1.0.0", "1.1.0", "1.3.0", "1.4.0", "1.5.0"]
    rolled = project.cli("rollback", check=True)
    assert "rolled back to 1.0.0" in rolled.stdout


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(
    "step", ["verify", "unpack", "start", "health", "switch", "drain", "stop_old", "finalize"]
)
def test_given_sigkill_at_a_step_boundary_then_the_next_command_makes_it_consistent(
    project, step, where
):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    killed = project.cli("deploy", "1.1.0", env={"ROLLWISE_FAILPOINT": f"{step}:{where}"})
    assert killed.returncode == -9
    seen = status(project)  # only reads: reports what is left and who acts on it
    assert seen["in_progress"]["interrupted"] and not seen["healthy"]
    assert f"interrupted at step {step}" in seen["interrupted"]
    assert "rollwise recover" in seen["interrupted"]
    assert status(project)["in_progress"] == seen["in_progress"]
    recovered = project.cli("recover", check=True).stdout
    # switch:after applied the weights but never journaled it: undone, which is as safe
    switched = step in ("drain", "stop_old", "finalize")
    live = "1.1.0" if switched else "1.0.0"
    assert ("resumed" if switched else "rolled it back") in recovered
    s = status(project)
    assert s["live_version"] == live and s["healthy"]
    assert s["in_progress"] is None and s["interrupted"] is None
    serving = {i["version"] for i in s["instances"] if s["weights"].get(i["name"], 0) > 0}
    assert serving == {live}
    assert {i["version"] for i in s["instances"]} == {live}
    assert s["last_deployment"]["status"] == ("succeeded" if switched else "aborted")
    assert router_version(project) == live
    events = [
        json.loads(x) for x in project.cli("audit", "export", check=True).stdout.split("\n") if x
    ]
    assert events[-1]["action"] == "deploy"
    assert events[-1]["outcome"] == ("succeeded" if switched else "aborted")
    assert "chain intact" in project.cli("audit", "verify", check=True).stdout
    again = project.cli("deploy", "1.1.0" if not switched else "1.0.0", check=True)
    assert again.returncode == 0


def test_progress_json_writes_every_event_as_one_json_line(project):
    project.release("1.0.0")
    res = project.cli("--progress", "json", "deploy", "1.0.0", "--env", "dev", check=True)
    events = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON
    steps = [
        e["data"]["step"] for e in events if e.get("action") == "step" and e["outcome"] == "ok"
    ]
    assert steps[0] == "verify" and steps[-1] == "finalize" and "switch" in steps
    assert events[-2]["action"] == "deploy" and events[-2]["outcome"] == "succeeded"
    assert events[-1] == {"result": "ok", "exit_code": 0}  # the stream always ends with one
    assert all(e["env"] == "dev" and e["actor"] for e in events if e.get("action") == "step")
    bad = project.cli("--progress", "json", "deploy", "9.9.9", "--env", "dev")
    assert json.loads(bad.stderr.splitlines()[-1]) == {
        "error": "release 9.9.9 does not exist",
        "where": "version",
        "hint": "releases you can use: 1.0.0 (`rollwise release list`)",
        "exit_code": 7,
    }
    assert project.cli("--progress", "loud", "status").returncode == 2
    usage = project.cli("--progress", "json", "deploy", "--env", "dev")
    assert usage.returncode == 2
    assert json.loads(usage.stderr.splitlines()[-1]) == {"result": "error", "exit_code": 2}


def test_logs_show_what_each_instance_wrote_and_name_an_unknown_one(project):
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", "--env", "dev", check=True)
    rows = json.loads(project.cli("logs", "--env", "dev", "--json", check=True).stdout)
    assert len(rows) == 1 and rows[0]["version"] == "1.0.0" and rows[0]["alive"]
    assert f"order-sync 1.0.0 listening on 127.0.0.1:{rows[0]['port']}" in rows[0]["log"]
    text = project.cli("logs", "--env", "dev", "-n", "1", check=True).stdout
    assert text.splitlines()[0].startswith(f"== {rows[0]['instance']} (1.0.0) on 127.0.0.1:")
    missing = project.cli("logs", "--env", "dev", "--instance", "nope")
    assert missing.returncode == 7 and "no instance 'nope'" in missing.stderr
