"""Drill benchmark: the four drill scenarios on the example app under load, each run a few
times, with the times rollwise measured (detection, traffic back, restore), the requests
that failed and the rows lost, against the objective "restore <= 5 min" and DORA's elite
time to restore (< 1 h).

Setup: order-sync 1.0.0 live on the example's `dev` environment (canary 10% -> 50% -> 100%, 10 s a
step, router analysis every 0.5 s, a verify check, SQLite), 1.1.0 released (adds
orders.channel). Scenarios, through `rollwise.controller.drills.run` (what `rollwise drill run`
calls): bad-canary (error-rate 0.3), manual-rollback (1.1.0 live for --hold seconds of
writes, then rolled back), failing-migration (1.1.0 plus a migration that fails halfway),
alert (error-rate 0.3, analysis in dry run; the drill's error-rate rule posts to the
webhook). Writes bench/results/drill.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rollwise.agent.client import AgentClient
from rollwise.controller import drills, ops
from rollwise.controller.context import Context
from rollwise.demo import prepare_example

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "order-sync"
ENV = "dev"
OBJECTIVE_S = 300.0
DORA_ELITE_S = 3600.0
SETTINGS = {
    "strategy": {"type": "canary", "steps": [10, 50, 100], "pause_s": 10, "bake_s": 2},
    "analysis": {"interval_s": 0.5, "checks_every_s": 1},
    "database": {"url": "sqlite:///{shared}/orders.db"},
    "verify": [
        {
            "type": "http",
            "name": "order sync lag",
            "url": "{router}/status",
            "json": {"sync.lag_s": "< 60"},
        }
    ],
    "objectives": {"restore_s": OBJECTIVE_S},
}
CHANNEL = (
    "ALTER TABLE orders ADD COLUMN channel TEXT;\n",
    "ALTER TABLE orders DROP COLUMN channel;\n",
)
KEYS = ("detect_s", "traffic_back_s", "restore_s", "requests_failed", "rows_lost")


def setup(work: Path) -> Context:
    project = prepare_example(EXAMPLE, work, SETTINGS)
    ctx = Context.open(project)
    ops.create_release(ctx, "1.0.0", "bench")
    (project / "migrations" / "0002_channel.up.sql").write_text(CHANNEL[0])
    (project / "migrations" / "0002_channel.down.sql").write_text(CHANNEL[1])
    (project / "VERSION").write_text("1.1.0\n")
    ops.create_release(ctx, "1.1.0", "bench: adds orders.channel")
    ops.deploy(ctx, ENV, "1.0.0")
    return ctx


def run(rate: float, runs: int, hold_s: float, log: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rollwise-bench-drill-"))
    ctx = setup(work)
    say = print if log else (lambda _: None)
    out: dict[str, Any] = {}
    try:
        for scenario in ("bad-canary", "manual-rollback", "failing-migration", "alert"):
            results = []
            for _ in range(runs):
                o = drills.Options(load_rps=rate, hold_s=hold_s)
                results.append(drills.run(ctx, ENV, scenario, o, say))
                print(f"{scenario}: {drills.summary(results[-1])}", flush=True)
            out[scenario.replace("-", "_")] = summarize(results)
    finally:
        client = AgentClient(ctx.env_dir(ENV), ENV)
        if client.alive():
            client.call("shutdown")
    shutil.rmtree(work, ignore_errors=True)
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run's figures (by restore time), every run's, and whether each passed."""
    ordered = sorted(results, key=lambda r: r["restore_s"] if r["restore_s"] is not None else 1e9)
    median = ordered[(len(ordered) - 1) // 2]
    return {
        **{k: median[k] for k in KEYS},
        "detected_by": median["detected_by"],
        "restore_s_max": max((r["restore_s"] or 0.0) for r in results),
        "requests_sent": median["requests_sent"],
        "passed": all(r["passed"] for r in results),
        "runs": [{k: r[k] for k in (*KEYS, "passed", "id")} for r in results],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=100.0, help="load, requests per second")
    p.add_argument("--runs", type=int, default=3, help="runs of each scenario")
    p.add_argument("--hold", type=float, default=3.0, help="seconds of load before the fault")
    p.add_argument("--out", type=Path, default=HERE / "results" / "drill.json")
    p.add_argument("--log", action="store_true", help="print each drill's progress")
    a = p.parse_args()
    t0 = time.time()
    scenarios = run(a.rate, max(1, min(a.runs, 10)), a.hold, a.log)
    worst = max(s["restore_s_max"] for s in scenarios.values())
    result = {
        "scenarios": scenarios,
        "objective_restore_s": OBJECTIVE_S,
        "dora_elite_restore_s": DORA_ELITE_S,
        "worst_restore_s": worst,
        "meets_objective": worst <= OBJECTIVE_S,
        "meets_dora_elite": worst < DORA_ELITE_S,
        "all_passed": all(s["passed"] for s in scenarios.values()),
        "load_rps": a.rate,
        "runs": a.runs,
        "setup": {k: v for k, v in SETTINGS.items() if k != "verify"},
        "median_restore_s": statistics.median(s["restore_s"] for s in scenarios.values()),
        "took_s": round(time.time() - t0, 1),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "command": f"python bench/drill.py --rate {a.rate:g} --runs {a.runs} --hold {a.hold:g}",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scenarios"}, indent=2))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
