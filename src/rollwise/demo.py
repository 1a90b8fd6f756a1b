"""`rollwise demo`: deploy order-sync 1.0.0, switch to 1.1.0 under load, roll back, report."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.audit import Event
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.errors import NotFound
from rollwise.events import EventBus
from rollwise.ports import free_port

ENV = "dev"
Log = Callable[[str], None] | None


def prepare_example(example: Path, work: Path) -> Path:
    """A copy of the example project in `work`, its router on a free loopback port."""
    if not (example / "rollwise.yaml").is_file():
        raise NotFound(f"no example app at {example.resolve()}",
                       hint="run from the repository root or pass --example PATH")
    project = work / "order-sync"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns(".rollwise", "*.db*"))
    cfg = yaml.safe_load((project / "rollwise.yaml").read_text())
    cfg["environments"] = {ENV: {"router": {"listen": f"127.0.0.1:{free_port()}"}}}
    (project / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


def run_demo(example: Path, rate: float, log: Log = None, hold_s: float = 3.0
             ) -> dict[str, Any]:
    say = log or (lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="rollwise-demo-"))
    switches: list[tuple[float, float]] = []

    def on_switch(ev: Event) -> None:
        if ev.action == "switch":
            ms = float(ev.data["switch_ms"])
            switches.append((ev.ts - ms / 1000, ms))

    bus = EventBus()
    bus.subscribe(on_switch)
    project = prepare_example(example, work)
    ctx = Context.open(project, bus)
    listen = ctx.env(ENV).router
    try:
        for v in ("1.0.0", "1.1.0"):
            (project / "VERSION").write_text(v + "\n")
            say(ops.create_release(ctx, v, f"demo release {v}").message)
        say(ops.deploy(ctx, ENV, "1.0.0").message)
        say(f"sending {rate:g} req/s of POST /orders to {listen.listen}")
        load = loadgen.Load(listen.host, listen.port, rate, max_duration_s=120).start()
        time.sleep(hold_s)
        deployed = ops.deploy(ctx, ENV, "1.1.0")
        say(deployed.message)
        time.sleep(hold_s)
        t0 = time.perf_counter()
        rolled = ops.rollback(ctx, ENV, None)
        rollback_ms = (time.perf_counter() - t0) * 1000
        say(rolled.message)
        time.sleep(hold_s)
        results = load.stop()
        stored = _orders_stored(ctx)
    finally:
        client = AgentClient(ctx.env_dir(ENV), ENV)
        if client.alive():
            client.call("shutdown")
    summary = loadgen.summarize(results)
    acked = sum(1 for r in results if r.status in (200, 201))
    (deploy_at, deploy_ms), (back_at, back_ms) = switches[-2], switches[-1]
    report = {
        **summary,
        "versions": ["1.0.0", "1.1.0", "1.0.0"],
        "switch_ms": round(
            loadgen.traffic_moved_ms(results, deploy_at, deploy_ms, "1.0.0", back_at), 2),
        "rollback_ms": round(rollback_ms, 1),
        "rollback_traffic_ms": round(
            loadgen.traffic_moved_ms(results, back_at, back_ms, "1.1.0"), 2),
        "orders_acknowledged": acked,
        "orders_stored": stored,
        "orders_lost": max(0, acked - stored),
        "rate": rate,
        "project": str(project),
    }
    if not report["requests_failed"]:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _orders_stored(ctx: Context) -> int:
    db = ctx.env_dir(ENV) / "shared" / "orders.db"
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


def render(r: dict[str, Any]) -> str:
    return "\n".join([
        "", "rollwise demo report",
        f"  versions           {' -> '.join(r['versions'])}",
        f"  requests sent      {r['requests_sent']} at {r['rate']:g} req/s",
        f"  requests failed    {r['requests_failed']}",
        f"  served by version  {r['by_version']}",
        f"  deploy switch      traffic on 1.1.0 in {r['switch_ms']} ms",
        f"  rollback           {r['rollback_ms']} ms in all; traffic back on 1.0.0 in "
        f"{r['rollback_traffic_ms']} ms",
        f"  orders             {r['orders_acknowledged']} acknowledged, {r['orders_stored']} "
        f"stored, {r['orders_lost']} lost",
        f"  latency            p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms",
    ])
