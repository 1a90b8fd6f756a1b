"""The Target interface (the controller's registry builds targets)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rollwise.config.schema import HealthConfig
from rollwise.domain import Endpoint
from rollwise.secrets import Secret

# a version's instance environment, secrets resolved now (for instances an agent restarted)
EnvFor = Callable[[str], Mapping[str, str | Secret]]
# progress on one host of a fleet: (host, what, outcome, numbers); shown, not audited
HostReport = Callable[[str, str, str, dict[str, object]], None]


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    version: str
    host: str
    port: int
    alive: bool
    restarts: int
    log: str


class Target(Protocol):
    type: str

    def ensure(self) -> bool:
        """Make the target reachable and as configured (start the local agent, move its
        router to a changed `router.listen`, connect to hosts, give instances that were
        restarted without their secrets the values again); True when it was not reachable
        and had to be started, or instances waited for their secrets."""

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        """Put the release's files in place where its instances will run (and, for
        migrations and hooks, on this machine); returns the local directory. Idempotent."""

    def endpoints(self, n: int) -> list[Endpoint]:
        """Where `n` new instances will listen: free now, on the hosts the target runs."""

    def start(
        self,
        name: str,
        version: str,
        endpoint: Endpoint,
        command: str,
        env: dict[str, str | Secret],
    ) -> None:
        """Start one instance of a prepared version at an endpoint this target handed out.
        Idempotent by `name`."""

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        """Return when the instance answers its health check; raise HealthCheckFailed."""

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        """Stop an instance (started at `endpoint`) gracefully. Idempotent."""

    def instances(self) -> list[InstanceInfo]:
        """Instances the target runs now."""

    def logs(self, name: str, endpoint: Endpoint, lines: int) -> str:
        """The last `lines` lines an instance wrote (stdout and stderr), from where it runs."""
