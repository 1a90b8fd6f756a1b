"""The embedded router, running inside the environment's agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollwise.agent.client import AgentClient
from rollwise.traffic.base import Backend


class BuiltinRouter:
    type = "builtin"

    def __init__(self, env_dir: Path, env: str, listen: str) -> None:
        self.agent = AgentClient(env_dir, env)
        self.listen = listen

    def register(self, backends: list[Backend]) -> None:
        """Instances started by the local target are registered by the agent itself."""
        known = self.weights()
        missing = [b.name for b in backends if b.name not in known]
        if missing:
            raise KeyError(f"the builtin router only routes to local instances: {missing}")

    def set_weights(self, weights: dict[str, int]) -> None:
        self.agent.call("set_weights", weights=weights)

    def weights(self) -> dict[str, int]:
        result: dict[str, int] = self.agent.call("weights")
        return result

    def drain(self, name: str, timeout: float) -> int:
        return int(self.agent.call("drain", name=name, timeout=timeout)["inflight"])

    def remove(self, name: str) -> None:
        """Removed when the local target stops the instance."""

    def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.agent.call("metrics")
        return result
