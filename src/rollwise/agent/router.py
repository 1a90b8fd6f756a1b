"""Embedded HTTP/1.1 reverse proxy with atomic in-memory weights.

A weight change only decides where the *next* request goes: no client or upstream
connection is closed by it, so a switch drops nothing. Per-version counts and latency
histograms are kept as requests complete.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from typing import Any

# latency bucket upper bounds: 0.25 ms to 24 s, each 20% above the last, so a quantile read
# from the histogram is within 20% of the true one
BUCKETS_MS = tuple(round(0.25 * 1.2**i, 3) for i in range(64))
MAX_HEAD = 64 * 1024
UPSTREAM_TIMEOUT_S = 60.0
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class BadRequest(Exception):
    pass


class UpstreamFailed(Exception):
    """The upstream failed before sending any byte of a response."""


@dataclass
class VersionStats:
    requests: int = 0
    status_5xx: int = 0
    status_4xx: int = 0
    conn_errors: int = 0
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
            "requests": self.requests, "status_5xx": self.status_5xx,
            "status_4xx": self.status_4xx, "conn_errors": self.conn_errors,
            "latency_ms_sum": round(self.latency_ms_sum, 3),
            "buckets_ms": [*BUCKETS_MS, "inf"], "bucket_counts": list(self.buckets),
        }


@dataclass
class Upstream:
    name: str
    version: str
    host: str
    port: int
    weight: int = 0
    inflight: int = 0
    current: int = 0
    pool: list[Conn] = field(default_factory=list)

    def close_pool(self) -> None:
        for _, w in self.pool:
            w.close()
        self.pool.clear()


@dataclass
class Head:
    raw: bytes
    method: bytes
    keep_alive: bool
    length: int
    chunked: bool


def parse_head(raw: bytes, *, response: bool) -> tuple[Head, int]:
    """Parse a request or response head; returns it and the status (0 for requests)."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 + (not response):
        raise BadRequest(lines[0][:80].decode("latin-1"))
    version = parts[0] if response else parts[2]
    keep_alive = version == b"HTTP/1.1"
    length, chunked = -1 if response else 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            v = value.strip().lower()
            keep_alive = v == b"keep-alive" if v in (b"keep-alive", b"close") else keep_alive
    status = int(parts[1]) if response else 0
    return Head(raw, b"" if response else parts[0], keep_alive, length, chunked), status


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            while True:  # trailers until an empty line
                t = await reader.readuntil(b"\r\n")
                out += t
                if t == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


class Router:
    def __init__(self) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self.stats: dict[str, VersionStats] = {}
        self.generation = 0

    # -- control ---------------------------------------------------------------
    def add(self, name: str, version: str, host: str, port: int) -> None:
        up = self.upstreams.get(name)
        if up is None or (up.host, up.port) != (host, port):
            if up:
                up.close_pool()
            self.upstreams[name] = Upstream(name, version, host, port)

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

    # -- data path -------------------------------------------------------------
    def pick(self, exclude: Upstream | None = None) -> Upstream | None:
        """Smooth weighted round robin: deterministic, evenly interleaved."""
        best, total = None, 0
        for up in self.upstreams.values():
            if up.weight <= 0 or up is exclude:
                continue
            up.current += up.weight
            total += up.weight
            if best is None or up.current > best.current:
                best = up
        if best is not None:
            best.current -= total
        return best

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                BadRequest, ValueError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        start = time.perf_counter()
        req, _ = parse_head(raw, response=False)
        body = await read_chunked(reader) if req.chunked else (
            await reader.readexactly(req.length) if req.length > 0 else b"")
        up = self.pick()
        if up is None:
            writer.write(_error(503, "no upstream has weight"))
            await writer.drain()
            return req.keep_alive
        status, keep = await self._forward(up, req, body, writer)
        ms = (time.perf_counter() - start) * 1000
        self.stats.setdefault(up.version, VersionStats()).observe(status, ms)
        return keep and req.keep_alive

    async def _forward(self, up: Upstream, req: Head, body: bytes,
                       writer: asyncio.StreamWriter) -> tuple[int, bool]:
        """Send to `up`; a connection that failed before any response byte is retried once
        on a fresh connection, then on another upstream with weight."""
        tried: Upstream | None = None
        for attempt in range(3):
            up.inflight += 1
            try:
                return await self._exchange(up, req, body, writer)
            except TimeoutError:
                writer.write(_error(504, "upstream timed out"))
                await writer.drain()
                return 504, False
            except UpstreamFailed:
                self.stats.setdefault(up.version, VersionStats()).conn_errors += 1
                up.close_pool()  # its siblings are likely just as stale
            finally:
                up.inflight -= 1
            tried = up
            nxt = up if attempt == 0 else self.pick(exclude=tried)
            if nxt is None:
                break
            up = nxt
        writer.write(_error(502, "upstream unavailable"))
        await writer.drain()
        return 502, True

    async def _exchange(self, up: Upstream, req: Head, body: bytes,
                        writer: asyncio.StreamWriter) -> tuple[int, bool]:
        conn = up.pool.pop() if up.pool else None
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(up.host, up.port), 5)
        except (TimeoutError, OSError) as e:
            raise UpstreamFailed(f"connect: {e}") from e
        ur, uw = conn
        try:
            uw.write(req.raw + body if body else req.raw)
            await uw.drain()
            raw = await asyncio.wait_for(ur.readuntil(b"\r\n\r\n"), UPSTREAM_TIMEOUT_S)
        except TimeoutError:
            uw.close()
            raise
        except (OSError, asyncio.IncompleteReadError) as e:
            uw.close()
            raise UpstreamFailed(str(e)) from e
        resp, status = parse_head(raw, response=True)
        no_body = req.method == b"HEAD" or status in (204, 304) or status < 200
        until_close = not no_body and not resp.chunked and resp.length < 0
        writer.write(closing(raw) if until_close else raw)
        if no_body:
            pass
        elif resp.chunked:
            writer.write(await read_chunked(ur))
        elif resp.length >= 0:
            await _copy(ur, writer, resp.length)
        else:  # body runs until the upstream closes
            writer.write(await ur.read())
            await writer.drain()
            uw.close()
            return status, False
        await writer.drain()
        if resp.keep_alive:
            up.pool.append((ur, uw))
        else:
            uw.close()
        return status, True


def closing(raw: bytes) -> bytes:
    """A response head whose body ends when the connection does, saying so to the client
    (`connection: close`), so a keep-alive client does not send its next request into it."""
    lines = [ln for ln in raw[:-4].split(b"\r\n")
             if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"connection: close"]) + b"\r\n\r\n"


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        chunk = await reader.read(min(n, 65536))
        if not chunk:
            raise ConnectionError("upstream closed mid-body")
        writer.write(chunk)
        n -= len(chunk)
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()


def _error(status: int, text: str) -> bytes:
    reason = {502: "Bad Gateway", 503: "Service Unavailable",
              504: "Gateway Timeout"}.get(status, "Error")
    body = f"rollwise router: {text}\n".encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nx-rollwise-router: 1\r\n\r\n").encode() + body


async def serve(router: Router, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(router.handle, host, port, limit=MAX_HEAD,
                                      reuse_address=True, backlog=1024)
