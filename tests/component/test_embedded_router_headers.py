"""The embedded router's data path, continued: hop-by-hop headers both ways, HTTP/1.0
clients, pipelined requests and resends on a pooled connection the upstream had closed.
Real upstream servers on loopback, the router in its own uvloop thread."""

from __future__ import annotations

import asyncio
import socket

import h11
import httpx

from tests.component.test_embedded_router import (  # noqa: F401  (`proxy` is a fixture)
    echo,
    proxy,
    raw,
    read_request,
    respond,
)


def test_given_hop_by_hop_request_headers_then_the_upstream_does_not_see_them(proxy):  # noqa: F811
    proxy.upstream("v1-a", "v1", echo)

    got = raw(
        proxy.port,
        b"POST /orders HTTP/1.1\r\nHost: shop.example\r\nConnection: close, X-Secret\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
        b"X-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 4\r\n\r\nbody",
    ).lower()
    seen = got.split(b"\r\n\r\n", 1)[1]

    assert got.startswith(b"http/1.1 200 ")
    assert b"x-kept: 2\n" in seen and b"host: shop.example\n" in seen
    assert b"content-length: 4\n" in seen and seen.endswith(b"\n\nbody")
    for name in (b"x-secret", b"keep-alive", b"te:", b"proxy-connection", b"connection"):
        assert name not in seen, name


def test_given_hop_by_hop_response_headers_then_the_client_does_not_see_them(proxy):  # noqa: F811
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"GET ")
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                b"X-Version: v1\r\nContent-Length: 2\r\n\r\nok"
            )

    proxy.upstream("v1-a", "v1", chatty)
    with httpx.Client(timeout=3) as client:
        answers = [client.get(proxy.url) for _ in range(3)]

    assert [(a.status_code, a.text) for a in answers] == [(200, "ok")] * 3
    assert answers[0].headers["x-version"] == "v1"
    assert "keep-alive" not in answers[0].headers
    assert "connection" not in answers[0].headers


def test_given_an_http10_client_then_a_chunked_response_reaches_it_unchunked_and_closed(proxy):  # noqa: F811
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    proxy.upstream("v1-a", "v1", chunked)

    got = raw(proxy.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # until closed

    head, body = got.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello world"


def test_given_pipelined_requests_then_the_answers_come_in_order(proxy):  # noqa: F811
    proxy.upstream("v1-a", "v1", echo)

    got = raw(
        proxy.port,
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
        b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )

    answers = got.split(b"HTTP/1.1 200 ")[1:]
    assert len(answers) == 3
    assert [a.split(b"\r\n\r\n", 1)[1].split(b"\n")[0] for a in answers] == [
        b"POST /first",
        b"GET /second",
        b"GET /third",
    ]


def test_given_a_pooled_connection_the_upstream_closed_then_the_request_is_resent(proxy):  # noqa: F811
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers the first request of a connection; closes on the next, unanswered."""
        conn = h11.Connection(h11.SERVER)
        got = await read_request(reader, conn)
        assert got is not None
        writer.write(respond(conn, 200, got[1]))
        await reader.read(65536)

    proxy.upstream("v1-a", "v1", once)
    with httpx.Client(timeout=3) as client:
        first = client.post(proxy.url, content=b"first body")
        second = client.post(proxy.url, content=b"second body")

    assert (first.status_code, first.text) == (200, "first body")
    assert (second.status_code, second.text) == (200, "second body")
    assert proxy.accepted["v1-a"] == 2
    assert proxy.router.stats["v1"].conn_errors == 0  # the upstream closed it: not an error
    assert proxy.router.stats["v1"].stale_resends == 1


def test_given_a_connection_header_naming_others_on_a_keep_alive_request_then_it_keeps_working(
    proxy,  # noqa: F811
):
    proxy.upstream("v1-a", "v1", echo)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        replies = []
        for n in range(2):
            s.sendall(
                b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-hop\r\nx-hop: %d\r\n\r\n"
                % (n, n)
            )
            got = b""
            while not got.endswith(b"\n\n"):
                got += s.recv(65536)
            replies.append(got.lower())

    assert [r.startswith(b"http/1.1 200 ") for r in replies] == [True, True]
    assert all(b"x-hop" not in r.split(b"\r\n\r\n", 1)[1] for r in replies)
