"""Faults for drills, injected without touching the app: this module wraps an instance's run
command. It starts the app on a free inner port and serves the instance's own port as a small
reverse proxy that fails a share of requests, delays them, or fails the health check; or it
exits at once, as an app that crashes on start. Signals are passed to the app, and the
wrapper exits with it. Standard library only (it runs where instances run).

    python -m rollwise.faults --error-rate 0.3 --only-version 1.0.0+drill.1 \\
        -- 'python3 app.py --port {inner_port}'

The app's command is one shell string, run by /bin/sh in the instance's directory with the
instance's environment; `{inner_port}` and `{inner_host}` in it, and `$PORT` and `$HOST`, are
the inner address. The outer one is the instance's `$PORT` and `$HOST`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INNER_PORT = "{inner_port}"
INNER_HOST = "{inner_host}"
INNER_ADDRESS = "127.0.0.1"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
FAULT_HEADER = "x-rollwise-fault"
CRASH_EXIT = 70  # EX_SOFTWARE: the drill's crash on start


@dataclass(frozen=True)
class Settings:
    error_rate: float = 0.0
    latency_ms: float = 0.0
    crash_on_start: bool = False
    fail_health: bool = False
    health_path: str = "/health"
    only_version: str | None = None  # other versions run the app as it is


def parse(argv: list[str]) -> tuple[Settings, str]:
    p = argparse.ArgumentParser(prog="python -m rollwise.faults", description=__doc__)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--crash-on-start", action="store_true")
    p.add_argument("--fail-health", action="store_true")
    p.add_argument("--health-path", default="/health")
    p.add_argument("--only-version", default=None)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    rest = a.command[1:] if a.command[:1] == ["--"] else a.command
    command = " ".join(rest)
    if not command:
        p.error("the app's command is missing (after --)")
    if not 0.0 <= a.error_rate <= 1.0:
        p.error(f"--error-rate {a.error_rate}: a share between 0 and 1")
    return (
        Settings(
            a.error_rate,
            a.latency_ms,
            a.crash_on_start,
            a.fail_health,
            a.health_path,
            a.only_version,
        ),
        command,
    )


def inner_command(command: str, port: int) -> str:
    return command.replace(INNER_PORT, str(port)).replace(INNER_HOST, INNER_ADDRESS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((INNER_ADDRESS, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """The app goes when the wrapper goes, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_app(command: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "HOST": INNER_ADDRESS}
    return subprocess.Popen(
        ["/bin/sh", "-c", f"exec {inner_command(command, port)}"],
        env=env,
        start_new_session=True,  # a signal to the wrapper's group reaches the app once, from us
        preexec_fn=_die_with_parent,
    )


class Upstream(threading.local):
    """One keep-alive connection to the app per proxy thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> http.client.HTTPResponse:
        for attempt in (1, 2):  # a pooled connection the app closed is opened again once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(INNER_ADDRESS, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body or None, headers=headers)
                return self.conn.getresponse()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def handler(settings: Settings, upstream: Upstream, version: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def reply(self, status: int, fault: str, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-version", version)
            self.send_header(FAULT_HEADER, fault)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                return _read_chunked(self.rfile)
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def handle_any(self) -> None:
            body = self.body()
            health = self.path.split("?", 1)[0] == settings.health_path
            if health and settings.fail_health:
                return self.reply(503, "fail-health", "health check failed (drill fault)\n")
            if not health and settings.latency_ms:
                time.sleep(settings.latency_ms / 1000)
            if not health and random.random() < settings.error_rate:
                return self.reply(500, "error-rate", "request failed (drill fault)\n")
            self.forward(body)

        def forward(self, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["content-length"] = str(len(body))
            try:
                resp = upstream.send(self.command, self.path, headers, body)
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                return self.reply(502, "upstream", f"the app did not answer: {e}\n")
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    return Handler


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def run(settings: Settings, command: str) -> int:
    version = os.environ.get("ROLLWISE_VERSION", "")
    if settings.only_version is not None and version != settings.only_version:
        plain = command.replace(INNER_PORT, os.environ.get("PORT", ""))
        plain = plain.replace(INNER_HOST, os.environ.get("HOST", INNER_ADDRESS))
        os.execv("/bin/sh", ["/bin/sh", "-c", f"exec {plain}"])  # no fault: the app itself
    if settings.crash_on_start:
        print("rollwise drill fault: crash on start", file=sys.stderr, flush=True)
        return CRASH_EXIT
    outer = (os.environ.get("HOST", INNER_ADDRESS), int(os.environ["PORT"]))
    inner = free_port()
    server = Server(outer, handler(settings, Upstream(inner), version))
    app = start_app(command, inner)

    def forward(sig: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(
        f"rollwise drill faults on {outer[0]}:{outer[1]} -> app on {INNER_ADDRESS}:{inner}: "
        f"{settings}",
        file=sys.stderr,
        flush=True,
    )
    code = app.wait()
    server.shutdown()
    server.server_close()
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> None:
    settings, command = parse(sys.argv[1:] if argv is None else argv)
    sys.exit(run(settings, command))


if __name__ == "__main__":
    main()
