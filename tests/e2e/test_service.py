"""rollwise as a service: the systemd units `rollwise agent install-service` writes pass
`systemd-analyze verify`, and their ExecStart lines, run as systemd runs them, give an agent
that rollwise uses and that brings the live release back after it is stopped (a reboot),
and a `serve` that answers."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import httpx

from rollwise.agent.client import AgentClient
from rollwise.ports import free_port
from tests.conftest import Project, require_binary
from tests.helpers import router_version, status

TOKEN = "t0ken-for-tests-0123456789"


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(path.read_text())
    return parser


def start(
    p: Project, exec_start: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run a unit's ExecStart as systemd does: its own process group, in WorkingDirectory."""
    proc = subprocess.Popen(
        shlex.split(exec_start),
        cwd=cwd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)

    p.cleanups.append(stop)
    return proc


def wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_given_the_units_then_the_agent_outlives_a_restart_and_serve_answers(project):
    analyze = require_binary("systemd-analyze", "apt-get install systemd")
    units = project.root / "units"
    units.mkdir()
    serve_at = f"127.0.0.1:{free_port()}"
    res = project.cli(
        "agent", "install-service", "--to", str(units), "--serve-listen", serve_at, check=True
    )
    agent_file = units / "rollwise-order-sync-dev-agent.service"
    serve_file = units / "rollwise-order-sync-serve.service"
    assert f"wrote {agent_file}" in res.stdout and "systemctl daemon-reload" in res.stdout
    check = subprocess.run(
        [analyze, "verify", str(agent_file), str(serve_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    agent_unit = unit(agent_file)["Service"]
    assert agent_unit["KillMode"] == "mixed" and agent_unit["Restart"] == "on-failure"
    agent = start(project, agent_unit["ExecStart"], Path(agent_unit["WorkingDirectory"]))
    client = AgentClient(project.root / ".rollwise" / "envs" / "dev", "dev")
    wait(lambda: client.alive() is not None)
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    alive = client.alive()
    assert alive is not None and alive["pid"] == agent.pid  # the CLI used the service's agent
    assert router_version(project) == "1.0.0"
    instance_pids = [i["pid"] for i in client.call("instances")]
    agent.send_signal(signal.SIGTERM)  # systemctl stop (KillMode=mixed: the agent first)
    agent.wait(timeout=60)
    for pid in instance_pids:
        wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10)
    again = start(project, agent_unit["ExecStart"], Path(agent_unit["WorkingDirectory"]))
    wait(lambda: client.alive() is not None)
    wait(
        lambda: all(i["alive"] for i in client.call("instances")) and bool(client.call("instances"))
    )
    alive = client.alive()
    assert alive is not None and alive["pid"] == again.pid
    # back with no rollwise command run, once the restarted instance listens again
    wait(lambda: router_version(project) == "1.0.0")
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["healthy"], s
    serve_unit = unit(serve_file)["Service"]
    assert serve_unit["EnvironmentFile"] == "/etc/rollwise/order-sync.env"
    start(
        project,
        serve_unit["ExecStart"],
        Path(serve_unit["WorkingDirectory"]),
        {"ROLLWISE_WEBHOOK_TOKEN": TOKEN},
    )
    wait(lambda: _answers(f"http://{serve_at}/health"))
    assert "rollwise_live_release" in httpx.get(f"http://{serve_at}/metrics").text


def test_install_service_refuses_an_ssh_environment(project):
    project.configure(target={"type": "ssh", "hosts": [{"address": "10.9.9.9"}]})
    res = project.cli("agent", "install-service", "--print")
    assert res.returncode != 0
    assert "runs on SSH hosts" in res.stderr and "environments.dev.target" in res.stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
