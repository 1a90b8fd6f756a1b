"""The TrafficRouter interface (the controller's registry builds routers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Backend:
    name: str
    version: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class TrafficRouter(Protocol):
    """Where requests go. Weights are relative integers; a weight of 0 takes no new request."""

    type: str

    def register(self, backends: list[Backend]) -> None:
        """Make backends known to the router, with weight 0."""

    def set_weights(self, weights: dict[str, int]) -> None:
        """Apply all weights at once; backends not named get 0."""

    def weights(self) -> dict[str, int]:
        """The weights the router applies now (used to verify a switch)."""

    def drain(self, name: str, timeout: float) -> int:
        """Wait until `name` has no request in flight; returns how many are left."""

    def remove(self, name: str) -> None:
        """Forget a backend that takes no traffic."""

    def metrics(self) -> dict[str, Any]:
        """Per-version counts: requests, 5xx, connection errors, latency buckets."""
