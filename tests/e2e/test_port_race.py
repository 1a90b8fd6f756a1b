"""A port taken between rollwise choosing it and the instance binding it: the agent moves
the instance to a free port and the deploy goes on, instead of failing its health check."""

from __future__ import annotations

import socket
import time

import yaml

from rollwise.agent.client import AgentClient
from tests.helpers import router_version, run_in_background, status


def test_given_the_port_taken_before_the_app_binds_then_the_instance_moves(project):
    path = project.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    # the app binds 2 s after it starts: time for another process to take its port
    cfg["run"]["command"] = "sh -c 'sleep 2 && exec python3 app.py --port {port}'"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    project.release("1.0.0")
    deploy = run_in_background(project, "deploy", "1.0.0")
    agent = AgentClient(project.root / ".rollwise" / "envs" / "dev", "dev")
    deadline, taken = time.monotonic() + 30, None
    while taken is None and time.monotonic() < deadline:
        planned = agent.call("instances") if agent.alive() else []
        if planned:
            taken = socket.socket()
            taken.bind(("127.0.0.1", planned[0]["port"]))  # before the app does
            taken.listen()
        else:
            time.sleep(0.05)
    assert taken is not None, "no instance started within 30 s"
    try:
        out, err = deploy.communicate(timeout=90)
        assert deploy.returncode == 0, out + err
        lost = taken.getsockname()[1]
        [instance] = agent.call("instances")
        assert instance["port"] != lost and instance["alive"]
        assert (instance["moves"], instance["restarts"]) == (1, 0)
        s = status(project)
        assert s["live_version"] == "1.0.0" and s["healthy"]
        assert [i["port"] for i in s["instances"]] == [instance["port"]]
        assert router_version(project) == "1.0.0"  # the router sends to the new port
    finally:
        taken.close()
