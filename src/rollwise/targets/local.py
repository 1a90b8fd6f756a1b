"""Local target: each release unpacked in its own directory, instances supervised by the agent."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

from rollwise import artifacts, reasons
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig
from rollwise.errors import HealthCheckFailed
from rollwise.secrets import Secret, reveal_all
from rollwise.targets.base import InstanceInfo


class LocalTarget:
    type = "local"

    def __init__(self, env_dir: Path, env: str, listen: str | None) -> None:
        self.env_dir = env_dir
        self.agent = AgentClient(env_dir, env)
        self.listen = listen

    def ensure(self) -> bool:
        if self.agent.alive() is not None:
            return False
        self.agent.ensure(self.listen)
        return True

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        return artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)

    def start(self, name: str, version: str, release_dir: Path, port: int,
              command: str, env: dict[str, str | Secret]) -> None:
        spec = {"name": name, "version": version, "command": command, "cwd": str(release_dir),
                "port": port, "env": reveal_all(env)}
        self.agent.call("start", spec=spec)

    def wait_ready(self, name: str, port: int, health: HealthConfig) -> None:
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
            status, last = _probe(port, health)
            ok = ok + 1 if 200 <= status < 300 else 0
            if ok >= health.successes:
                return
            time.sleep(health.interval_s)
        raise HealthCheckFailed(
            f"instance {name} was not ready within {health.ready_timeout_s:g} s: {last}",
            where=f"GET http://127.0.0.1:{port}{health.path}",
            hint=f"{reasons.HEALTH_CHECK_FAILED}: nothing was switched; the previous version "
            "keeps serving. Raise health.ready_timeout_s if the app needs longer to start",
        )

    def stop(self, name: str, grace: float) -> None:
        self.agent.call("stop", name=name, grace=grace, timeout=grace + 30)

    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(i["name"], i["version"], i["port"], i["alive"], i["restarts"],
                             i["log"]) for i in self.agent.call("instances")]


def _probe(port: int, health: HealthConfig) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=health.timeout_s)
    try:
        conn.request("GET", health.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, f"HTTP {resp.status}"
    except OSError as e:
        return 0, str(e) or type(e).__name__
    finally:
        conn.close()
