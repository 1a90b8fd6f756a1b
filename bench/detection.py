"""Detection benchmark: how fast a bad canary is stopped, how often a good one is.

Scenario (DESIGN.md target figures): a canary takes 10% of 50 req/s; the old release fails
0.1% of requests. Bad canary: it fails 5%. Good canary: it fails 0.1%, like the old one, for
a 10-minute rollout.

- simulation: rollwise's own detector (`RouterProvider`, the code that runs in a rollout, fed
  with counters drawn per one-second look: Poisson arrivals, binomial errors, the same
  latency distribution for both releases) over thousands of trials;
- fixed_interval_baseline: a Flagger-style policy on the same draws: every 60 s, fail the
  check when the canary's error rate over the interval is above 1% (success rate below 99%);
  roll back at the 5th failed check;
- live: the real agent, router and example app: `rollwise deploy` of a canary release that
  fails 5% of orders under 50 req/s, timed from the canary's switch to the rollback decision.

The top-level `median_s`, `p95_s` and `false_rollback_rate` are the simulation's (thousands
of trials); the live figures are reported beside them. Writes bench/results/detection.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rollwise import loadgen
from rollwise.agent.router import BUCKETS_MS
from rollwise.analysis import FAIL, Look
from rollwise.analysis.router_metrics import RouterProvider
from rollwise.audit import Event
from rollwise.config.schema import RouterAnalysisConfig
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.demo import prepare_example
from rollwise.errors import RollwiseError
from rollwise.events import EventBus

HERE = Path(__file__).resolve().parent
RATE, SHARE, STABLE_ERR, BAD_ERR = 50.0, 0.10, 0.001, 0.05
ROLLOUT_S = 600
EDGES = np.array([*BUCKETS_MS, math.inf])


def latency_probs() -> np.ndarray:
    """Bucket probabilities of a log-normal latency (median 8 ms), the same for both arms."""
    cdf = np.array(
        [
            0.5 * (1 + math.erf((math.log(e) - math.log(8.0)) / (0.5 * math.sqrt(2))))
            if math.isfinite(e)
            else 1.0
            for e in EDGES
        ]
    )
    return np.diff(np.concatenate([[0.0], cdf]))


class Arm:
    """Cumulative router counters of one release, grown one look at a time."""

    def __init__(self) -> None:
        self.requests, self.errors = 0, 0
        self.buckets = np.zeros(len(EDGES), dtype=np.int64)

    def grow(self, rng: np.random.Generator, rate: float, err: float, probs: np.ndarray) -> int:
        n = int(rng.poisson(rate))
        bad = int(rng.binomial(n, err))
        self.requests += n - bad
        self.errors += bad
        self.buckets += rng.multinomial(n - bad, probs)
        return bad

    def as_metrics(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status_5xx": self.errors,
            "conn_errors": 0,
            "buckets_ms": [*BUCKETS_MS, "inf"],
            "bucket_counts": self.buckets.tolist(),
        }


def one_trial(
    rng: np.random.Generator, canary_err: float, probs: np.ndarray, warmup_s: int = 60
) -> tuple[float | None, float | None]:
    """Seconds to a rollback decision by rollwise and by the fixed-interval policy."""
    stable, canary = Arm(), Arm()
    for _ in range(warmup_s):  # the old release served alone before the canary
        stable.grow(rng, RATE, STABLE_ERR, probs)
    provider = RouterProvider(
        RouterAnalysisConfig(),
        lambda: {"versions": {"old": stable.as_metrics(), "new": canary.as_metrics()}},
    )
    look = Look("bench", "new", "old")
    provider.measure(look)
    ours: float | None = None
    failed_checks, interval_n, interval_bad = 0, 0, 0
    for t in range(1, ROLLOUT_S + 1):
        stable.grow(rng, RATE * (1 - SHARE), STABLE_ERR, probs)
        before = canary.requests + canary.errors
        interval_bad += canary.grow(rng, RATE * SHARE, canary_err, probs)
        interval_n += canary.requests + canary.errors - before
        if ours is None and provider.measure(look).verdict == FAIL:
            ours = float(t)
        if t % 60 == 0:  # Flagger: interval 60 s, threshold 5, success rate >= 99%
            failed_checks += interval_n > 0 and interval_bad / interval_n > 0.01
            interval_n = interval_bad = 0
            if failed_checks >= 5:
                return ours, float(t)
        if ours is not None and canary_err == STABLE_ERR:
            return ours, None  # a false rollback: no need to go on
    return ours, None


def summarize(times: list[float | None], good: list[float | None]) -> dict[str, Any]:
    hit = np.array([t if t is not None else math.inf for t in times])
    return {
        "median_s": _num(np.median(hit)),
        "p95_s": _num(np.percentile(hit, 95)),
        "detected": int(np.isfinite(hit).sum()),
        "trials": len(times),
        "false_rollback_rate": round(sum(t is not None for t in good) / len(good), 5),
    }


def _num(x: float) -> float | None:
    return round(float(x), 2) if math.isfinite(x) else None


def simulate(trials: int, seed: int) -> dict[str, Any]:
    rng, probs = np.random.default_rng(seed), latency_probs()
    t0 = time.perf_counter()
    bad = [one_trial(rng, BAD_ERR, probs) for _ in range(trials)]
    good = [one_trial(rng, STABLE_ERR, probs) for _ in range(trials)]
    ours = summarize([b[0] for b in bad], [g[0] for g in good])
    base = summarize([b[1] for b in bad], [g[1] for g in good])
    return {
        "ours": ours,
        "fixed_interval": base,
        "trials": trials,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def live(trials: int, example: Path) -> dict[str, Any]:
    """Real rollouts of a canary failing 5% under 50 req/s (old release: 0.1%)."""
    work = Path(tempfile.mkdtemp(prefix="rollwise-detect-"))
    project = prepare_example(
        example,
        work,
        {
            "strategy": {"type": "canary", "steps": [10, 100], "pause_s": 300},
            "analysis": {"interval_s": 1.0},
        },
    )
    cfg = project / "rollwise.yaml"  # keep every release of the run
    cfg.write_text(cfg.read_text().replace("keep_releases: 5", f"keep_releases: {trials + 5}"))
    decisions: list[Event] = []
    switches: list[Event] = []
    bus = EventBus()
    bus.subscribe(
        lambda e: (
            decisions.append(e)
            if e.action == "analysis"
            else switches.append(e)
            if e.action == "switch"
            else None
        )
    )
    ctx = Context.open(project, bus)
    for v, err in (("1.0.0", STABLE_ERR), *((f"1.1.{n}", BAD_ERR) for n in range(trials))):
        (project / "VERSION").write_text(v)
        (project / "faults.json").write_text(json.dumps({"order_error_rate": err}))
        ops.create_release(ctx, v, None)
    times: list[float | None] = []
    try:
        ops.deploy(ctx, "dev", "1.0.0")
        r = ctx.env("dev").router
        load = loadgen.Load(r.host, r.port, RATE, max_duration_s=trials * 330 + 60).start()
        time.sleep(10)
        for n in range(trials):
            decisions.clear()
            switches.clear()
            with contextlib.suppress(RollwiseError):  # rolled back: what is measured
                ops.deploy(ctx, "dev", f"1.1.{n}")
            fail = next((e for e in decisions if e.outcome == "rollback"), None)
            times.append(round(fail.ts - switches[0].ts, 2) if fail and switches else None)
            print(f"live trial {n + 1}/{trials}: {times[-1]} s", flush=True)
        load.stop()
    finally:
        from rollwise.agent.client import AgentClient

        client = AgentClient(ctx.env_dir("dev"), "dev")
        if client.alive():
            client.call("shutdown")
        shutil.rmtree(work, ignore_errors=True)
    hit = np.array([t if t is not None else math.inf for t in times])
    return {
        "trials": trials,
        "times_s": times,
        "median_s": _num(np.median(hit)),
        "p95_s": _num(np.percentile(hit, 95)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000, help="simulated rollouts per case")
    ap.add_argument("--live", type=int, default=8, help="live canary rollouts (0: none)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--example", type=Path, default=HERE.parent / "examples" / "order-sync")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "detection.json")
    args = ap.parse_args()
    sim = simulate(args.trials, args.seed)
    result = {
        "scenario": {
            "rate": RATE,
            "canary_share": SHARE,
            "stable_error_rate": STABLE_ERR,
            "bad_canary_error_rate": BAD_ERR,
            "rollout_s": ROLLOUT_S,
        },
        **{k: sim["ours"][k] for k in ("median_s", "p95_s", "false_rollback_rate")},
        "fixed_interval_baseline": {
            k: sim["fixed_interval"][k] for k in ("median_s", "p95_s", "false_rollback_rate")
        },
        "simulation": sim,
        "live": live(args.live, args.example) if args.live else None,
    }
    base, ours = result["fixed_interval_baseline"]["median_s"], result["median_s"]
    result["median_speedup"] = round(base / ours, 1) if base and ours else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
