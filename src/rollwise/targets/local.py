"""Local target: each release unpacked in its own directory, instances supervised by the agent.

Secrets go to the agent over its control socket and live in its memory only; an agent
restarted from its state file gets them again here, resolved anew for each waiting
instance's version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollwise import artifacts
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig
from rollwise.domain import Endpoint
from rollwise.ports import free_ports
from rollwise.private import close_tree
from rollwise.secrets import Secret, split
from rollwise.targets.base import EnvFor, InstanceInfo
from rollwise.targets.common import resume, tail, wait_ready

HOST = "127.0.0.1"  # the agent starts instances on this machine's loopback


class LocalTarget:
    type = "local"

    def __init__(
        self,
        env_dir: Path,
        env: str,
        listen: str | None,
        env_for: EnvFor,
        ports: range | None = None,
    ) -> None:
        self.env_dir = env_dir
        self.ports = ports  # target.ports; None: ports.free_ports' default
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
        return resume(
            waiting,
            self.env_for,
            self.env,
            lambda name, secrets: self.agent.call("resume", name=name, secrets=secrets),
        )

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        release = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(release)  # unpacking sets each file's mode from the archive (0644, 0755)
        return release

    def endpoints(self, n: int) -> list[Endpoint]:
        return [Endpoint(HOST, port) for port in free_ports(n, HOST, self.ports)]

    def start(
        self,
        name: str,
        version: str,
        endpoint: Endpoint,
        command: str,
        env: dict[str, str | Secret],
    ) -> None:
        plain, secrets = split(env)
        spec = {
            "name": name,
            "version": version,
            "command": command,
            "cwd": str(self.env_dir / "releases" / version),
            "port": endpoint.port,
            "host": endpoint.host,
            "env": plain,
            "secrets": secrets,
            "ports": [self.ports[0], self.ports[-1]] if self.ports else None,
        }
        self.agent.call("start", spec=spec)

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        wait_ready(
            name,
            endpoint,
            health,
            lambda: next((i for i in self.instances() if i.name == name), None),
        )

    def logs(self, name: str, endpoint: Endpoint, lines: int) -> str:
        info = next((i for i in self.instances() if i.name == name), None)
        return tail(Path(info.log), lines) if info else ""

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        self.agent.call("stop", name=name, grace=grace, timeout=grace + 30)

    def instances(self) -> list[InstanceInfo]:
        return [
            InstanceInfo(
                i["name"], i["version"], HOST, i["port"], i["alive"], i["restarts"], i["log"]
            )
            for i in self.agent.call("instances")
        ]
