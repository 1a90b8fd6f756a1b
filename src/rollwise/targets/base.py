"""The Target interface and its factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rollwise.config.schema import EnvironmentConfig, HealthConfig
from rollwise.secrets import Secret


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    version: str
    port: int
    alive: bool
    restarts: int
    log: str


class Target(Protocol):
    type: str

    def ensure(self) -> bool:
        """Make the target reachable (start the local agent, connect to hosts); True when
        it was not and had to be started."""

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        """Put the release's files in place; returns its directory. Idempotent."""

    def start(self, name: str, version: str, release_dir: Path, port: int,
              command: str, env: dict[str, str | Secret]) -> None:
        """Start one instance. Idempotent by `name`."""

    def wait_ready(self, name: str, port: int, health: HealthConfig) -> None:
        """Return when the instance answers its health check; raise HealthCheckFailed."""

    def stop(self, name: str, grace: float) -> None:
        """Stop an instance gracefully. Idempotent."""

    def instances(self) -> list[InstanceInfo]:
        """Instances the target runs now."""


def make_target(cfg: EnvironmentConfig, env_dir: Path, env: str) -> Target:
    from rollwise.targets.local import LocalTarget

    listen = cfg.router.listen if cfg.router.type == "builtin" else None
    return LocalTarget(env_dir, env, listen)
