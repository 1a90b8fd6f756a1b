"""Router metrics: the new release against the old one, from the router's own counters.

Each look reads the router's cumulative per-version counters and feeds what changed since
the last look to sequential tests: errors (5xx and connection errors), and slow requests
for each configured latency quantile (slower than that quantile of the old release, fixed
once the old release has served enough requests; never below `latency_min_ms`, so
sub-millisecond differences are not judged), after the new release's first
`latency_warmup_requests` (a new process warming up is not a slow release). The
false-alarm budget `alpha` is split:
80% to the error test, 20% shared by the latency tests (a slowdown shows in hundreds of
requests at once; errors are rare events and need every bit of it). Absolute guard rail: the new
release's error rate above `max_error_rate` fails at once once it has `min_requests`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rollwise.analysis.base import FAIL, INCONCLUSIVE, PASS, Look, Measurement
from rollwise.analysis.sequential import RatioTest, Window, bucket_index_at
from rollwise.config.schema import RouterAnalysisConfig

LATENCY_BASELINE_REQUESTS = 200
ERRORS_ALPHA_SHARE = 0.8  # of alpha, for the error test; the latency tests share the rest


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, v: dict[str, Any] | None) -> Counters:
        if not v:
            return cls()
        return cls(
            int(v.get("requests", 0)) + int(v.get("conn_errors", 0)),
            int(v.get("status_5xx", 0)) + int(v.get("conn_errors", 0)),
            [int(c) for c in v.get("bucket_counts", [])],
        )

    def minus(self, o: Counters) -> Counters:
        b = [a - (o.buckets[i] if i < len(o.buckets) else 0) for i, a in enumerate(self.buckets)]
        return Counters(max(0, self.requests - o.requests), max(0, self.errors - o.errors), b)


def slow_count(buckets: list[int], above: int) -> int:
    return sum(buckets[above + 1 :])


@dataclass
class RouterProvider:
    cfg: RouterAnalysisConfig
    read: Callable[[], dict[str, Any]]  # the router's metrics()
    kind: str = "router"
    name: str = "router metrics"
    errors: RatioTest = field(init=False)
    slow: list[RatioTest] = field(init=False)
    last: dict[str, Counters] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)  # the last read, for live views
    stable_hist: list[int] = field(default_factory=list)
    slow_above: list[int] | None = None  # bucket index per quantile, once the baseline is known
    bounds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        quantiles = self.cfg.latency_quantiles if self.cfg.latency else []
        share = ERRORS_ALPHA_SHARE if quantiles else 1.0
        self.errors = RatioTest(self.cfg.alpha * share)
        self.slow = [RatioTest(self.cfg.alpha * (1 - share) / len(quantiles)) for _ in quantiles]

    def measure(self, look: Look) -> Measurement:
        try:
            versions = self.read().get("versions", {})
        except Exception as e:  # an unreadable router is no evidence either way
            return Measurement(self.kind, self.name, INCONCLUSIVE, f"router unreadable: {e}")
        self.versions = versions
        bounds = next((v.get("buckets_ms") for v in versions.values() if v.get("buckets_ms")), None)
        self.bounds = [float(b) for b in bounds[:-1]] if bounds else []
        c = self._delta(versions, look.canary)
        s = self._delta(versions, look.stable) if look.stable else Counters()
        return self._judge(c, s, look)

    def _delta(self, versions: dict[str, Any], version: str) -> Counters:
        now = Counters.of(versions.get(version))
        before = self.last.get(version)
        self.last[version] = now
        return now.minus(before) if before is not None else Counters(0, 0, [])

    def _judge(self, c: Counters, s: Counters, look: Look) -> Measurement:
        self.errors.update(Window(c.requests, c.errors, s.requests, s.errors))
        latency = self._latency(c, s)
        n, bad = self.errors.canary_n, self.errors.canary_bad
        rate, stable_rate = self.errors.rates()
        numbers: dict[str, Any] = {
            "canary_requests": n,
            "canary_errors": bad,
            "canary_error_rate": _r(rate),
            "stable_requests": self.errors.stable_n,
            "stable_errors": self.errors.stable_bad,
            "stable_error_rate": _r(stable_rate),
            "e_value": _r(self.errors.e_value),
            "threshold": _r(self.errors.threshold),
            **latency,
        }
        if self.errors.rejected:
            return Measurement(
                self.kind,
                self.name,
                FAIL,
                f"error rate {_pct(rate)} vs {_pct(stable_rate)} on the old "
                f"release (sequential test {self.errors.e_value:.0f} >= "
                f"{self.errors.threshold:.0f})",
                numbers,
            )
        if n >= self.cfg.min_requests and rate is not None and rate > self.cfg.max_error_rate:
            return Measurement(
                self.kind,
                self.name,
                FAIL,
                f"error rate {_pct(rate)} above the guard rail "
                f"{_pct(self.cfg.max_error_rate)} ({bad} of {n})",
                numbers,
            )
        for q, (t, ms) in zip(self.cfg.latency_quantiles, self._slow_tests(), strict=False):
            if t.rejected:
                return Measurement(
                    self.kind,
                    self.name,
                    FAIL,
                    f"{t.canary_bad} of {t.canary_n} requests slower than {ms} ms (the old "
                    f"release's p{q * 100:g}, at least latency_min_ms) vs {t.stable_bad} of "
                    f"{t.stable_n} on the old "
                    f"release (sequential test {t.e_value:.0f} >= {t.threshold:.0f})",
                    numbers,
                )
        if n < self.cfg.min_requests:
            idle = (
                ""
                if n
                else " (no request reached the new release: is anything sending "
                "traffic through the router?)"
            )
            return Measurement(
                self.kind,
                self.name,
                INCONCLUSIVE,
                f"too few samples: {n} of {self.cfg.min_requests} requests{idle}",
                numbers,
            )
        return Measurement(
            self.kind, self.name, PASS, f"error rate {_pct(rate)} vs {_pct(stable_rate)}", numbers
        )

    def _slow_tests(self) -> list[tuple[RatioTest, float]]:
        if self.slow_above is None:
            return []
        return [
            (t, self.bounds[i])
            for t, i in zip(self.slow, self.slow_above, strict=True)
            if i < len(self.bounds)
        ]

    def _latency(self, c: Counters, s: Counters) -> dict[str, Any]:
        """Fix the slow thresholds from the old release's histogram, then count slow ones."""
        if not self.slow or not self.bounds:
            return {}
        if self.slow_above is None:
            self.stable_hist = [
                a + b
                for a, b in zip(self.stable_hist or [0] * len(s.buckets), s.buckets, strict=False)
            ]
            if sum(self.stable_hist) >= LATENCY_BASELINE_REQUESTS:
                floor = next(
                    (i for i, b in enumerate(self.bounds) if b >= self.cfg.latency_min_ms),
                    len(self.bounds),
                )
                self.slow_above = [
                    max(bucket_index_at(self.stable_hist, q) or 0, floor)
                    for q in self.cfg.latency_quantiles
                ]
            return {"latency": "measuring the old release's latency"}
        if self.errors.canary_n - c.requests < self.cfg.latency_warmup_requests:
            return {
                "latency": f"the new release's first {self.cfg.latency_warmup_requests} "
                "requests are not judged for latency"
            }
        for t, i in zip(self.slow, self.slow_above, strict=True):
            if i < len(self.bounds):
                t.update(
                    Window(
                        c.requests, slow_count(c.buckets, i), s.requests, slow_count(s.buckets, i)
                    )
                )
        return {
            "latency": [
                {
                    "slow_ms": ms,
                    "canary_slow": t.canary_bad,
                    "canary": t.canary_n,
                    "stable_slow": t.stable_bad,
                    "stable": t.stable_n,
                    "e_value": _r(t.e_value),
                }
                for t, ms in self._slow_tests()
            ]
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"
