"""Caddy driver: upstreams and weights through the admin API. Caddy reloads on every change
and closes idle keep-alive connections; prefer builtin or HAProxy where that matters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from rollwise.errors import RollwiseError
from rollwise.traffic.backends import BackendMap
from rollwise.traffic.base import Backend


def handler_patch(handler: dict[str, Any], weights_by_dial: dict[str, int]) -> dict[str, Any]:
    """The reverse_proxy handler with its upstreams and weighted_round_robin weights set."""
    dials = list(weights_by_dial)
    lb = dict(handler.get("load_balancing") or {})
    lb["selection_policy"] = {
        "policy": "weighted_round_robin",
        "weights": [weights_by_dial[d] for d in dials],
    }
    return {**handler, "upstreams": [{"dial": d} for d in dials], "load_balancing": lb}


class CaddyRouter:
    type = "caddy"

    def __init__(self, admin: str, handler_id: str, env_dir: Path) -> None:
        self.admin, self.id = admin.rstrip("/"), handler_id
        self.map = BackendMap(env_dir / "caddy-backends.json")
        # TLS (and its CA bundle, tens of ms to load per client) only for an https admin
        self.verify = self.admin.startswith("https:")

    def _req(self, method: str, path: str, body: Any = None) -> Any:
        try:
            r = httpx.request(
                method, f"{self.admin}{path}", json=body, timeout=10, verify=self.verify
            )
        except httpx.HTTPError as e:
            raise RollwiseError(f"Caddy admin API did not answer: {e}", where=self.admin) from e
        if r.status_code >= 400:
            raise RollwiseError(
                f"Caddy refused {method} {path}: {r.text.strip()}", where=self.admin
            )
        return r.json() if r.content else None

    def _handler(self) -> dict[str, Any]:
        h: dict[str, Any] = self._req("GET", f"/id/{self.id}")
        return h

    def _current(self) -> dict[str, int]:
        h = self._handler()
        dials = [u["dial"] for u in h.get("upstreams", [])]
        ws = (h.get("load_balancing") or {}).get("selection_policy", {}).get("weights", [])
        return {d: (ws[i] if i < len(ws) else 0) for i, d in enumerate(dials)}

    def _apply(self, weights_by_dial: dict[str, int]) -> None:
        self._req("PATCH", f"/id/{self.id}", handler_patch(self._handler(), weights_by_dial))

    def register(self, backends: list[Backend]) -> None:
        cur = self._current()
        new = {b.address: 0 for b in backends if b.address not in cur}
        if new:
            self._apply(cur | new)
        self.map.add(backends)

    def set_weights(self, weights: dict[str, int]) -> None:
        known = self.map.load()
        unknown = set(weights) - set(known)
        if unknown:
            raise KeyError(f"backend(s) not registered with Caddy: {sorted(unknown)}")
        want = {b.address: weights.get(n, 0) for n, b in known.items()}
        self._apply({d: want.get(d, 0) for d in self._current()} | want)

    def weights(self) -> dict[str, int]:
        cur = self._current()
        return {n: cur.get(b.address, 0) for n, b in self.map.load().items()}

    def _inflight(self, dial: str) -> int:
        ups = self._req("GET", "/reverse_proxy/upstreams") or []
        return sum(int(u.get("num_requests", 0)) for u in ups if u.get("address") == dial)

    def drain(self, name: str, timeout: float) -> int:
        b = self.map.get(name)
        deadline = time.monotonic() + timeout
        while (n := self._inflight(b.address)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return n

    def remove(self, name: str) -> None:
        known = self.map.load()
        if name in known:
            dial = known[name].address
            rest = {d: w for d, w in self._current().items() if d != dial}
            if rest and any(rest.values()):
                self._apply(rest)
        self.map.forget(name)

    def metrics(self) -> dict[str, Any]:
        """Caddy's admin API has no per-upstream counts; in-flight requests only."""
        known = self.map.load()
        return {
            "versions": {},
            "inflight": {n: self._inflight(b.address) for n, b in known.items()},
        }
