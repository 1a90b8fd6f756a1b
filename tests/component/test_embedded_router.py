"""The embedded router's data path, against real upstream servers on loopback: forwarded
headers, WebSocket upgrades, streamed responses, size limits, timeouts, keep-alive pools,
retries. The router runs in its own thread and event loop, as in the agent."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pytest
import uvloop

from rollwise.agent.proxy import serve
from rollwise.agent.router import Router

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Proxy:
    loop: asyncio.AbstractEventLoop
    router: Router
    port: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # upstream name -> connections
    servers: list[asyncio.Server] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for client in list(self.router.clients):
            client.transport.close()
        for up in self.router.upstreams.values():
            up.close_pool()
        tasks = [*self.tasks, *([self.router.sweeper] if self.router.sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def upstream(self, name: str, version: str, handler: Handler, weight: int = 1) -> None:
        """A real server on loopback, routed to as `name`."""

        async def counted(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted[name] = self.accepted.get(name, 0) + 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            try:
                await handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                self.tasks.discard(task)
                w.close()

        async def start() -> int:
            server = await asyncio.start_server(counted, "127.0.0.1", 0)
            self.servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        port = self.run(start())
        self.router.add(name, version, "127.0.0.1", port)
        self.loop.call_soon_threadsafe(
            self.router.set_weights, {**self.router.weights(), name: weight}
        )
        time.sleep(0.05)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    loop = uvloop.new_event_loop()  # as in the agent
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    p = Proxy(loop, Router())

    async def listen() -> asyncio.Server:
        return await serve(p.router, "127.0.0.1", 0)

    p.servers.append(p.run(listen()))
    p.port = p.servers[0].sockets[0].getsockname()[1]
    yield p
    p.run(p.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def read_request(
    reader: asyncio.StreamReader, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """The next request on an upstream connection, parsed by h11 (not the router's parser)."""
    req, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            req = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert req is not None
            return req, body
        elif isinstance(event, h11.ConnectionClosed):
            return None


def respond(conn: h11.Connection, status: int, body: bytes, **headers: str) -> bytes:
    hs = [("content-length", str(len(body))), *headers.items()]
    out = conn.send(h11.Response(status_code=status, headers=hs)) or b""
    out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    conn.start_next_cycle()
    return out


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request with what it received: request line, headers, body."""
    conn = h11.Connection(h11.SERVER)
    while (got := await read_request(reader, conn)) is not None:
        req, body = got
        head = b"\n".join(
            [req.method + b" " + req.target, *(n + b": " + v for n, v in req.headers)]
        )
        writer.write(respond(conn, 200, head + b"\n\n" + body, x_version="v1"))
        await writer.drain()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the router closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_given_a_request_then_the_upstream_sees_x_forwarded_headers(proxy):
    proxy.upstream("v1-a", "v1", echo)

    got = httpx.get(
        proxy.url + "/orders?id=7",
        headers={
            "host": "shop.example",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
        },
    ).text.lower()

    assert got.startswith("get /orders?id=7\n")
    assert "x-forwarded-for: 127.0.0.1\n" in got  # a client's own claim is not passed on
    assert "x-forwarded-proto: http\n" in got
    assert "x-forwarded-host: shop.example\n" in got
    assert "6.6.6.6" not in got


def test_given_trust_forwarded_then_the_client_address_is_appended(proxy):
    proxy.upstream("v1-a", "v1", echo)
    proxy.router.configure({"trust_forwarded": True})

    got = httpx.get(
        proxy.url, headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    ).text.lower()

    assert "x-forwarded-for: 203.0.113.9, 127.0.0.1\n" in got
    assert "x-forwarded-proto: https\n" in got


def test_given_a_websocket_upgrade_then_bytes_flow_both_ways_after_101(proxy):
    async def ws(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"upgrade: websocket" in head.lower()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nhello"
        )  # a frame right behind the head
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()

    proxy.upstream("v1-ws", "v1", ws)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(
            b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        got = b""
        while not got.endswith(b"hello"):
            got += s.recv(1024)
        s.sendall(b"ping")
        echoed = s.recv(1024)
        s.sendall(b"again")
        again = s.recv(1024)

    assert got.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: websocket" in got.lower()
    assert (echoed, again) == (b"PING", b"AGAIN")


def test_given_server_sent_events_then_each_reaches_the_client_before_the_next_is_sent(proxy):
    second = threading.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        )
        await writer.drain()
        # the second event is sent only once the client holds the first: a router that
        # buffered the response would wait here forever
        await asyncio.to_thread(second.wait, 5)
        writer.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
        await writer.drain()

    proxy.upstream("v1-sse", "v1", sse)
    with httpx.Client(timeout=3) as client, client.stream("GET", proxy.url + "/events") as r:
        chunks = r.iter_raw()
        first = next(chunks)
        second.set()
        rest = b"".join(chunks)

    assert first == b"data: 1\n\n"
    assert rest == b"data: 2\n\n"
    assert r.headers["content-type"] == "text/event-stream"


def test_given_a_chunked_request_body_then_the_upstream_receives_it_whole(proxy):
    proxy.upstream("v1-a", "v1", echo)

    got = httpx.post(proxy.url + "/upload", content=iter([b"part-1;", b"part-2"])).content

    assert got.endswith(b"\n\npart-1;part-2")
    assert b"transfer-encoding: chunked" in got.lower()


def test_given_keep_alive_clients_then_upstream_connections_are_reused(proxy):
    proxy.upstream("v1-a", "v1", echo)

    with httpx.Client() as client:
        statuses = [client.post(proxy.url, content=b"x").status_code for _ in range(200)]

    assert statuses == [200] * 200
    assert proxy.accepted["v1-a"] == 1


def test_given_a_head_over_the_limit_then_431_and_the_upstream_sees_nothing(proxy):
    proxy.upstream("v1-a", "v1", echo)
    proxy.router.configure({"limits": {"max_head_bytes": 2048}})

    got = raw(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n")

    assert got.startswith(b"HTTP/1.1 431 ")
    assert "v1-a" not in proxy.accepted


def test_given_a_body_over_the_limit_then_413(proxy):
    proxy.upstream("v1-a", "v1", echo)
    proxy.router.configure({"limits": {"max_body_bytes": 1000}})

    declared = raw(proxy.port, b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 5000\r\n\r\n")
    chunked = raw(
        proxy.port,
        b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked"
        b"\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"b" * 1024 + b"\r\n",
    )
    within = httpx.post(proxy.url, content=b"c" * 1000)

    assert declared.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    assert within.status_code == 200


def test_given_a_client_that_stalls_in_its_head_then_408(proxy):
    proxy.upstream("v1-a", "v1", echo)
    proxy.router.configure({"limits": {"header_timeout_s": 0.5}})
    t0 = time.monotonic()

    got = raw(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends its head

    assert got.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < time.monotonic() - t0 < 3


def test_given_an_upstream_that_does_not_answer_then_504_and_it_is_counted(proxy):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    proxy.upstream("v1-slow", "v1", silent)
    proxy.router.configure({"limits": {"response_timeout_s": 0.5}})
    t0 = time.monotonic()

    got = httpx.get(proxy.url, timeout=5)

    assert got.status_code == 504
    assert 0.4 < time.monotonic() - t0 < 3
    assert proxy.router.stats["v1"].status_5xx == 1


def test_given_an_upstream_that_refuses_then_the_request_goes_to_one_with_weight(proxy):
    proxy.upstream("v1-a", "v1", echo)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proxy.router.add("v1-dead", "v1", "127.0.0.1", dead)
    proxy.loop.call_soon_threadsafe(proxy.router.set_weights, {"v1-a": 1, "v1-dead": 1})
    time.sleep(0.05)

    with httpx.Client() as client:
        statuses = [client.post(proxy.url, content=b"x").status_code for _ in range(20)]

    assert statuses == [200] * 20
    assert proxy.router.stats["v1"].conn_errors > 0


def test_given_head_and_no_content_responses_then_the_connection_keeps_working(proxy):
    async def lengths(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while (got := await read_request(reader, conn)) is not None:
            req = got[0]
            if req.method == b"HEAD":  # the length of a body that is not sent
                out = (
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "100")]))
                    or b""
                )
                out += conn.send(h11.EndOfMessage()) or b""
                conn.start_next_cycle()
            elif req.target == b"/empty":
                out = conn.send(h11.Response(status_code=204, headers=[])) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                conn.start_next_cycle()
            else:
                out = respond(conn, 200, b"body")
            writer.write(out)

    proxy.upstream("v1-a", "v1", lengths)
    with httpx.Client(timeout=3) as client:
        head = client.head(proxy.url)
        empty = client.get(proxy.url + "/empty")
        after = client.get(proxy.url)

    assert (head.status_code, head.headers["content-length"]) == (200, "100")
    assert empty.status_code == 204
    assert (after.status_code, after.text) == (200, "body")


def test_given_no_upstream_with_weight_then_503_and_the_connection_stays_open(proxy):
    with httpx.Client() as client:
        first = client.post(proxy.url, content=b"x" * 100)
        second = client.get(proxy.url)

    assert (first.status_code, second.status_code) == (503, 503)
    assert first.headers.get("connection") != "close"


def test_given_a_slow_reader_of_a_large_response_then_the_next_request_still_works(proxy):
    big = b"z" * (8 << 20)  # far more than socket buffers: the router must pause and resume

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while (got := await read_request(reader, conn)) is not None:
            writer.write(respond(conn, 200, big if got[0].target == b"/big" else b"small"))
            await writer.drain()

    proxy.upstream("v1-big", "v1", large)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # buffers fill up while the client does not read
        got = b""
        while len(got) < len(big) or b"\r\n\r\n" not in got:
            got += s.recv(65536)
        s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        after = b""
        while not after.endswith(b"small"):
            after += s.recv(65536)

    assert got.endswith(big) and len(got) < len(big) + 200
    assert after.startswith(b"HTTP/1.1 200 ")
    assert proxy.accepted["v1-big"] == 1  # the pooled connection came back usable
