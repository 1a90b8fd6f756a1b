"""A bounded loopback load generator: keep-alive, non-retrying clients at a fixed rate.

Used by `rollwise demo` and the benchmarks. Every request is recorded with when it was
sent, how it ended and which version answered (the `x-version` response header).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MAX_DURATION_S = 600.0
MAX_REQUESTS = 2_000_000


@dataclass(frozen=True)
class Result:
    sent_at: float
    latency_ms: float
    status: int  # 0: connection error or timeout
    version: str
    error: str = ""  # with status 0: what failed, e.g. "connect: ConnectionRefusedError"


@dataclass
class Load:
    """Run in a background thread: start(), then stop() returns the results."""

    host: str
    port: int
    rate: float
    connections: int = 16
    path: str = "/orders"
    method: str = "POST"
    max_duration_s: float = 120.0
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
        return self.results

    async def _main(self) -> None:
        interval = self.connections / self.rate
        deadline = time.monotonic() + min(self.max_duration_s, MAX_DURATION_S)
        counter = iter(range(MAX_REQUESTS))
        await asyncio.gather(
            *(
                self._client(c * interval / self.connections, interval, deadline, counter)
                for c in range(self.connections)
            )
        )

    async def _client(self, offset: float, interval: float, deadline: float, counter: Any) -> None:
        await asyncio.sleep(offset)
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            n = next(counter, None)
            if n is None:
                break
            conn, result = await self._request(conn, n)
            self.results.append(result)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if conn:
            await _close(conn[1])

    async def _request(self, conn: Any, n: int) -> tuple[Any, Result]:
        body = json.dumps({"id": f"o-{time.time_ns()}-{n}", "sku": "SKU-1", "qty": 1}).encode()
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        sent = time.time()
        t0 = time.perf_counter()
        phase = "connect" if conn is None else "reused connection"
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
                phase = "new connection"
            reader, writer = conn
            writer.write(head.encode() + body)
            status, version, keep = await asyncio.wait_for(_response(reader), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            if conn:
                await _close(conn[1])
            error = f"{phase}: {type(e).__name__} {e}"[:200]
            return None, Result(sent, (time.perf_counter() - t0) * 1000, 0, "", error)
        if not keep:
            await _close(writer)
            conn = None
        return conn, Result(sent, (time.perf_counter() - t0) * 1000, status, version)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _response(reader: asyncio.StreamReader) -> tuple[int, str, bool]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("x-version", ""), headers.get("connection", "") != "close"


def summarize(results: list[Result]) -> dict[str, Any]:
    failed = [r for r in results if not 200 <= r.status < 300]
    by_version: dict[str, int] = {}
    for r in results:
        by_version[r.version or "failed"] = by_version.get(r.version or "failed", 0) + 1
    lat = sorted(r.latency_ms for r in results if r.status)
    return {
        "requests_sent": len(results),
        "requests_failed": len(failed),
        "by_version": by_version,
        "latency_p50_ms": round(percentile(lat, 50), 3),
        "latency_p99_ms": round(percentile(lat, 99), 3),
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def traffic_moved_ms(
    results: list[Result],
    started: float,
    acked_ms: float,
    old_version: str,
    until: float = float("inf"),
) -> float:
    """Time from the switch call until no newly sent request (up to `until`) reaches
    `old_version`."""
    late = [r.sent_at for r in results if r.version == old_version and started <= r.sent_at < until]
    return max(acked_ms, (max(late) - started) * 1000 if late else 0.0)
