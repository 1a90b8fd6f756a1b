"""Local target: each release unpacked in its own directory, instances supervised by the agent.

Secrets go to the agent over its control socket and live in its memory only; an agent
restarted from its state file gets them again here, resolved anew for each waiting
instance's version.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

from rollwise import artifacts, reasons
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig
from rollwise.domain import Endpoint
from rollwise.errors import ConfigError, HealthCheckFailed
from rollwise.ports import free_ports
from rollwise.private import close_tree
from rollwise.secrets import Secret, split
from rollwise.targets.base import EnvFor, InstanceInfo

HOST = "127.0.0.1"  # the agent starts instances on this machine's loopback


class LocalTarget:
    type = "local"

    def __init__(self, env_dir: Path, env: str, listen: str | None,
                 env_for: EnvFor) -> None:
        self.env_dir = env_dir
        self.env = env
        self.agent = AgentClient(env_dir, env)
        self.listen = listen
        self.env_for = env_for

    def ensure(self) -> bool:
        started = self.agent.alive() is None
        info = self.agent.ensure(self.listen)  # a running agent's router moves to a changed listen
        return self._resume(info.get("waiting", [])) or started

    def _resume(self, waiting: list[dict[str, Any]]) -> bool:
        """Give instances restored by a restarted agent their secrets; True if any waited."""
        envs: dict[str, dict[str, str]] = {}
        for w in waiting:
            if w["version"] not in envs:
                envs[w["version"]] = split(self.env_for(w["version"]))[1]
            values = envs[w["version"]]
            if missing := [n for n in w["secrets"] if n not in values]:
                raise ConfigError(
                    f"instance {w['name']} of {w['version']} ran with secret(s) "
                    f"{', '.join(missing)}, which environment {self.env!r} no longer has",
                    where=f"environments.{self.env}.secrets",
                    hint="add them back, or deploy to replace the instance")
            self.agent.call("resume", name=w["name"],
                            secrets={n: values[n] for n in w["secrets"]})
        return bool(waiting)

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        release = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(release)  # unpacking sets each file's mode from the archive (0644, 0755)
        return release

    def endpoints(self, n: int) -> list[Endpoint]:
        return [Endpoint(HOST, port) for port in free_ports(n)]

    def start(self, name: str, version: str, release_dir: Path, endpoint: Endpoint,
              command: str, env: dict[str, str | Secret]) -> None:
        plain, secrets = split(env)
        spec = {"name": name, "version": version, "command": command, "cwd": str(release_dir),
                "port": endpoint.port, "env": plain, "secrets": secrets}
        self.agent.call("start", spec=spec)

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        deadline = time.monotonic() + health.ready_timeout_s
        ok, last = 0, "no answer yet"
        while time.monotonic() < deadline:
            info = next((i for i in self.instances() if i.name == name), None)
            if info is None or (not info.alive and info.restarts > 0):
                raise HealthCheckFailed(
                    f"instance {name} exited before it was ready ({last})",
                    where=f"{info.log if info else name}",
                    hint="read the instance log above; the previous version keeps serving",
                )
            status, last = _probe(endpoint, health)
            ok = ok + 1 if 200 <= status < 300 else 0
            if ok >= health.successes:
                return
            time.sleep(health.interval_s)
        raise HealthCheckFailed(
            f"instance {name} was not ready within {health.ready_timeout_s:g} s: {last}",
            where=f"GET {endpoint.url(health.path)}",
            hint=f"{reasons.HEALTH_CHECK_FAILED}: nothing was switched; the previous version "
            "keeps serving. Raise health.ready_timeout_s if the app needs longer to start",
        )

    def stop(self, name: str, grace: float) -> None:
        self.agent.call("stop", name=name, grace=grace, timeout=grace + 30)

    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(i["name"], i["version"], HOST, i["port"], i["alive"],
                             i["restarts"], i["log"]) for i in self.agent.call("instances")]


def _probe(endpoint: Endpoint, health: HealthConfig) -> tuple[int, str]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=health.timeout_s)
    try:
        conn.request("GET", health.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, f"HTTP {resp.status}"
    except OSError as e:
        return 0, str(e) or type(e).__name__
    finally:
        conn.close()
