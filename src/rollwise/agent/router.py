"""The embedded router's state: upstreams, weights and routing rules in memory, and
per-version counts (standard library only: a fleet host's agent imports it; the HTTP side,
on httptools, is `rollwise.agent.proxy`).

A weight change only decides where the *next* request goes: no client or upstream
connection is closed by it, so a switch drops nothing. Upstream connections are pooled
(keep-alive). Bodies stream both ways as they come (SSE and chunked responses are not
buffered); after `101 Switching Protocols` (WebSocket) bytes are piped both ways. Requests
carrying a sticky key (cookie or header) keep the version they were first given for as long
as it has weight; header rules send chosen requests to the canary (the newest version with
weight). Per-version counts and latency histograms are kept as requests complete.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

# latency bucket upper bounds: 0.25 ms to 24 s, each 20% above the last, so a quantile read
# from the histogram is within 20% of the true one
BUCKETS_MS = tuple(round(0.25 * 1.2**i, 3) for i in range(64))
# a request whose head and body fit in this is kept until its response starts, so that a
# pooled connection the upstream had just closed costs a resend, not a failed request
RETRY_BYTES = 64 * 1024
POOL_MAX = 64  # idle upstream connections kept per upstream
TICK_S = 0.25  # how often deadlines are checked (one sweep, not a timer per request)
BUFFER_MAX = 256 * 1024  # request bytes held while connecting before the client is paused
HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
DROPPED = HOP | FORWARDED  # request headers not passed on as they came
# request headers the data path reads (with those routing rules name: `Router.noted`)
NOTED = DROPPED | {b"host", b"content-length"}
RESPONSE_NOTED = HOP | {b"content-length"}  # response headers it reads
REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Limits:
    """Sizes and timeouts of the data path (`router.limits` in rollwise.yaml)."""

    max_head_bytes: int = 64 * 1024
    max_body_bytes: int = 100 * 1024 * 1024
    header_timeout_s: float = 10.0  # a request head, from its first byte
    idle_timeout_s: float = 75.0  # a keep-alive client connection between requests
    connect_timeout_s: float = 5.0
    response_timeout_s: float = 60.0  # request sent until the response head
    trust_forwarded: bool = False  # keep X-Forwarded-* a client sent (a proxy in front)


@dataclass(frozen=True)
class Routing:
    """Sticky clients and canary header rules; names are lower case."""

    sticky_cookie: bytes = b""
    sticky_header: bytes = b""
    max_clients: int = 100_000
    canary_headers: tuple[tuple[bytes, frozenset[bytes]], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Routing:
        """From the shape of `router.sticky` / `router.canary_headers` in rollwise.yaml."""
        sticky = d.get("sticky") or {}
        return cls(
            sticky_cookie=(sticky.get("cookie") or "").encode(),
            sticky_header=(sticky.get("header") or "").lower().encode(),
            max_clients=int(sticky.get("max_clients") or 100_000),
            canary_headers=tuple(
                (r["header"].lower().encode(), frozenset(v.encode() for v in r["values"]))
                for r in d.get("canary_headers") or ()
            ),
        )

    def wanted(self) -> frozenset[bytes]:
        """Request headers the rules read."""
        names = {n for n, _ in self.canary_headers} | {self.sticky_header}
        return frozenset(names | {b"cookie"} if self.sticky_cookie else names) - {b""}


class Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass
class VersionStats:
    requests: int = 0
    status_5xx: int = 0
    status_4xx: int = 0
    conn_errors: int = 0
    stale_resends: int = 0  # resent after a pooled connection was found closed: no error
    latency_ms_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))

    def observe(self, status: int, ms: float) -> None:
        self.requests += 1
        if status >= 500:
            self.status_5xx += 1
        elif status >= 400:
            self.status_4xx += 1
        self.latency_ms_sum += ms
        self.buckets[bisect.bisect_left(BUCKETS_MS, ms)] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status_5xx": self.status_5xx,
            "status_4xx": self.status_4xx,
            "conn_errors": self.conn_errors,
            "stale_resends": self.stale_resends,
            "latency_ms_sum": round(self.latency_ms_sum, 3),
            "buckets_ms": [*BUCKETS_MS, "inf"],
            "bucket_counts": list(self.buckets),
        }


class Pooled(Protocol):
    """An idle upstream connection (`proxy.Conn`)."""

    transport: asyncio.Transport


class Checked(Protocol):
    """A client connection (`proxy.Client`), timed out by `Router.sweep`."""

    transport: asyncio.Transport

    def check(self, now: float) -> None: ...


@dataclass(eq=False)
class Upstream:
    name: str
    version: str
    host: str
    port: int
    weight: int = 0
    inflight: int = 0
    current: int = 0
    pool: list[Pooled] = field(default_factory=list)
    stats: VersionStats | None = None  # its version's counts, once it answered a request

    def close_pool(self) -> None:
        for c in self.pool:
            c.transport.close()
        self.pool.clear()


class Router:
    def __init__(self, limits: Limits | None = None) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self.stats: dict[str, VersionStats] = {}
        self.generation = 0
        self.limits = limits or Limits()
        self.routing = Routing()
        self.settings: dict[str, Any] = {}
        self.wanted: frozenset[bytes] = frozenset()
        self.noted: frozenset[bytes] = NOTED  # request headers read: NOTED | wanted
        self.assigned: OrderedDict[bytes, str] = OrderedDict()  # sticky key -> version
        self.version_weights: dict[str, int] = {}
        self.canary: str | None = None
        self.only: Upstream | None = None  # the one upstream with weight, if just one has
        self.clients: set[Checked] = set()
        self.clock = time.monotonic()  # updated each TICK_S: deadlines need no clock read
        self.sweeper: asyncio.Task[None] | None = None

    # -- control ---------------------------------------------------------------
    def add(self, name: str, version: str, host: str, port: int) -> None:
        up = self.upstreams.get(name)
        if up is None or (up.host, up.port) != (host, port):
            if up:
                up.close_pool()
            self.upstreams[name] = Upstream(name, version, host, port)
        self._refresh()

    def set_weights(self, weights: dict[str, int]) -> None:
        """Atomically apply `weights`; upstreams not named get weight 0."""
        unknown = set(weights) - set(self.upstreams)
        if unknown:
            raise KeyError(f"unknown upstream(s): {', '.join(sorted(unknown))}")
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must be >= 0")
        for up in self.upstreams.values():
            up.weight, up.current = weights.get(up.name, 0), 0
        self.generation += 1
        self._refresh()

    def configure(self, settings: dict[str, Any]) -> None:
        """Rules and limits shaped as `router.sticky`, `router.canary_headers`,
        `router.limits` and `router.trust_forwarded` in rollwise.yaml."""
        self.set_routing(Routing.from_dict(settings))
        self.limits = Limits(
            **settings.get("limits") or {}, trust_forwarded=bool(settings.get("trust_forwarded"))
        )
        self.settings = settings

    def set_routing(self, routing: Routing) -> None:
        if routing != self.routing:
            self.routing, self.wanted = routing, routing.wanted()
            self.noted = NOTED | self.wanted
            self.assigned.clear()

    def weights(self) -> dict[str, int]:
        return {u.name: u.weight for u in self.upstreams.values()}

    async def drain(self, name: str, timeout: float) -> int:
        up = self.upstreams.get(name)
        if up is None:
            return 0
        deadline = time.monotonic() + timeout
        while up.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not up.inflight:
            up.close_pool()
        return up.inflight

    def remove(self, name: str) -> None:
        up = self.upstreams.pop(name, None)
        if up:
            up.close_pool()
        self._refresh()

    def version_stats(self, version: str) -> VersionStats:
        """The counts of `version`, begun at its first request."""
        stats = self.stats.get(version)
        if stats is None:
            stats = self.stats[version] = VersionStats()
        return stats

    def metrics(self) -> dict[str, Any]:
        return {
            "versions": {v: s.as_dict() for v, s in self.stats.items()},
            "inflight": {u.name: u.inflight for u in self.upstreams.values()},
        }

    async def sweep(self) -> None:
        """Time out stalled clients and upstreams, every TICK_S."""
        while True:
            await asyncio.sleep(TICK_S)
            self.clock = time.monotonic()
            for client in list(self.clients):
                client.check(self.clock)

    def _refresh(self) -> None:
        """Weight per version, and the canary: the version of the newest upstream with
        weight (the release being rolled out, or rolled back to)."""
        vw: dict[str, int] = {}
        weighted = [up for up in self.upstreams.values() if up.weight > 0]
        for up in weighted:
            vw[up.version] = vw.get(up.version, 0) + up.weight
            self.canary = up.version
        self.version_weights = dict(sorted(vw.items()))
        if not vw:
            self.canary = None
        # picked without a round: smooth weighted round robin over one upstream is that one
        self.only = weighted[0] if len(weighted) == 1 else None

    # -- selection -------------------------------------------------------------
    def pick(self, exclude: Upstream | None = None, version: str | None = None) -> Upstream | None:
        """Smooth weighted round robin: deterministic, evenly interleaved."""
        best, total = None, 0
        for up in self.upstreams.values():
            if up.weight <= 0 or up is exclude or (version and up.version != version):
                continue
            up.current += up.weight
            total += up.weight
            if best is None or up.current > best.current:
                best = up
        if best is not None:
            best.current -= total
        return best

    def route(self, found: dict[bytes, list[bytes]]) -> Upstream | None:
        """The upstream for a request whose headers named in `wanted` are `found`."""
        if self.canary and any(
            v in values for name, values in self.routing.canary_headers for v in found.get(name, ())
        ):
            return self.pick(version=self.canary)
        key = self._sticky_key(found)
        if key is None:
            return self.pick()
        version = self.assigned.get(key)
        if version is not None and self.version_weights.get(version, 0) > 0:
            self.assigned.move_to_end(key)
        else:
            version = self._place(key)
            if version is None:
                return None
            self.assigned[key] = version
            if len(self.assigned) > self.routing.max_clients:
                self.assigned.popitem(last=False)  # the least recently seen
        return self.pick(version=version)

    def _sticky_key(self, found: dict[bytes, list[bytes]]) -> bytes | None:
        r = self.routing
        if r.sticky_header:
            values = found.get(r.sticky_header)
            return values[0] if values else None
        if r.sticky_cookie:
            for v in found.get(b"cookie", ()):
                name, _, value = v.partition(b"=")
                if name.strip() == r.sticky_cookie:
                    return value.strip()
        return None

    def _place(self, key: bytes) -> str | None:
        """A new client's version, by a hash of its key over the versions' weights."""
        total = sum(self.version_weights.values())
        if total <= 0:
            return None
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % total
        for version, w in self.version_weights.items():
            if h < w:
                return version
            h -= w
        return None  # unreachable: h < total


# -- data path -----------------------------------------------------------------------
