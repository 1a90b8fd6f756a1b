"""The embedded router, running inside the environment's agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollwise.agent.client import AgentClient
from rollwise.config.schema import RouterConfig
from rollwise.traffic.base import Backend


def agent_settings(cfg: RouterConfig) -> dict[str, Any]:
    """What the agent's router takes from `cfg`: sticky and header rules, limits."""
    return cfg.model_dump(include={"sticky", "canary_headers", "limits", "trust_forwarded"})


class BuiltinRouter:
    type = "builtin"

    def __init__(
        self, env_dir: Path, env: str, listen: str, cfg: RouterConfig | None = None
    ) -> None:
        self.agent = AgentClient(env_dir, env)
        self.listen = listen
        # without `cfg` the agent keeps the rules it has
        self.settings: dict[str, Any] = {"router": agent_settings(cfg)} if cfg else {}

    def register(self, backends: list[Backend]) -> None:
        """Instances the local agent runs are registered by it; others (on a fleet's hosts)
        are added here."""
        self.agent.call(
            "route",
            backends=[
                {"name": b.name, "version": b.version, "host": b.host, "port": b.port}
                for b in backends
            ],
        )

    def set_weights(self, weights: dict[str, int]) -> None:
        self.agent.call("set_weights", weights=weights, **self.settings)

    def weights(self) -> dict[str, int]:
        result: dict[str, int] = self.agent.call("weights")
        return result

    def drain(self, name: str, timeout: float) -> int:
        return int(self.agent.call("drain", name=name, timeout=timeout)["inflight"])

    def remove(self, name: str) -> None:
        """A fleet host's instance; the local agent's own are removed when it stops them."""
        self.agent.call("unroute", name=name)

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.agent.call("metrics")
        return result
