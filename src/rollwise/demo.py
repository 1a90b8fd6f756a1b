"""`rollwise demo`: order-sync 1.0.0 serving under load; 1.1.0 (fails 8% of orders) goes
out as a canary and is rolled back by analysis; 1.1.1 (fixed) is promoted to 100%. Both
1.1.x releases add a column (migration 0002, filled on write): the rollback of 1.1.0 runs its
down migration and keeps every order."""

from __future__ import annotations

import json
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
from rollwise.errors import NotFound, RollwiseError
from rollwise.events import EventBus
from rollwise.ports import free_port

ENV = "dev"
BAD, FIXED = "1.1.0", "1.1.1"
Log = Callable[[str], None] | None
STRATEGY = {"type": "canary", "steps": [10, 50, 100], "pause_s": 6, "bake_s": 2}
ANALYSIS = {"interval_s": 0.5}
DATABASE = {"url": "sqlite:///{shared}/orders.db"}
CHANNEL_UP = "ALTER TABLE orders ADD COLUMN channel TEXT;\n"
CHANNEL_DOWN = "ALTER TABLE orders DROP COLUMN channel;\n"


def prepare_example(example: Path, work: Path, env: dict[str, Any] | None = None) -> Path:
    """A copy of the example project in `work` with one environment, `dev`, its router on a
    free loopback port; `env` adds settings to it."""
    if not (example / "rollwise.yaml").is_file():
        raise NotFound(
            f"no example app at {example.resolve()}",
            hint="run from the repository root or pass --example PATH",
        )
    project = work / "order-sync"
    shutil.copytree(
        example, project, ignore=shutil.ignore_patterns(".rollwise", "*.db*", "faults.json")
    )
    cfg = yaml.safe_load((project / "rollwise.yaml").read_text())
    cfg["environments"] = {ENV: {"router": {"listen": f"127.0.0.1:{free_port()}"}, **(env or {})}}
    (project / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


def make_releases(ctx: Context, project: Path, say: Callable[[str], None]) -> None:
    migrations = project / "migrations"
    for v, faults in (("1.0.0", None), (BAD, {"order_error_rate": 0.08}), (FIXED, None)):
        if v != "1.0.0":  # 1.1.x add a column
            (migrations / "0002_channel.up.sql").write_text(CHANNEL_UP)
            (migrations / "0002_channel.down.sql").write_text(CHANNEL_DOWN)
        (project / "VERSION").write_text(v + "\n")
        (project / "faults.json").unlink(missing_ok=True)
        if faults:
            (project / "faults.json").write_text(json.dumps(faults))
        say(ops.create_release(ctx, v, f"demo release {v}").message)
    (project / "faults.json").unlink(missing_ok=True)


class Recorder:
    """Event-bus subscriber keeping what the report needs: switches and decisions."""

    def __init__(self) -> None:
        self.switches: list[tuple[float, float, dict[str, int]]] = []
        self.decisions: list[Event] = []

    def __call__(self, ev: Event) -> None:
        if ev.action == "switch":
            ms = float(ev.data["switch_ms"])
            self.switches.append((ev.ts - ms / 1000, ms, dict(ev.data.get("weights", {}))))
        elif ev.action == "analysis":
            self.decisions.append(ev)


def run_demo(example: Path, rate: float, log: Log = None, hold_s: float = 3.0) -> dict[str, Any]:
    say = log or (lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="rollwise-demo-"))
    seen = Recorder()
    bus = EventBus()
    bus.subscribe(seen)
    project = prepare_example(
        example, work, {"strategy": STRATEGY, "analysis": ANALYSIS, "database": DATABASE}
    )
    ctx = Context.open(project, bus)
    listen = ctx.env(ENV).router
    try:
        make_releases(ctx, project, say)
        say(ops.deploy(ctx, ENV, "1.0.0").message)
        say(f"sending {rate:g} req/s of POST /orders to {listen.listen}")
        load = loadgen.Load(listen.host, listen.port, rate, max_duration_s=180).start()
        time.sleep(hold_s)
        say(f"canary {BAD}: steps {STRATEGY['steps']}, {STRATEGY['pause_s']} s each")
        t_bad = time.time()
        try:
            ops.deploy(ctx, ENV, BAD)
            caught = None
        except RollwiseError as e:
            caught = e.message.splitlines()[0]
            say(f"{BAD} stopped: {caught}")
        t_back = time.time()
        schema_after_rollback = _columns(ctx)
        time.sleep(hold_s)
        say(f"canary {FIXED}")
        say(ops.deploy(ctx, ENV, FIXED).message)
        time.sleep(hold_s)
        results = load.stop()
        stored = _orders_stored(ctx)
        schema_now = _columns(ctx)
        live = ops.status(ctx, ENV)["environments"][ENV]["live_version"]
    finally:
        client = AgentClient(ctx.env_dir(ENV), ENV)
        if client.alive():
            client.call("shutdown")
    report = _report(results, seen, t_bad, t_back, caught, stored, live, rate)
    report |= {
        "project": str(project),
        "schema_after_rollback": schema_after_rollback,
        "schema_now": schema_now,
    }
    if not report["requests_failed_by_switch"]:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _report(
    results: list[loadgen.Result],
    seen: Recorder,
    t_bad: float,
    t_back: float,
    caught: str | None,
    stored: int,
    live: str,
    rate: float,
) -> dict[str, Any]:
    summary = loadgen.summarize(results)
    acked = sum(1 for r in results if r.status in (200, 201))
    from_bad = [r for r in results if r.version == BAD and r.status >= 500]
    first_canary = next(s for s in seen.switches if s[0] >= t_bad - 1)
    fail = next((e for e in seen.decisions if e.outcome == "rollback" and e.version == BAD), None)
    back = next(s for s in seen.switches if s[0] >= (fail.ts if fail else t_back) - 0.05)
    return {
        **summary,
        "versions": ["1.0.0", f"{BAD} (canary, rolled back)", f"{FIXED} (promoted)"],
        "live_version": live,
        "rolled_back": caught is not None,
        "rollback_reason": fail.reason if fail else caught,
        "detection_s": round(fail.ts - first_canary[0], 2) if fail else None,
        "rollback_traffic_ms": round(loadgen.traffic_moved_ms(results, back[0], back[1], BAD), 2),
        "requests_failed_by_bad_release": len(from_bad),
        "requests_failed_by_switch": summary["requests_failed"] - len(from_bad),
        "orders_acknowledged": acked,
        "orders_stored": stored,
        "orders_lost": max(0, acked - stored),
        "rate": rate,
    }


def _columns(ctx: Context) -> list[str]:
    with sqlite3.connect(ctx.env_dir(ENV) / "shared" / "orders.db") as conn:
        return [str(r[1]) for r in conn.execute("PRAGMA table_info(orders)")]


def _orders_stored(ctx: Context) -> int:
    db = ctx.env_dir(ENV) / "shared" / "orders.db"
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


def render(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "",
            "rollwise demo report",
            f"  versions           {' -> '.join(r['versions'])}",
            f"  live now           {r['live_version']}",
            f"  requests sent      {r['requests_sent']} at {r['rate']:g} req/s",
            f"  requests failed    {r['requests_failed']}: {r['requests_failed_by_bad_release']} "
            f"returned by {BAD} itself, {r['requests_failed_by_switch']} caused by switching",
            f"  served by version  {r['by_version']}",
            f"  canary {BAD}      stopped {r['detection_s']} s after it took traffic: "
            f"{r['rollback_reason']}",
            f"  traffic back       on 1.0.0 in {r['rollback_traffic_ms']} ms",
            f"  orders             {r['orders_acknowledged']} acknowledged, {r['orders_stored']} "
            f"stored, {r['orders_lost']} lost",
            f"  schema             after the rollback: {', '.join(r['schema_after_rollback'])}; "
            f"now: {', '.join(r['schema_now'])}",
            f"  latency            p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms",
        ]
    )
