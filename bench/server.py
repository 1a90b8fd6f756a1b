"""Team server benchmark: `rollwise server` on the example app with its state in the
machine's PostgreSQL (a scratch database, dropped afterwards).

- `status_p50_ms`, `status_p99_ms`: GET /api/v1/environments/dev/status from `--clients`
  concurrent clients (50), `--requests` in all (10,000), each a keep-alive connection of its
  own; target: p99 <= 50 ms on 2 cores.
- `submit_p99_ms`: POST .../deploy from the same number of clients at once (each accepted as
  a job; one runs, the others end refused by the environment's lock).
- `rss_mb`: the server's resident memory after the status requests and the submits, with
  `rss_mb_at` its value every 2,000 status requests (it must not grow without bound).
- `decision_to_notification_s`: a bad canary (the example's order error rate at 30 %, 50
  req/s of load) deployed through the server `--bad-runs` times (3); from the analysis
  decision to roll back (its audit event's time) to the JSON webhook on loopback receiving
  "canary failed" (median and worst); target <= 2 s.
- `decision_to_dashboard_s`: written by bench/dashboard.py (a browser watching the page).

The clients run in this process (asyncio, httpx) on the same 2 cores as the server and its
database: compare runs made on a quiet machine. Writes bench/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text

from rollwise import loadgen
from rollwise.demo import prepare_example
from rollwise.ports import free_port

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "order-sync"
PG = os.environ.get("ROLLWISE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
TARGET_STATUS_P99_MS = 50.0
TARGET_NOTIFICATION_S = 2.0


def cli(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "rollwise", *args, "-C", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise SystemExit(f"rollwise {' '.join(args)}: {done.stderr}")
    return done.stdout


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)


async def status_load(
    url: str, token: str, clients: int, total: int, pid: int
) -> tuple[list[float], list[float], int]:
    """(latencies ms, RSS every 2,000 requests, failures). Each client is one keep-alive
    connection speaking plain HTTP/1.1 over asyncio streams: a client that costs little CPU,
    so that what is measured is the server, not the load generator beside it."""
    latencies: list[float] = []
    rss: list[float] = []
    failed = 0
    left = iter(range(total))
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /api/v1/environments/dev/status HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()

    async def client() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for n in left:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                size = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(size)
                latencies.append((time.perf_counter() - t0) * 1000)
                failed += not head.startswith(b"HTTP/1.1 200")
                if n % 2000 == 1999:
                    rss.append(rss_mb(pid))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, rss, failed


class Receiver:
    """A JSON webhook on loopback: when each message arrived, and its title."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        got: list[tuple[float, str]] = []
        self.got = got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                got.append((time.time(), str(body.get("title"))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


def wait_jobs(url: str, token: str, ids: list[str], timeout_s: float = 300) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"}
    results = []
    for job_id in ids:
        while time.monotonic() < deadline:
            job = httpx.get(f"{url}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if job["state"] == "done":
                results.append(job["result"])
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"job {job_id} still running after {timeout_s} s")
    return results


def bad_canaries(root: Path, env: dict[str, str], url: str, token: str, runs: int) -> list[float]:
    """Seconds from each rollback decision to the webhook's "canary failed" message."""
    hook = Receiver()
    (root / "faults.json").write_text(json.dumps({"order_error_rate": 0.3}))
    (root / "VERSION").write_text("1.2.0\n")
    cli(root, env, "release", "create", "--version", "1.2.0")
    (root / "faults.json").unlink()
    cfg = yaml.safe_load((root / "rollwise.yaml").read_text())
    cfg["environments"]["dev"].update(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 30},
        analysis={"interval_s": 0.5, "checks_every_s": 1},
        notifications=[
            {
                "name": "bench",
                "urls": [f"json://127.0.0.1:{hook.port}/rollwise"],
                "events": ["canary-failed"],
                "min_interval_s": 0,
            }
        ],
    )
    (root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    host, port = json.loads(cli(root, env, "status", "--json"))["environments"]["dev"][
        "router"
    ].rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}"}
    took = []
    for n in range(runs):
        load = loadgen.Load(host, int(port), rate=50, max_duration_s=120).start()
        time.sleep(1)
        body = {"version": "1.2.0", "force_reason": "bench run" if n else None}
        job = httpx.post(
            f"{url}/api/v1/environments/dev/deploy", json=body, headers=headers, timeout=30
        ).json()
        (result,) = wait_jobs(url, token, [job["id"]])
        load.stop()
        if result.get("ok"):
            raise SystemExit(f"the bad canary was not rolled back: {result}")
        deadline = time.monotonic() + 10
        while len(hook.got) <= n and time.monotonic() < deadline:
            time.sleep(0.01)
        events = [
            json.loads(x)
            for x in cli(root, env, "audit", "export").splitlines()
            if x.startswith("{")
        ]
        decision = [e for e in events if e["action"] == "analysis" and e["outcome"] == "rollback"]
        if len(hook.got) <= n or len(decision) <= n:
            raise SystemExit(f"run {n}: no decision or no message ({hook.got})")
        took.append(round(hook.got[n][0] - decision[n]["ts"], 3))
    hook.server.shutdown()
    return took


async def submits(url: str, token: str, clients: int) -> tuple[list[float], list[int], list[str]]:
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:

        async def one() -> tuple[float, int, str]:
            t0 = time.perf_counter()
            r = await http.post("/api/v1/environments/dev/deploy", json={"version": "1.1.0"})
            return (time.perf_counter() - t0) * 1000, r.status_code, r.json().get("id", "")

        done = await asyncio.gather(*(one() for _ in range(clients)))
    return [d[0] for d in done], [d[1] for d in done], [d[2] for d in done]


def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    name = f"rollwise_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="rollwise-bench-server-") as tmp:
            root = prepare_example(EXAMPLE, Path(tmp))
            env = {**os.environ, "ROLLWISE_DATABASE_URL": f"{PG}/{name}"}
            for v in ("1.0.0", "1.1.0"):
                (root / "VERSION").write_text(v + "\n")
                cli(root, env, "release", "create", "--version", v)
            cli(root, env, "deploy", "1.0.0", "--env", "dev")
            token = json.loads(
                cli(root, env, "token", "create", "bench", "--role", "deployer", "--json")
            )["token"]
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = (Path(tmp) / "server.log").open("w")
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rollwise",
                    "server",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "-C",
                    str(root),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for _ in range(200):
                try:
                    httpx.get(f"{url}/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rss_start = rss_mb(server.pid)
            t0 = time.monotonic()
            lat, rss, failed = asyncio.run(
                status_load(url, token, args.clients, args.requests, server.pid)
            )
            elapsed = time.monotonic() - t0
            sub, codes, jobs = asyncio.run(submits(url, token, args.clients))
            rss_after = rss_mb(server.pid)
            wait_jobs(url, token, [j for j in jobs if j])
            told = bad_canaries(root, env, url, token, args.bad_runs)
            result = {
                "benchmark": "server",
                "machine_cores": os.cpu_count(),
                "store": "postgresql",
                "clients": args.clients,
                "status_requests": args.requests,
                "status_failed": failed,
                "status_rps": round(args.requests / elapsed, 1),
                "status_p50_ms": pct(lat, 0.5),
                "status_p99_ms": pct(lat, 0.99),
                "status_mean_ms": round(statistics.fmean(lat), 2),
                "status_p99_target_ms": TARGET_STATUS_P99_MS,
                "status_p99_met": pct(lat, 0.99) <= TARGET_STATUS_P99_MS,
                "submit_p50_ms": pct(sub, 0.5),
                "submit_p99_ms": pct(sub, 0.99),
                "submit_statuses": sorted(set(codes)),
                "rss_mb_start": rss_start,
                "rss_mb_at": rss,
                "rss_mb": rss_after,
                "decision_to_notification_s": statistics.median(told),
                "decision_to_notification_worst_s": max(told),
                "decision_to_notification_runs_s": told,
                "decision_to_notification_target_s": TARGET_NOTIFICATION_S,
                "decision_to_notification_met": max(told) <= TARGET_NOTIFICATION_S,
                "load_average_after": list(os.getloadavg()),
                "command": "python bench/server.py --out bench/results/server.json",
            }
            server.terminate()
            server.wait(timeout=30)
            cli(root, env, "agent", "stop", "--env", "dev")
            return result
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--bad-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "server.json")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(args.out.read_text()) if args.out.exists() else {}
    # bench/dashboard.py's keys stay
    result = {**{k: v for k, v in kept.items() if k.startswith("decision_to_dashboard")}, **result}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
