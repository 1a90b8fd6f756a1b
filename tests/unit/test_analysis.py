"""Analysis logic: decisions, the sequential test, providers fed with plain counters."""

from __future__ import annotations

import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from rollwise.analysis import (
    ADVANCE,
    CONTINUE,
    FAIL,
    INCONCLUSIVE,
    PASS,
    PAUSE,
    ROLLBACK,
    Decision,
    Look,
    Measurement,
    decide,
)
from rollwise.analysis.checks import CommandProvider, HttpProvider, compare, json_path
from rollwise.analysis.prometheus import render_query, scalar
from rollwise.analysis.router_metrics import RouterProvider
from rollwise.analysis.sequential import RatioTest, Window, quantile_ms
from rollwise.api.alerts import AlertmanagerPayload, Trigger, triggers
from rollwise.config.schema import (
    CommandCheck,
    HttpCheck,
    RouterAnalysisConfig,
    StrategyConfig,
)


def m(verdict: str, name: str = "x") -> Measurement:
    return Measurement("test", name, verdict, f"{name} {verdict}")


def test_decide_any_failure_rolls_back_and_inconclusive_pauses_only_at_step_end():
    assert decide([m(PASS), m(FAIL, "y")], step_over=False) == Decision(ROLLBACK, "y: y fail")
    assert decide([m(PASS), m(INCONCLUSIVE)], step_over=False) == Decision(CONTINUE, "watching")
    assert decide([m(PASS), m(INCONCLUSIVE)], step_over=True) == Decision(
        PAUSE, "x: x inconclusive"
    )
    assert decide([m(PASS), m(PASS, "y")], step_over=True) == Decision(ADVANCE, "all checks passed")
    assert decide([], step_over=True) == Decision(PAUSE, "no measurement was made")


def test_ratio_test_without_errors_has_no_evidence_and_canary_errors_reject():
    t = RatioTest(alpha=0.01)
    t.update(Window(100, 0, 900, 0))
    assert t.e_value == pytest.approx(1.0) and not t.rejected
    for _ in range(4):
        t.update(Window(10, 1, 90, 0))
    assert t.rejected and t.e_value >= t.threshold == pytest.approx(100)


def test_ratio_test_errors_on_stable_only_are_evidence_against_the_canary_being_worse():
    t = RatioTest(alpha=0.01)
    t.update(Window(10, 0, 90, 5))
    assert t.e_value < 1


def test_ratio_test_rejects_equal_releases_rarely_however_often_it_looks():
    rng = random.Random(7)
    false = 0
    for _ in range(300):
        t = RatioTest(alpha=0.05)
        for _ in range(200):  # 200 looks, 10% canary share, both fail 2%
            c, s = 10, 90
            t.update(
                Window(
                    c,
                    sum(rng.random() < 0.02 for _ in range(c)),
                    s,
                    sum(rng.random() < 0.02 for _ in range(s)),
                )
            )
            if t.rejected:
                false += 1
                break
    assert false / 300 <= 0.05


def test_quantile_of_a_histogram_is_the_bucket_upper_bound():
    assert quantile_ms([1, 2, 5], [10, 80, 10, 0], 0.5) == 2
    assert quantile_ms([1, 2, 5], [0, 0, 0, 0], 0.5) is None


class Counters:
    def __init__(self) -> None:
        self.v: dict[str, dict[str, Any]] = {}

    def add(self, version: str, n: int, bad: int, buckets: list[int] | None = None) -> None:
        cur = self.v.setdefault(
            version,
            {
                "requests": 0,
                "status_5xx": 0,
                "conn_errors": 0,
                "buckets_ms": [1, 2, 5, "inf"],
                "bucket_counts": [0, 0, 0, 0],
            },
        )
        cur["requests"] = int(cur["requests"]) + n
        cur["status_5xx"] = int(cur["status_5xx"]) + bad
        cur["bucket_counts"] = [
            a + b for a, b in zip(cur["bucket_counts"], buckets or [0, n, 0, 0], strict=True)
        ]

    def read(self) -> dict[str, object]:
        return {"versions": self.v}


LOOK = Look("prod", "1.1.0", "1.0.0")


def test_router_provider_is_inconclusive_with_few_samples_then_passes_then_fails():
    c = Counters()
    p = RouterProvider(RouterAnalysisConfig(min_requests=50, latency=False), c.read)
    assert p.measure(LOOK).verdict == INCONCLUSIVE  # first look: the baseline
    c.add("1.0.0", 30, 0)
    idle = p.measure(LOOK)
    assert idle.verdict == INCONCLUSIVE and idle.reason == (
        "too few samples: 0 of 50 requests (no request reached the new release: is anything "
        "sending traffic through the router?)"
    )
    c.add("1.1.0", 20, 0)
    c.add("1.0.0", 180, 0)
    got = p.measure(LOOK)
    assert got.verdict == INCONCLUSIVE and "too few samples: 20 of 50" in got.reason
    c.add("1.1.0", 40, 0)
    c.add("1.0.0", 360, 1)
    assert p.measure(LOOK).verdict == PASS
    for _ in range(5):
        c.add("1.1.0", 10, 1)
        c.add("1.0.0", 90, 0)
        got = p.measure(LOOK)
    assert got.verdict == FAIL and got.numbers["canary_errors"] == 5
    assert got.numbers["e_value"] >= got.numbers["threshold"]


def test_router_provider_guard_rail_and_unreadable_router():
    c = Counters()
    p = RouterProvider(
        RouterAnalysisConfig(min_requests=20, max_error_rate=0.05, latency=False), c.read
    )
    p.measure(LOOK)
    c.add("1.1.0", 40, 4)
    got = p.measure(Look("prod", "1.1.0", None))  # solo: no old release traffic (bake)
    assert got.verdict == FAIL and "guard rail" in got.reason

    def broken() -> dict[str, object]:
        raise OSError("agent socket gone")

    assert RouterProvider(RouterAnalysisConfig(), broken).measure(LOOK).verdict == INCONCLUSIVE


def slower_canary(cfg: RouterAnalysisConfig, canary: list[int]) -> Measurement:
    c = Counters()
    p = RouterProvider(cfg, c.read)
    p.measure(LOOK)
    c.add("1.0.0", 300, 0, [200, 100, 0, 0])  # baseline: p90 in the 2 ms bucket
    p.measure(LOOK)
    for _ in range(10):
        c.add("1.0.0", 90, 0, [60, 30, 0, 0])
        c.add("1.1.0", 10, 0, canary)
        got = p.measure(LOOK)
    return got


def test_router_provider_detects_a_slower_canary_above_latency_min_ms():
    fine = RouterAnalysisConfig(latency_quantiles=[0.9], min_requests=10, latency_min_ms=0)
    got = slower_canary(fine, [0, 2, 8, 0])  # most in (2, 5] ms
    assert got.verdict == FAIL and "slower than 2.0 ms" in got.reason
    default = RouterAnalysisConfig(latency_quantiles=[0.9], min_requests=10)
    assert default.latency_min_ms == 5
    assert slower_canary(default, [0, 2, 8, 0]).verdict == PASS  # under 5 ms: not judged
    got = slower_canary(default, [0, 2, 0, 8])  # most above 5 ms
    assert got.verdict == FAIL and "slower than 5.0 ms" in got.reason


def test_a_new_release_slow_only_while_warming_up_is_not_judged_for_latency():
    def cold_start(warmup: int) -> Measurement:
        c = Counters()
        p = RouterProvider(
            RouterAnalysisConfig(
                latency_quantiles=[0.5], min_requests=10, latency_warmup_requests=warmup
            ),
            c.read,
        )
        p.measure(LOOK)
        c.add("1.0.0", 300, 0, [0, 150, 140, 10])  # baseline: p50 in the 5 ms bucket
        p.measure(LOOK)
        for look in range(10):
            c.add("1.0.0", 100, 0, [0, 50, 45, 5])
            c.add("1.1.0", 13, 0, [0, 0, 3, 10] if look < 3 else [0, 7, 6, 0])
            got = p.measure(LOOK)
        return got

    assert cold_start(0).verdict == FAIL  # its first 39 requests, mostly slow, are judged
    got = cold_start(50)
    assert got.verdict == PASS, got.reason
    assert got.numbers["latency"][0]["canary"] == 13 * 6  # the windows after the first 50


def test_prometheus_result_parsing_and_query_rendering():
    assert (
        scalar({"data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.5"]}]}})
        == 0.5
    )
    assert scalar({"data": {"resultType": "vector", "result": []}}) is None
    assert scalar({"data": {"resultType": "scalar", "result": [1, "3"]}}) == 3.0
    with pytest.raises(ValueError, match="aggregate"):
        scalar(
            {"data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}}
        )
    assert (
        render_query('x{version="{canary}",env="{env}"}', LOOK) == 'x{version="1.1.0",env="prod"}'
    )


def test_json_expectations():
    assert json_path({"sync": {"lag_s": 3}}, "sync.lag_s") == 3
    assert json_path({"a": [{"b": 1}]}, "a.0.b") == 1
    with pytest.raises(KeyError):
        json_path({}, "sync.lag_s")
    assert compare(3, "< 60") and not compare(61, "< 60")
    assert compare(True, "== true") and compare("ok", '== "ok"')
    assert not compare("x", "< 3")


def test_command_check_exit_codes(tmp_path):
    def run(cmd: str) -> str:
        return (
            CommandProvider(CommandCheck(type="command", name="c", run=cmd, timeout_s=2), tmp_path)
            .measure(LOOK)
            .verdict
        )

    assert run("true") == PASS
    assert run("exit 1") == FAIL
    assert run("exit 75") == INCONCLUSIVE
    assert run("sleep 5") == INCONCLUSIVE
    assert run('test "$ROLLWISE_VERSION" = 1.1.0') == PASS


def test_alertmanager_payload_names_the_environments_to_roll_back():
    payload = AlertmanagerPayload.model_validate(
        {
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "Errors", "rollwise_env": "prod"},
                    "annotations": {"summary": "5xx"},
                },
                {"status": "resolved", "labels": {"env": "staging"}},
                {"status": "firing", "labels": {"env": "dev", "app": "someone-else"}},
                {"status": "firing", "labels": {"environment": "prod"}},
                {"status": "firing", "labels": {"alertname": "NoEnv"}},
            ],
        }
    )
    assert triggers(payload, "order-sync") == [Trigger("prod", "alert Errors: 5xx")]


def test_strategy_steps_must_increase_and_end_at_100():
    assert [s.weight for s in StrategyConfig(steps=[5, 50, 100]).steps] == [5, 50, 100]
    for bad in ([10, 5, 100], [10, 50], [0, 100], [50, 50, 100]):
        with pytest.raises(ValueError):
            StrategyConfig(steps=bad)


class RateLimited(BaseHTTPRequestHandler):
    """429 on the first request, then 200 with a JSON body."""

    hits: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.hits.append(self.path)
        first = len(self.hits) == 1
        body = b'{"token": {"valid": true}}'
        self.send_response(429 if first else 200)
        if first:
            self.send_header("retry-after", "0.1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def limited_server():
    RateLimited.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RateLimited)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_check_backs_off_on_429_and_never_repeats_a_non_idempotent_call(limited_server):
    def check(idempotent: bool) -> HttpCheck:
        return HttpCheck.model_validate(
            {
                "type": "http",
                "name": "token",
                "url": "{router}/verify",
                "method": "POST",
                "idempotent": idempotent,
                "json": {"token.valid": "== true"},
            }
        )

    look = Look("prod", "1.1.0", "1.0.0", router_url=limited_server)
    waits: list[float] = []
    got = HttpProvider(check(True), sleep=waits.append).measure(look)
    assert got.verdict == PASS and waits == [0.1] and len(RateLimited.hits) == 2
    RateLimited.hits = []
    got = HttpProvider(check(False), sleep=waits.append).measure(look)
    assert got.verdict == INCONCLUSIVE and "429" in got.reason and len(RateLimited.hits) == 1


def test_an_alert_is_acted_on_once():
    from rollwise.api.alerts import already_handled, parse_time

    assert parse_time("2026-11-23T10:00:00.123456789Z") == pytest.approx(1795428000.123456)
    assert parse_time("0001-01-01T00:00:00Z") is None and parse_time(None) is None
    rollback = {"kind": "rollback", "created_at": 1000.0}
    assert already_handled(rollback, Trigger("prod", "x", 900.0), now=2000.0)
    assert not already_handled(rollback, Trigger("prod", "x", 1100.0), now=2000.0)
    assert not already_handled(
        {"kind": "deploy", "created_at": 1000.0}, Trigger("prod", "x", 900.0), now=2000.0
    )
    assert already_handled(rollback, Trigger("prod", "x"), now=1500.0)  # cooldown
    assert not already_handled(rollback, Trigger("prod", "x"), now=5000.0)
    assert not already_handled(None, Trigger("prod", "x"), now=5000.0)


def test_backoff_doubles_honours_retry_after_and_is_capped():
    import httpx

    from rollwise.retry import backoff_s

    assert [backoff_s(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(0, httpx.Response(429, headers={"retry-after": "7"})) == 7
    assert backoff_s(1, httpx.Response(429, headers={"retry-after": "0"})) == 0
    assert backoff_s(1, httpx.Response(429, headers={"retry-after": "soon"})) == 1
    assert backoff_s(0, httpx.Response(429, headers={"retry-after": "600"})) == 30
