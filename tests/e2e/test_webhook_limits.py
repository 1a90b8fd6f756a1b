"""The alert webhook (`rollwise serve`, a real server in its own process) against what a
hostile or broken client sends: bodies too large (declared or chunked), no or a wrong token
with bodies that are not valid, pages nobody should be served, and clients that send slowly.
Memory is read from the server's /proc/<pid>/status."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from rollwise.ports import free_port
from tests.conftest import Project

TOKEN = "t0ken-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 256 * 1024
TIMEOUT_S = 2  # --timeout given to the server here; the default is 10
MIB = 1024 * 1024
MARKER = "MARKER-7f3a"  # put in bodies; must never come back


@dataclass(frozen=True)
class Webhook:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
        return int(line.split()[1])


@dataclass(frozen=True)
class Answer:
    status: int  # 0: closed without an answer
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client got to send before the server answered or closed
    seconds: float


@pytest.fixture
def webhook(project: Project) -> Iterator[Webhook]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollwise",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--timeout",
            str(TIMEOUT_S),
            "-C",
            str(project.root),
        ],
        env={**os.environ, "ROLLWISE_WEBHOOK_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        hook = Webhook(port, proc.pid)
        _wait_until_up(hook)
        yield hook
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_until_up(hook: Webhook) -> None:
    for _ in range(150):
        try:
            httpx.get(f"{hook.url}/health", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("rollwise serve did not start")


def head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def chunked(size: int, count: int) -> Iterator[bytes]:
    data = b"x" * size
    for _ in range(count):
        yield b"%x\r\n" % size + data + b"\r\n"


def exchange(
    port: int, request: bytes, body: Iterable[bytes] = (), pace: float = 0.0, limit_s: float = 20.0
) -> Answer:
    """Send `request`, then `body` piece by piece (waiting `pace` seconds between pieces)
    until the server answers or closes; return what it answered."""
    start = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as s:
        s.sendall(request)
        for piece in body:
            if select.select([s], [], [], pace)[0]:
                break  # the server answered or closed
            try:
                s.sendall(piece)
            except OSError:  # it closed while we were sending
                break
            sent += len(piece)
        raw = _read_all(s)
    return _parse(raw, sent, time.monotonic() - start)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, sent: int, seconds: float) -> Answer:
    if not raw:
        return Answer(0, {}, b"", sent, seconds)
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines))
    return Answer(int(status_line.split()[1]), headers, body, sent, seconds)


def alertmanager_resolved(padding: int) -> bytes:
    alert = {
        "status": "resolved",
        "labels": {"rollwise_env": "dev"},
        "annotations": {"description": "x" * padding},
    }
    return json.dumps({"version": "4", "status": "resolved", "alerts": [alert]}).encode()


def test_given_a_60_mb_body_declared_when_only_its_headers_arrive_then_413_at_once(webhook):
    answer = exchange(
        webhook.port,
        head(
            "/hooks/alertmanager",
            f"Authorization: Bearer {TOKEN}",
            "Content-Type: application/json",
            f"Content-Length: {60 * MIB}",
        ),
    )
    assert answer.status == 413, answer
    assert answer.headers["connection"] == "close"
    assert b"larger than 262144 bytes" in answer.body


def test_given_a_60_mb_body_sent_with_its_length_then_413_and_memory_stays_flat(webhook):
    before = _warm(webhook)
    request = head(
        "/hooks/alertmanager",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        f"Content-Length: {60 * MIB}",
    )
    answer = exchange(webhook.port, request, (b"x" * 65536 for _ in range(960)))
    assert answer.status == 413, answer
    assert answer.sent < 60 * MIB
    assert webhook.rss_kib() - before < 5 * 1024, (before, webhook.rss_kib())


def test_given_a_60_mb_chunked_body_then_reading_stops_past_the_limit_with_413(webhook):
    before = _warm(webhook)
    request = head(
        "/hooks/alertmanager",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    )
    answer = exchange(webhook.port, request, chunked(65536, 960))
    assert answer.status == 413, answer
    assert answer.sent < 16 * MIB  # the server stopped reading long before the end
    assert webhook.rss_kib() - before < 5 * 1024, (before, webhook.rss_kib())


def test_given_bodies_around_the_limit_then_below_is_accepted_and_above_refused(webhook):
    hook = f"{webhook.url}/hooks/alertmanager"
    below = alertmanager_resolved(LIMIT - 1000)
    above = alertmanager_resolved(LIMIT + 1)
    assert len(below) <= LIMIT < len(above)
    ok = httpx.post(hook, content=below, headers={**AUTH, "Content-Type": "application/json"})
    assert ok.status_code == 202 and ok.json() == {"results": []}
    request = head(
        "/hooks/alertmanager", f"Authorization: Bearer {TOKEN}", "Transfer-Encoding: chunked"
    )
    pieces = [b"%x\r\n" % len(above) + above + b"\r\n", b"0\r\n\r\n"]
    assert exchange(webhook.port, request, pieces).status == 413


@pytest.mark.parametrize("path", ["/hooks/alertmanager", "/hooks/generic"])
def test_given_no_or_a_wrong_token_when_any_body_is_sent_then_401_before_it_is_read(webhook, path):
    bodies = [
        (f"{MARKER} not json", "text/plain"),
        (f"a={MARKER}", "application/x-www-form-urlencoded"),
        (json.dumps({MARKER: [1, 2]}), "application/json"),
        ("", ""),
    ]
    with httpx.Client(base_url=webhook.url) as client:
        for auth in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            for body, kind in bodies:
                r = client.post(
                    path, content=body, headers={**auth, **({"Content-Type": kind} if kind else {})}
                )
                assert r.status_code == 401, (auth, body, r.text)
                assert MARKER not in r.text and r.headers["www-authenticate"] == "Bearer"
    huge = exchange(webhook.port, head(path, f"Content-Length: {60 * MIB}"))
    assert huge.status == 401  # the token is checked before the size


@pytest.mark.parametrize("path", ["/hooks/alertmanager", "/hooks/generic"])
def test_given_the_token_when_the_body_is_not_valid_then_422_without_echoing_it(webhook, path):
    for body, kind in [
        (f"{MARKER} not json", "text/plain"),
        (f'{{"{MARKER}": "{MARKER}"', "application/json"),
        (json.dumps({"alerts": MARKER, "env": [MARKER]}), "application/json"),
    ]:
        r = httpx.post(webhook.url + path, content=body, headers={**AUTH, "Content-Type": kind})
        assert r.status_code == 422, (body, r.text)
        assert MARKER not in r.text and r.json()["detail"][0]["msg"]


def test_given_the_api_pages_then_none_is_served_with_or_without_the_token(webhook):
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert httpx.get(webhook.url + path).status_code == 401
        assert httpx.get(webhook.url + path, headers=AUTH).status_code == 404


def test_given_every_page_the_webhook_answers_then_none_names_another_host(webhook):
    own = f"127.0.0.1:{webhook.port}"
    with httpx.Client(base_url=webhook.url) as client:
        answers = [
            client.request(method, path, headers=headers)
            for method in ("GET", "POST")
            for path in (
                "/",
                "/health",
                "/docs",
                "/redoc",
                "/openapi.json",
                "/hooks/generic",
                "/hooks/alertmanager",
                "/nope",
            )
            for headers in ({}, AUTH)
        ]
    seen = {r.status_code for r in answers}
    assert {200, 401, 404, 405, 422} <= seen
    for r in answers:
        text = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        hosts = set(re.findall(r"https?://([^/\s\"'<>]+)", text))
        assert hosts <= {own}, (r.request.url, hosts)
        assert "server" not in r.headers


def test_given_a_client_that_trickles_its_body_then_408_within_the_timeout(webhook):
    request = head(
        "/hooks/generic",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        "Content-Length: 1000",
    )
    answer = exchange(webhook.port, request, (b" " for _ in range(1000)), pace=0.2)
    assert answer.status == 408, answer
    assert TIMEOUT_S - 0.5 < answer.seconds < TIMEOUT_S + 20  # the whole trickle takes 200 s
    assert answer.sent < 100


def test_given_a_client_that_trickles_its_headers_then_it_is_closed_within_the_timeout(webhook):
    request = b"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    answer = exchange(webhook.port, request, (b"a" for _ in range(1000)), pace=0.2)
    assert answer.status == 0 and answer.body == b""  # closed, nothing parsed or answered
    assert TIMEOUT_S - 0.5 < answer.seconds < TIMEOUT_S + 20  # the whole trickle takes 200 s


def test_given_connections_held_open_then_more_are_refused_and_the_server_recovers(webhook):
    held = [socket.create_connection(("127.0.0.1", webhook.port)) for _ in range(32)]
    try:
        for s in held:
            s.sendall(b"POST /hooks/generic HTTP/1.1\r\n")
        time.sleep(0.3)
        assert httpx.get(f"{webhook.url}/health").status_code == 503
        started = time.monotonic()  # each held connection is closed at its deadline
        while httpx.get(f"{webhook.url}/health").status_code == 503:
            assert time.monotonic() - started < TIMEOUT_S + 3
            time.sleep(0.2)
    finally:
        for s in held:
            s.close()


def _warm(hook: Webhook) -> int:
    """The server's RSS (KiB) once the code paths a refusal uses have been loaded."""
    for body in (b"{}", b"x" * 1000):
        httpx.post(f"{hook.url}/hooks/generic", content=body, headers=AUTH)
    exchange(
        hook.port,
        head("/hooks/generic", f"Authorization: Bearer {TOKEN}", "Transfer-Encoding: chunked"),
        chunked(65536, 8),
    )
    return hook.rss_kib()
