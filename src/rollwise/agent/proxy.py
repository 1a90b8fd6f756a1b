"""The embedded router's HTTP side: httptools (llhttp, Node.js's parser) reads HTTP, asyncio
protocols move the bytes; `rollwise.agent.router.Router` decides where each request goes.

A weight change only decides where the *next* request goes: no client or upstream
connection is closed by it, so a switch drops nothing. Upstream connections are pooled
(keep-alive). Bodies stream both ways as they come (SSE and chunked responses are not
buffered); after `101 Switching Protocols` (WebSocket) bytes are piped both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast

import httptools

from rollwise.agent.router import (
    BUFFER_MAX,
    FORWARDED,
    HOP,
    POOL_MAX,
    REASONS,
    RETRY_BYTES,
    Refused,
    Router,
    Upstream,
    VersionStats,
)


class Client(asyncio.Protocol):
    """One client connection: parses requests, runs their exchanges one at a time."""

    __slots__ = (
        "closing",
        "current",
        "deadline",
        "early",
        "exchanges",
        "feeding",
        "head_bytes",
        "head_raw",
        "headers",
        "in_head",
        "limits",
        "out",
        "parser",
        "paused",
        "peer",
        "router",
        "transport",
        "tunnel",
        "upgrading",
        "url",
    )
    transport: asyncio.Transport

    def __init__(self, router: Router) -> None:
        self.router = router
        self.limits = router.limits
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.exchanges: deque[Exchange] = deque()  # the first one runs; pipelined ones wait
        self.current: Exchange | None = None  # the one whose request is being read
        self.deadline = 0.0  # 0: none
        self.feeding = False  # inside feed_data: writes to the upstream wait for its end
        self.paused: set[str] = set()
        self.out: list[bytes] = []
        self.in_head = False
        self.head_bytes = 0  # url and headers of the head being read
        self.head_raw = 0  # bytes read since it began (a header line may never end)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.upgrading = False  # the parser is done: bytes wait for the upstream's answer
        self.early = bytearray()
        self.tunnel: Conn | None = None
        self.closing = False

    # -- transport events --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        self.router.clients.add(self)
        self._arm(self.limits.idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.transport.is_closing():
            return
        if self.upgrading:
            self.early += data
            if len(self.early) > self.limits.max_head_bytes:
                self.transport.close()
            return
        if self.in_head:
            self.head_raw += len(data)
        self.feeding = True
        try:
            self.parser.feed_data(data)
            if self.in_head and self.head_raw > self.limits.max_head_bytes:
                raise Refused(431, "request head too large")
        except httptools.HttpParserUpgrade as e:
            self.upgrading = True
            self.early += data[int(e.args[0]) :]
        except Refused as e:
            self.refuse(e)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, Refused):
                raise
            self.refuse(e.__context__)
        except httptools.HttpParserError as e:
            self.refuse(Refused(400, f"bad request: {e}"))
        finally:
            self.feeding = False
            if self.exchanges:
                self.exchanges[0].flush_pending()
            self.flush()

    def eof_received(self) -> bool:
        if self.exchanges:  # answer what was asked, then close
            self.closing = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        self._disarm()
        for ex in self.exchanges:
            ex.abandon()
        self.exchanges.clear()
        if self.tunnel is not None:
            self.tunnel.transport.close()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.pause_reading()
        elif self.exchanges and (conn := self.exchanges[0].conn) is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.resume_reading()
        elif self.exchanges and (conn := self.exchanges[0].conn) is not None:
            conn.transport.resume_reading()

    # -- parser callbacks --
    def on_message_begin(self) -> None:
        self.in_head, self.head_bytes, self.head_raw, self.url = True, 0, 0, b""
        self.headers = []
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value)  # exact, even for a head begun mid-read

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._disarm()
        if self.head_bytes > self.limits.max_head_bytes:
            raise Refused(431, "request head too large")
        ex = Exchange.from_request(self, self.parser.get_method(), self.url, self.headers)
        self.current = ex
        self.exchanges.append(ex)
        if len(self.exchanges) == 1:
            ex.start()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if ex is not None:
            ex.request_complete()
        if not self.parser.should_keep_alive():
            self.closing = True
        if self.closing or len(self.exchanges) > 1:
            self.pause("pipeline")

    # -- from exchanges --
    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        if self.out and not self.transport.is_closing():
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out.clear()

    def pause(self, why: str) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused.add(why)

    def resume(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def finished(self, ex: Exchange, keep: bool) -> None:
        if not self.exchanges or self.exchanges[0] is not ex:
            return
        self.exchanges.popleft()
        if not keep or (self.closing and not self.exchanges):
            self.flush()
            self.transport.close()
            return
        if self.exchanges:
            self.exchanges[0].start()
        else:
            self.resume("pipeline")
            if not self.in_head:
                self._arm(self.limits.idle_timeout_s)

    def start_tunnel(self, conn: Conn) -> None:
        self.tunnel = conn
        self.exchanges.clear()
        if self.early:
            conn.transport.write(bytes(self.early))
            self.early.clear()
        self.paused.clear()
        self.transport.resume_reading()

    def refuse(self, e: Refused) -> None:
        """Answer `e` and close (the rest of the stream cannot be trusted)."""
        if self.transport.is_closing():
            return
        if any(ex.responded for ex in self.exchanges):
            self.transport.close()
            return
        for other in self.exchanges:
            other.abandon()
        self.exchanges.clear()
        self.out.append(error_response(e.status, str(e)))
        self.flush()
        self.transport.close()

    # -- deadlines --
    def _arm(self, seconds: float) -> None:
        self.deadline = self.router.clock + seconds

    def _disarm(self) -> None:
        self.deadline = 0.0

    def check(self, now: float) -> None:
        if self.exchanges:
            self.exchanges[0].check(now)
        if self.deadline and now > self.deadline:
            self.deadline = 0.0
            self._timed_out()

    def _timed_out(self) -> None:
        if self.in_head:  # a head that did not arrive in time (slow or stalled client)
            self.refuse(Refused(408, "request head not received in time"))
        elif not self.exchanges:
            self.transport.close()  # idle keep-alive connection


class Exchange:
    """One request and its response, between a client and an upstream connection."""

    __slots__ = (
        "attempts",
        "body_bytes",
        "chunked",
        "client",
        "client_keep",
        "conn",
        "deadline",
        "deferred",
        "done",
        "http10",
        "interim",
        "keep",
        "kept",
        "kept_bytes",
        "method",
        "pending",
        "pending_bytes",
        "rechunk",
        "request_done",
        "responded",
        "router",
        "start_t",
        "started",
        "status",
        "task",
        "until_close",
        "up",
        "upgrade",
    )

    def __init__(
        self,
        client: Client,
        up: Upstream | None,
        head: bytes,
        method: bytes,
        chunked: bool,
        upgrade: bool,
    ) -> None:
        self.client, self.router, self.up = client, client.router, up
        self.method, self.chunked, self.upgrade = method, chunked, upgrade
        parser = client.parser  # what it says now is about this request's head
        self.http10 = parser.get_http_version() == "1.0"
        self.client_keep = parser.should_keep_alive() and not upgrade and not self.http10
        self.deferred: tuple[int, str] | None = None  # the router's own answer, once read
        self.conn: Conn | None = None
        self.pending: list[bytes] = [head]  # not written yet: no upstream connection
        self.pending_bytes = len(head)
        self.kept: list[bytes] | None = [head]  # for a resend; None once too big or answered
        self.kept_bytes = len(head)
        self.body_bytes = 0
        self.request_done = False
        self.responded = False  # the response head went to the client
        self.rechunk = False
        self.until_close = False
        self.keep = True
        self.interim = False
        self.status = 0
        self.attempts = 0
        self.started = False
        self.done = False
        self.start_t = time.perf_counter()
        self.deadline = 0.0  # for the response head; 0: none
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def from_request(
        cls, client: Client, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Exchange:
        router, limits = client.router, client.limits
        wanted, found = router.wanted, dict[bytes, list[bytes]]()
        out = [method, b" ", url, b" HTTP/1.1\r\n"]
        fwd: dict[bytes, bytes] = {}
        host, length, chunked, conn_tokens = b"", -1, False, b""
        for name, value in headers:
            ln = name.lower()
            if ln in wanted:
                found.setdefault(ln, []).extend(
                    v.strip() for v in value.split(b";" if ln == b"cookie" else b",")
                )
            if ln in HOP:
                if ln == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif ln == b"connection":
                    conn_tokens += b"," + value.lower()
                continue
            if ln in FORWARDED:
                if limits.trust_forwarded:
                    fwd[ln] = value
                continue
            if ln == b"content-length":
                length = int(value) if value.strip().isdigit() else -2
            elif ln == b"host":
                host = value
            out += (name, b": ", value, b"\r\n")
        if length == -2:
            raise Refused(400, "bad content-length")
        if length > limits.max_body_bytes:
            raise Refused(413, f"request body over {limits.max_body_bytes} bytes")
        for t in conn_tokens.split(b","):  # headers the client meant for this hop only
            if (t := t.strip()) and t not in HOP:
                out = _without(out, t)
        xff = (
            fwd[b"x-forwarded-for"] + b", " + client.peer
            if b"x-forwarded-for" in fwd
            else client.peer
        )
        out += (
            b"x-forwarded-for: ",
            xff,
            b"\r\nx-forwarded-proto: ",
            fwd.get(b"x-forwarded-proto", b"http"),
            b"\r\nx-forwarded-host: ",
            fwd.get(b"x-forwarded-host", host),
            b"\r\n",
        )
        # llhttp says `upgrade` only after this callback: read it from the headers
        upgrade_to = next((v for n, v in headers if n.lower() == b"upgrade"), b"")
        upgrade = bool(upgrade_to) and b"upgrade" in conn_tokens
        if upgrade:
            out.append(b"connection: upgrade\r\nupgrade: " + upgrade_to + b"\r\n")
        if chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        return cls(client, router.route(found), b"".join(out), method, chunked, upgrade)

    # -- request side --
    def start(self) -> None:
        self.started = True
        if self.up is None:
            self.answer(503, "no upstream has weight")
            return
        self.up.inflight += 1
        self._connect()

    def _connect(self) -> None:
        assert self.up is not None
        pool = self.up.pool
        while pool:
            conn = cast(Conn, pool.pop())  # the pool holds only this module's Conns
            if not conn.transport.is_closing():
                self.attach(conn)
                return
        self.task = asyncio.get_running_loop().create_task(self._open(self.up))

    async def _open(self, up: Upstream) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Conn(up), up.host, up.port),
                self.client.limits.connect_timeout_s,
            )
        except (OSError, TimeoutError) as e:
            self.upstream_failed(f"connect: {e or 'timed out'}")
            return
        if self.done:
            conn.release()
        else:
            self.attach(conn)

    def attach(self, conn: Conn) -> None:
        self.conn, conn.ex = conn, self
        if not self.client.feeding:
            self.flush_pending()
        self.client.resume("connect")
        if self.request_done:
            self._arm_response()

    def send(self, data: bytes) -> None:
        if self.done or self.up is None:
            return  # answered already: the rest of the body is read and dropped
        if self.kept is not None:
            self.kept_bytes += len(data)
            if self.kept_bytes > RETRY_BYTES:
                self.kept = None
            else:
                self.kept.append(data)
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.conn is not None:
            if not self.client.feeding:
                self.flush_pending()
        elif self.pending_bytes > BUFFER_MAX:
            self.client.pause("connect")

    def flush_pending(self) -> None:
        """Write what the upstream was not sent yet: head and body in one write."""
        if self.pending and self.conn is not None:
            self.conn.transport.write(
                b"".join(self.pending) if len(self.pending) > 1 else self.pending[0]
            )
            self.pending.clear()
            self.pending_bytes = 0

    def request_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.client.limits.max_body_bytes:
            raise Refused(413, f"request body over {self.client.limits.max_body_bytes} bytes")
        self.send(b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body)

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked:
            self.send(b"0\r\n\r\n")
        if self.deferred is not None:
            self.answer(*self.deferred)
        elif self.conn is not None:
            self._arm_response()

    # -- response side (called by Conn) --
    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self._disarm()
        self.status = status
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            self.client.write(_head(status, reason, headers, ()))
            return
        length = next((v for n, v in headers if n.lower() == b"content-length"), None)
        te = b"".join(v for n, v in headers if n.lower() == b"transfer-encoding").lower()
        no_body = self.method == b"HEAD" or status in (204, 304)
        chunked = b"chunked" in te and not no_body
        self.rechunk = chunked and not self.http10  # an HTTP/1.0 client reads until close
        self.until_close = not no_body and not chunked and length is None
        self.keep = self.client_keep and not self.until_close
        extra: list[bytes] = []
        if status == 101:
            up = next((v for n, v in headers if n.lower() == b"upgrade"), b"")
            extra += [b"connection: upgrade", b"upgrade: " + up]
        elif self.rechunk:
            extra.append(b"transfer-encoding: chunked")
        if not self.keep and status != 101:
            extra.append(b"connection: close")
        self.client.write(_head(status, reason, headers, extra))
        self.responded, self.kept = True, None
        if self.method == b"HEAD" and self.conn is not None:
            self.conn.parser = None  # llhttp would wait for the body a HEAD never gets
            self.response_done(keep_alive)

    def response_body(self, body: bytes) -> None:
        self.client.write(b"%x\r\n%b\r\n" % (len(body), body) if self.rechunk else body)

    def response_done(self, keep_alive: bool) -> None:
        if self.interim:
            self.interim = False
            return
        if self.done or self.status == 101:  # a 101 goes on as a tunnel (`upgraded`)
            return
        if self.rechunk:
            self.client.write(b"0\r\n\r\n")
        conn = self._finish(self.status)
        if conn is not None:
            if keep_alive and self.request_done:
                conn.release()
            else:
                conn.transport.close()
        # a response that came before the whole request: the rest of it cannot be skipped
        self.client.finished(self, self.keep and self.request_done)

    def upgraded(self, rest: bytes) -> None:
        """The upstream switched protocols (101): from now on, bytes both ways."""
        conn = self._finish(101)
        if conn is None:
            return
        conn.tunnel = self.client
        if rest:
            self.client.write(rest)
        self.client.flush()
        self.client.start_tunnel(conn)

    def upstream_lost(self, why: str) -> None:
        """The upstream connection closed or broke during this exchange."""
        if self.responded and self.until_close:
            self.response_done(False)  # its body ended with the connection, as announced
        elif self.responded:
            self._finish(self.status)
            self.client.transport.close()  # the client must not take a cut body as whole
        else:
            self.upstream_failed(why)

    def upstream_failed(self, why: str) -> None:
        """Nothing of a response came: resend (pooled connections go stale) if the request
        was kept, first on a fresh connection, then on another upstream with weight."""
        if self.done or self.up is None:
            return
        self._disarm()
        if self.conn is not None:
            self.conn.ex = None
            self.conn.transport.close()
            self.conn = None
        self.client.resume("upstream")  # that connection's full buffer is gone with it
        up = self.up
        self.router.stats.setdefault(up.version, VersionStats()).conn_errors += 1
        up.close_pool()  # its siblings are likely just as stale
        up.inflight -= 1
        self.attempts += 1
        nxt = up if self.attempts == 1 else self.router.pick(exclude=up)
        if self.kept is None or self.attempts >= 3 or nxt is None:
            self.up = None
            self.answer(502, "upstream unavailable")
            return
        self.up, self.pending = nxt, list(self.kept)
        self.pending_bytes = self.kept_bytes
        nxt.inflight += 1
        self._connect()

    def check(self, now: float) -> None:
        if self.deadline and now > self.deadline:
            self.deadline = 0.0
            self.timed_out()

    def timed_out(self) -> None:
        if self.responded or self.done:
            return
        self.answer(504, "upstream timed out", keep=False)

    # -- endings --
    def answer(self, status: int, text: str, keep: bool = True) -> None:
        """Answer the client from the router itself; on a connection kept alive, once the
        request was read (its body is dropped)."""
        if keep and not self.request_done and self.client_keep:
            self.deferred = (status, text)
            if self.up is not None:
                self.up.inflight -= 1
                self.up = None
            return
        self._finish(status, count=self.up is not None)
        self.keep = keep and self.request_done and self.client_keep
        self.client.write(error_response(status, text, close=not self.keep))
        self.client.flush()
        self.client.finished(self, self.keep)

    def _finish(self, status: int, count: bool = True) -> Conn | None:
        """Record the exchange once; returns its upstream connection, detached."""
        if self.done:
            return None
        self.done = True
        self._disarm()
        up, conn = self.up, self.conn
        if up is not None:
            up.inflight -= 1
            if count:
                ms = (time.perf_counter() - self.start_t) * 1000
                self.router.stats.setdefault(up.version, VersionStats()).observe(status, ms)
        self.conn = None
        if conn is not None:
            conn.ex = None
            if self.up is None or (status >= 500 and not self.responded):
                conn.transport.close()
                return None
        return conn

    def abandon(self) -> None:
        """The client went away: its upstream connection is closed (a response in flight
        cannot be reused), in-flight is counted down."""
        if self.task is not None:
            self.task.cancel()
        if self.done:
            return
        self.done = True
        self._disarm()
        if self.up is not None and self.started:
            self.up.inflight -= 1
        if self.conn is not None:
            self.conn.ex = None
            if self.conn.tunnel is None:
                self.conn.transport.close()

    def _arm_response(self) -> None:
        if not self.responded and not self.deadline:
            self.deadline = self.router.clock + self.client.limits.response_timeout_s

    def _disarm(self) -> None:
        self.deadline = 0.0


class Conn(asyncio.Protocol):
    """One connection to an upstream: idle in its pool, or serving one exchange."""

    __slots__ = ("ex", "headers", "parser", "reason", "transport", "tunnel", "up")
    transport: asyncio.Transport

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.tunnel: Client | None = None
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        ex = self.ex
        if ex is None or self.parser is None:  # nobody asked: not a connection to reuse
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            ex.upgraded(data[int(e.args[0]) :])
        except httptools.HttpParserError as e:
            self.transport.close()
            ex.upstream_lost(f"bad response: {e}")
        finally:
            ex.client.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.up.pool:
            self.up.pool.remove(self)
        if self.tunnel is not None:
            self.tunnel.transport.close()
        elif self.ex is not None:
            ex, self.ex = self.ex, None
            ex.conn = None
            ex.upstream_lost(str(exc or "connection closed"))
            ex.client.flush()

    def pause_writing(self) -> None:
        client = self.tunnel or (self.ex.client if self.ex else None)
        if client is not None:
            client.pause("upstream")

    def resume_writing(self) -> None:
        client = self.tunnel or (self.ex.client if self.ex else None)
        if client is not None:
            client.resume("upstream")

    def release(self) -> None:
        """Back to its upstream's pool, ready for the next request."""
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        if len(self.up.pool) < POOL_MAX and not self.transport.is_closing():
            self.transport.resume_reading()  # a slow client may have paused it
            self.up.pool.append(self)
        else:
            self.transport.close()

    # -- parser callbacks --
    def on_message_begin(self) -> None:
        self.reason, self.headers = b"", []

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.ex is not None and self.parser is not None:
            self.ex.response_head(
                self.parser.get_status_code(),
                self.reason,
                self.headers,
                self.parser.should_keep_alive(),
            )

    def on_body(self, body: bytes) -> None:
        if self.ex is not None:
            self.ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.ex is not None and self.parser is not None:
            self.ex.response_done(self.parser.should_keep_alive())


def _head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    extra: tuple[bytes, ...] | list[bytes],
) -> bytes:
    out = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
    for name, value in headers:
        if name.lower() not in HOP:
            out += (name, b": ", value, b"\r\n")
    for line in extra:
        out += (line, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _without(parts: list[bytes], name: bytes) -> list[bytes]:
    """Head parts (name, ': ', value, CRLF per header) without the header `name`."""
    out, i = parts[:4], 4
    while i < len(parts):
        if parts[i].lower() != name:
            out += parts[i : i + 4]
        i += 4
    return out


def error_response(status: int, text: str, close: bool = True) -> bytes:
    body = f"rollwise router: {text}\n".encode()
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nx-rollwise-router: 1\r\n"
        f"{'connection: close' + chr(13) + chr(10) if close else ''}\r\n"
    ).encode() + body


async def serve(router: Router, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    if router.sweeper is None:
        router.sweeper = loop.create_task(router.sweep())
    return await loop.create_server(
        lambda: Client(router), host, port, reuse_address=True, backlog=1024
    )
