"""The embedded router's HTTP side: httptools (llhttp, Node.js's parser) reads HTTP, asyncio
protocols move the bytes; `rollwise.agent.router.Router` decides where each request goes.

A weight change only decides where the *next* request goes: no client or upstream
connection is closed by it, so a switch drops nothing. Upstream connections are pooled
(keep-alive). Bodies stream both ways as they come (SSE and chunked responses are not
buffered); after `101 Switching Protocols` (WebSocket) bytes are piped both ways.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import perf_counter
from typing import cast

import httptools

from rollwise.agent.router import (
    BUFFER_MAX,
    DROPPED,
    FORWARDED,
    HOP,
    POOL_MAX,
    REASONS,
    RESPONSE_NOTED,
    RETRY_BYTES,
    Refused,
    Router,
    Upstream,
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
        "forwarded",
        "head_bytes",
        "head_raw",
        "in_head",
        "limits",
        "noted",
        "out",
        "parser",
        "parts",
        "paused",
        "peer",
        "router",
        "transport",
        "tunnel",
        "upgrading",
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
        # the head to send: request line (filled in once read), then the headers passed on
        self.parts: list[bytes] = []
        self.noted: list[tuple[bytes, bytes]] = []  # headers the router reads: (lower name, value)
        self.forwarded = b""  # X-Forwarded-For/-Proto lines for this client, if not trusted
        self.upgrading = False  # the parser is done: bytes wait for the upstream's answer
        self.early = bytearray()
        self.tunnel: Conn | None = None
        self.closing = False

    # -- transport events --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        self.forwarded = b"x-forwarded-for: %b\r\nx-forwarded-proto: http\r\n" % self.peer
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
            if self.exchanges and (ex := self.exchanges[0]).pending:
                ex.flush_pending()
            if self.out:
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
        self.in_head, self.head_bytes, self.head_raw = True, 0, 0
        self.parts, self.noted = [b"", b" ", b"", b" HTTP/1.1\r\n"], []
        self.deadline = self.router.clock + self.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.parts[2] += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Headers the router reads are noted; hop-by-hop and forwarded ones go no further."""
        self.head_bytes += len(name) + len(value)  # exact, even for a head begun mid-read
        lower = name.lower()
        if lower in self.router.noted:
            self.noted.append((lower, value))
            if lower in DROPPED:
                return
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.deadline = 0.0
        if self.head_bytes > self.limits.max_head_bytes:
            raise Refused(431, "request head too large")
        self.parts[0] = self.parser.get_method()
        ex = Exchange(self, self.parts, self.noted)
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
        exchanges = self.exchanges
        if not exchanges or exchanges[0] is not ex:
            return
        exchanges.popleft()
        if not keep or (self.closing and not exchanges):
            self.flush()
            self.transport.close()
            return
        if exchanges:
            exchanges[0].start()
            return
        if self.paused:
            self.resume("pipeline")
        if not self.in_head:
            self.deadline = self.router.clock + self.limits.idle_timeout_s

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
        "reused",
        "start_t",
        "started",
        "status",
        "task",
        "until_close",
        "up",
        "upgrade",
    )

    def __init__(
        self, client: Client, parts: list[bytes], noted: list[tuple[bytes, bytes]]
    ) -> None:
        """The exchange for a request whose head, without its hop-by-hop and forwarded
        headers, is `parts` (request line first), and whose headers the router reads are
        `noted` (lower-case name, value)."""
        router, limits, wanted = client.router, client.limits, client.router.wanted
        host, chunked, conn_tokens, upgrade_to = b"", False, b"", b""
        found: dict[bytes, list[bytes]] | None = None
        fwd: dict[bytes, bytes] | None = None
        for name, value in noted:
            if name == b"host":
                host = value
            elif name == b"content-length":
                if not value.strip().isdigit():
                    raise Refused(400, "bad content-length")
                if int(value) > limits.max_body_bytes:
                    raise Refused(413, f"request body over {limits.max_body_bytes} bytes")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                conn_tokens += b"," + value.lower()
            elif name == b"upgrade":
                upgrade_to = upgrade_to or value
            elif name in FORWARDED and limits.trust_forwarded:
                if fwd is None:
                    fwd = {}
                fwd[name] = value
            if wanted and name in wanted:
                if found is None:
                    found = {}
                found.setdefault(name, []).extend(
                    v.strip() for v in value.split(b";" if name == b"cookie" else b",")
                )
        if conn_tokens:
            parts = _without_named(parts, conn_tokens)
        if fwd:
            parts += _forwarded(fwd, client.peer, host)
        else:
            parts += (client.forwarded, b"x-forwarded-host: ", host, b"\r\n")
        # llhttp says `upgrade` only after this callback: read it from the headers
        upgrade = bool(upgrade_to) and b"upgrade" in conn_tokens
        if upgrade:
            parts.append(b"connection: upgrade\r\nupgrade: " + upgrade_to + b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        keep_alive = client.parser.should_keep_alive()  # what it says now is about this head
        # without a Connection header, only HTTP/1.1 keeps alive: no version string to read
        http10 = bool(conn_tokens or not keep_alive) and client.parser.get_http_version() == "1.0"
        self.client, self.method, self.chunked, self.upgrade = client, parts[0], chunked, upgrade
        self.up = router.route(found) if found else router.only or router.pick()
        self.http10 = http10  # an HTTP/1.0 client: no chunked response, no keep-alive
        # its connection stays open after this exchange
        self.client_keep = keep_alive and not upgrade and not http10
        self.deferred: tuple[int, str] | None = None  # the router's own answer, once read
        self.conn: Conn | None = None
        head = b"".join(parts)
        self.pending: list[bytes] = [head]  # not written yet: no upstream connection
        self.kept: list[bytes] | None = [head]  # for a resend; None once too big or answered
        self.pending_bytes = self.kept_bytes = len(head)
        self.body_bytes = self.status = self.attempts = 0
        self.deadline = 0.0  # for the response head; 0: none
        self.request_done = self.responded = self.rechunk = self.until_close = False
        self.interim = self.started = self.done = False  # responded: its head went out
        self.reused = False  # on a pooled connection, which the upstream may have closed
        self.keep = True
        self.start_t = perf_counter()
        self.task: asyncio.Task[None] | None = None

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
            conn: Conn = pool.pop()  # type: ignore[assignment]  # it holds only Conns
            if not conn.transport.is_closing():
                self.reused = True
                self.attach(conn)
                return
        self.reused = False
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
        client = self.client
        if not client.feeding:
            self.flush_pending()
        if client.paused:
            client.resume("connect")
        if self.request_done:
            self._arm_response()

    def request_body(self, body: bytes) -> None:
        """Pass a piece of the request body on (once the request is read, on its whole)."""
        self.body_bytes += len(body)
        if self.body_bytes > self.client.limits.max_body_bytes:
            raise Refused(413, f"request body over {self.client.limits.max_body_bytes} bytes")
        self.send(b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body)

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

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked:
            self.send(b"0\r\n\r\n")
        if self.deferred is not None:
            self.answer(*self.deferred)
        elif self.conn is not None and not self.responded and not self.deadline:
            self.deadline = self.client.router.clock + self.client.limits.response_timeout_s

    # -- response side (called by Conn) --
    def response_head(
        self,
        status: int,
        reason: bytes,
        parts: list[bytes],
        noted: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        """Pass the response head on: `parts` is a slot for the status line, then the headers
        that are not hop-by-hop; `noted` its framing headers (lower-case name, value)."""
        self.deadline = 0.0
        self.status = status
        parts[0] = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if status < 200 and status != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            parts.append(b"\r\n")
            self.client.out += parts
            return
        length, te, upgrade_to = None, b"", b""
        for name, value in noted:
            if name == b"content-length":
                length = value if length is None else length
            elif name == b"transfer-encoding":
                te += value.lower()
            elif name == b"upgrade":
                upgrade_to = upgrade_to or value
        no_body = status == 204 or status == 304 or self.method == b"HEAD"
        # (`bytes in bytes` first tries the operand as an int: `find` is cheaper)
        chunked = te.find(b"chunked") >= 0 and not no_body
        self.rechunk = chunked and not self.http10  # an HTTP/1.0 client reads until close
        self.until_close = not no_body and not chunked and length is None
        self.keep = self.client_keep and not self.until_close
        if status == 101:
            parts.append(b"connection: upgrade\r\nupgrade: " + upgrade_to + b"\r\n")
        elif self.rechunk:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep and status != 101:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.client.out += parts
        self.responded, self.kept = True, None
        if self.method == b"HEAD" and self.conn is not None:
            self.conn.parser = None  # llhttp would wait for the body a HEAD never gets
            self.response_done(keep_alive)

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
        stats = self.client.router.version_stats(up.version)
        if self.reused:  # a pooled connection the upstream had closed: not its error
            stats.stale_resends += 1
        else:
            stats.conn_errors += 1
        up.close_pool()  # its siblings are likely just as stale
        up.inflight -= 1
        self.attempts += 1
        nxt = up if self.attempts == 1 else self.client.router.pick(exclude=up)
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
        self.deadline = 0.0
        up, conn = self.up, self.conn
        if up is not None:
            up.inflight -= 1
            if count:
                stats = up.stats
                if stats is None:  # its version's, looked up once per upstream
                    stats = up.stats = self.client.router.version_stats(up.version)
                stats.observe(status, (perf_counter() - self.start_t) * 1000)
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
            self.deadline = self.client.router.clock + self.client.limits.response_timeout_s

    def _disarm(self) -> None:
        self.deadline = 0.0


class Conn(asyncio.Protocol):
    """One connection to an upstream: idle in its pool, or serving one exchange."""

    __slots__ = ("ex", "noted", "parser", "parts", "reason", "transport", "tunnel", "up")
    transport: asyncio.Transport

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.tunnel: Client | None = None
        # the response head being read (taken by on_headers_complete, so that no
        # on_message_begin callback is needed): the status line's reason, then a slot for
        # the status line and the headers passed on, and the framing headers read
        self.reason = b""
        self.parts: list[bytes] = [b""]
        self.noted: list[tuple[bytes, bytes]] = []  # (lower name, value)

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
            if ex.client.out:
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
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        """Framing headers are noted; hop-by-hop ones go no further."""
        lower = name.lower()
        if lower in RESPONSE_NOTED:
            self.noted.append((lower, value))
            if lower in HOP:
                return
        self.parts += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        reason, parts, noted = self.reason, self.parts, self.noted
        self.reason, self.parts, self.noted = b"", [b""], []  # for the next response
        if self.ex is not None and self.parser is not None:
            parser = self.parser
            self.ex.response_head(
                parser.get_status_code(), reason, parts, noted, parser.should_keep_alive()
            )

    def on_body(self, body: bytes) -> None:
        if (ex := self.ex) is not None:
            ex.client.out.append(b"%x\r\n%b\r\n" % (len(body), body) if ex.rechunk else body)

    def on_message_complete(self) -> None:
        if self.ex is not None and self.parser is not None:
            self.ex.response_done(self.parser.should_keep_alive())


def _without_named(parts: list[bytes], conn_tokens: bytes) -> list[bytes]:
    """Head parts without the headers a Connection header names (meant for this hop only)."""
    for t in conn_tokens.split(b","):
        if (t := t.strip()) and t not in HOP:
            parts = _without(parts, t)
    return parts


def _forwarded(fwd: dict[bytes, bytes], peer: bytes, host: bytes) -> tuple[bytes, ...]:
    """X-Forwarded-* lines that keep what a trusted proxy in front said, this hop added."""
    xff = fwd[b"x-forwarded-for"] + b", " + peer if b"x-forwarded-for" in fwd else peer
    return (
        b"x-forwarded-for: ",
        xff,
        b"\r\nx-forwarded-proto: ",
        fwd.get(b"x-forwarded-proto", b"http"),
        b"\r\nx-forwarded-host: ",
        fwd.get(b"x-forwarded-host", host),
        b"\r\n",
    )


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
