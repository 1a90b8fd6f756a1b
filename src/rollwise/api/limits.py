"""What one request may cost the webhook: who may send a body, how large, and how slowly.

`Guard` stands in front of the routes, so nothing is parsed before it is allowed:

1. the bearer token is checked before any byte of the body is read (401);
2. a declared Content-Length above the limit is refused unread (413);
3. the body, chunked or not, is read up to the limit and then refused (413), or refused
   when it has not all arrived within the timeout (408); what was read (never more than the
   limit) is handed to the routes whole.

Every refusal closes the connection, so an unread body is never drained. `HeaderDeadline`
closes a connection whose request headers have not all arrived within the timeout, which
uvicorn does not do by itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

BAD_TOKEN = "missing or wrong token (Authorization: Bearer ...)"
TOO_LARGE = "request body larger than {limit} bytes"
TOO_SLOW = "request body not received within {timeout} s"
BAD_LENGTH = "Content-Length is not a number"


@dataclass(frozen=True)
class Limits:
    max_body: int = 256 * 1024
    """Largest request body accepted, in bytes."""
    timeout_s: int = 10
    """Seconds a client has to send a request's headers, and then as long for its body;
    also how long an idle connection is kept."""
    max_connections: int = 32
    """Open connections (and requests in progress) beyond which requests get 503."""


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Guard:
    """ASGI middleware: authenticate, then read a bounded body within a deadline."""

    def __init__(
        self, app: ASGIApp, token: str, limits: Limits, public: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.limits = limits
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._admit(scope)
            body = await self._read(receive)
        except Refused as e:
            await _refuse(send, e)
            return
        if body is not None:  # None: the client went away
            await self.app(scope, _replay(body, receive), send)

    def _admit(self, scope: Scope) -> None:
        if scope["path"] not in self.public:
            given = _header(scope, b"authorization").removeprefix(b"Bearer ").strip()
            if not hmac.compare_digest(given, self.token):
                raise Refused(401, BAD_TOKEN)
        declared = _header(scope, b"content-length")
        if declared and not declared.isdigit():
            raise Refused(400, BAD_LENGTH)
        if declared and int(declared) > self.limits.max_body:
            raise Refused(413, TOO_LARGE.format(limit=self.limits.max_body))

    async def _read(self, receive: Receive) -> bytes | None:
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    if len(body) > self.limits.max_body:
                        raise Refused(413, TOO_LARGE.format(limit=self.limits.max_body))
                    if not message.get("more_body", False):
                        return bytes(body)
        except TimeoutError:
            raise Refused(408, TOO_SLOW.format(timeout=self.limits.timeout_s)) from None


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection when a request's headers have not all
    arrived `timeout_keep_alive` seconds after it opened or after the previous response
    (uvicorn's own keep-alive timer stops at the first byte, so headers sent a byte at a
    time would hold a connection forever)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._expire)

    def _expire(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _header(scope: Scope, name: bytes) -> bytes:
    return next((v for k, v in scope["headers"] if k == name), b"")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body already read, then whatever the server says next
    (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _refuse(send: Send, refusal: Refused) -> None:
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if refusal.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
