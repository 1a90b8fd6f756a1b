"""Canary stages, blue-green preview, verification checks and bake: move traffic, watch
the new release, act on the decision.

Each look measures every provider and `analysis.decide` turns the measurements into
continue / advance / pause / rollback. Requests made from other processes (`rollwise
promote`, `abort`, `rollback`, an alert webhook) are taken at every look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from rollwise import analysis as a
from rollwise import domain as d
from rollwise import reasons
from rollwise.analysis.router_metrics import RouterProvider
from rollwise.config.schema import AnalysisConfig, StrategyConfig
from rollwise.controller.context import Context, Environment
from rollwise.controller.instances import drain, shift, start_ready, stop
from rollwise.errors import RollwiseError
from rollwise.store import repo

PROMOTE = "promote"
PROMOTE_FULL = "promote-full"
ABORT = "abort"
ROLLBACK = "rollback"
REQUESTS = (PROMOTE, PROMOTE_FULL, ABORT, ROLLBACK)


class Aborted(RollwiseError):
    """Stopped on request or for lack of a conclusion: the new release is not blamed."""


class AnalysisFailed(RollwiseError):
    """The new release is worse: traffic goes back and the release is marked bad."""


@dataclass
class Watch:
    """The analysis state of one deployment while this process runs it."""

    ctx: Context
    env: Environment
    plan: d.Plan
    dep_id: int
    router: RouterProvider | None = None
    checks: list[a.MetricProvider] = field(default_factory=list)
    verify: list[a.MetricProvider] = field(default_factory=list)
    full: bool = False  # promote-full: no more waiting at canary stages
    percent: float | None = None  # the new release's share of traffic now
    checks_at: float = 0.0
    last_checks: list[a.Measurement] = field(default_factory=list)

    @classmethod
    def open(cls, ctx: Context, env: Environment, plan: d.Plan, dep_id: int) -> Watch:
        cfg = env.config
        router = None
        if cfg.analysis.router.enabled:
            router = RouterProvider(cfg.analysis.router, env.router.metrics)
        return cls(
            ctx,
            env,
            plan,
            dep_id,
            router,
            [a.make_provider(c, ctx.root) for c in cfg.analysis.checks],
            [a.make_provider(c, ctx.root) for c in cfg.verify],
        )

    @property
    def analysis(self) -> AnalysisConfig:
        return self.env.config.analysis

    @property
    def strategy(self) -> StrategyConfig:
        return self.env.config.strategy

    def look_at(self, *, final: bool, solo: bool = False, preview: str = "") -> a.Look:
        router = self.env.config.router
        return a.Look(
            self.plan.env,
            self.plan.to_version,
            None if solo else self.plan.from_version,
            final,
            router_url=preview or f"http://{router.listen}",
            preview_url=preview,
        )

    def measure(self, look: a.Look, *, router: bool = True) -> list[a.Measurement]:
        out = [self.router.measure(look)] if router and self.router else []
        now = time.monotonic()
        if self.checks and (look.final or now - self.checks_at >= self.analysis.checks_every_s):
            self.checks_at, self.last_checks = now, [p.measure(look) for p in self.checks]
        return out + self.last_checks

    def taken(self) -> tuple[str, str] | None:
        req = repo.take_request(self.ctx.engine, self.dep_id)
        if req and req[0] == ABORT:
            raise Aborted(f"aborted by {req[1]}", where=f"deployment {self.dep_id}")
        if req and req[0] == ROLLBACK:
            raise AnalysisFailed(
                f"rollback requested by {req[1]}", where=f"deployment {self.dep_id}"
            )
        return req

    def record(
        self, step: str, decision: a.Decision, ms: list[a.Measurement], outcome: str | None = None
    ) -> dict[str, Any]:
        data = {
            "deployment": self.dep_id,
            "step": step,
            "decision": decision.action,
            "measurements": [m.as_dict() for m in ms],
            "dry_run": self.analysis.dry_run,
        }
        self.ctx.emit(
            "analysis",
            outcome or decision.action,
            env=self.plan.env,
            version=self.plan.to_version,
            reason=decision.reason,
            data=data,
        )
        return data

    def progress(
        self,
        step: str,
        ms: list[a.Measurement],
        *,
        elapsed_s: float,
        pause_s: float | None,
        decision: a.Decision,
    ) -> None:
        """One look, for live views: the step's clock, the new release's share of traffic,
        each version's router numbers and the decision so far (not recorded)."""
        versions = self.router.versions if self.router else {}
        self.ctx.emit(
            "look",
            "progress",
            env=self.plan.env,
            version=self.plan.to_version,
            record=False,
            data={
                "step": step,
                "measurements": [m.as_dict() for m in ms],
                "elapsed_s": round(elapsed_s, 1),
                "pause_s": pause_s,
                "percent": self.percent,
                "stable": self.plan.from_version,
                "decision": {"action": decision.action, "reason": decision.reason},
                "versions": {
                    v: version_summary(versions.get(v))
                    for v in (self.plan.to_version, self.plan.from_version)
                    if v
                },
            },
        )


def version_summary(v: dict[str, Any] | None) -> dict[str, Any]:
    """A version's router counters as a live view shows them: requests, errors (5xx and no
    answer), p50 and p99 in ms (upper bounds of their histogram buckets)."""
    v = v or {}
    counts = [int(c) for c in v.get("bucket_counts", [])]
    bounds = v.get("buckets_ms", [])
    total = sum(counts)

    def quantile(q: float) -> float | None:
        if not total:
            return None
        seen = 0
        for bound, n in zip(bounds, counts, strict=False):
            seen += n
            if seen >= q * total:
                return None if bound == "inf" else float(bound)
        return None

    return {
        "requests": int(v.get("requests", 0)) + int(v.get("conn_errors", 0)),
        "errors": int(v.get("status_5xx", 0)) + int(v.get("conn_errors", 0)),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
    }


def run_stage(w: Watch, stage: d.Stage) -> dict[str, Any]:
    """Send `stage.weight` percent to the new release and watch it."""
    weights = d.canary_weights(w.plan.new, w.plan.old, stage.weight)
    shift(w.ctx, w.env, w.plan.new + w.plan.old, weights)
    w.percent = float(stage.weight)
    pause = 0.0 if w.full else stage.pause_s
    return _watch(w, stage.name, pause, until_promote=stage.until_promote and not w.full)


def run_batch(w: Watch, batch: d.Batch) -> dict[str, Any]:
    """Rolling: start the batch's new instances, send them their share beside the old
    instances still serving, watch, then drain and stop the old ones they replace."""
    batches, k = w.plan.batches(), batch.number - 1
    new, retire = batches[k]
    ready_ms = start_ready(w.ctx, w.env, new)
    serving_new = tuple(i for b in batches[: k + 1] for i in b[0])
    retired = {i.name for b in batches[: k + 1] for i in b[1]}
    serving_old = tuple(i for i in w.plan.old if i.name not in retired)
    running_old = tuple(i for i in w.plan.old if i in serving_old or i in retire)
    shift(w.ctx, w.env, serving_new + running_old, {i.name: 1 for i in serving_new + serving_old})
    w.percent = round(100 * len(serving_new) / len(serving_new + serving_old), 1)
    data = _watch(w, batch.name, w.plan.pause_s, solo=not serving_old)
    drain(w.ctx, w.env, retire)
    stop(w.ctx, w.env, retire)
    return {
        "started": [i.name for i in new],
        "ready_ms": ready_ms,
        "stopped": [i.name for i in retire],
        **data,
    }


def run_bake(w: Watch) -> dict[str, Any]:
    """After the switch: old instances stay up; a failure sends traffic back to them."""
    w.percent = 100.0
    return _watch(w, d.BAKE, w.plan.bake_s, solo=True, pause_ends_step=True)


def run_preview(w: Watch, url: str) -> dict[str, Any]:
    """Blue-green: the verification checklist against a new instance, before the switch."""
    return _checklist(w, d.PREVIEW, url, blame=True)


def run_checks(w: Watch) -> dict[str, Any]:
    """The verification checklist after the switch. After a deploy a failure rolls back;
    after a rollback the result is recorded (there is nothing further back to go)."""
    return _checklist(w, d.CHECKS, "", blame=w.plan.kind == d.DEPLOY)


def verify_after_undo(
    ctx: Context, env: Environment, plan: d.Plan, dep_id: int
) -> dict[str, Any] | None:
    """After traffic went back to the old release: run the checklist against it, record."""
    if not env.config.verify or not plan.from_version:
        return None
    back = replace(plan, kind=d.ROLLBACK, to_version=plan.from_version, from_version=None)
    return _checklist(Watch.open(ctx, env, back, dep_id), d.CHECKS, "", blame=False)


def _watch(
    w: Watch,
    step: str,
    pause_s: float,
    *,
    until_promote: bool = False,
    solo: bool = False,
    pause_ends_step: bool = False,
) -> dict[str, Any]:
    t0, paused_at, interval = time.monotonic(), None, w.analysis.interval_s
    while True:
        req = w.taken()
        if req:
            w.full = req[0] == PROMOTE_FULL
            w.ctx.emit(
                "promote",
                reasons.OK,
                env=w.plan.env,
                version=w.plan.to_version,
                reason=f"promoted by {req[1]}",
                data={"step": step},
            )
            return {"promoted_by": req[1]}
        elapsed = time.monotonic() - t0
        over = elapsed >= pause_s and not until_promote
        ms = w.measure(w.look_at(final=over, solo=solo))
        decision = (
            a.decide(ms, step_over=over)
            if w.router or w.checks
            else a.Decision(a.ADVANCE if over else a.CONTINUE, "no analysis configured")
        )
        w.progress(
            step,
            ms,
            elapsed_s=elapsed,
            pause_s=None if until_promote else pause_s,
            decision=decision,
        )
        if (
            decision.action == a.ROLLBACK
            and not w.analysis.dry_run
            and _confirmed(w, step, decision, ms)
        ):
            return {"overridden": decision.reason}
        if decision.action == a.ROLLBACK and w.analysis.dry_run:
            w.record(step, decision, ms, outcome="dry-run")
        if over and (decision.action != a.PAUSE or pause_ends_step or w.analysis.dry_run):
            return _passed(w, step, decision, ms, elapsed)
        if over and paused_at is None:
            paused_at = time.monotonic()
            w.record(
                step,
                a.Decision(decision.action, _pausing(decision.reason, w.strategy.max_pause_s)),
                ms,
            )
        if paused_at is not None and time.monotonic() - paused_at > w.strategy.max_pause_s:
            raise Aborted(
                f"no conclusion after {w.strategy.max_pause_s:g} s paused: {decision.reason}",
                where=f"step {step}",
            )
        if until_promote and elapsed > w.strategy.max_pause_s:
            raise Aborted(
                f"nobody promoted within {w.strategy.max_pause_s:g} s",
                where=f"step {step}",
                hint="`rollwise promote` continues a rollout",
            )
        time.sleep(interval)


def _pausing(reason: str, max_pause_s: float) -> str:
    """Why a step waits past its pause, how long it may and what ends it sooner."""
    return (
        f"{reason}; paused: waiting up to {max_pause_s:g} s (strategy.max_pause_s) for a "
        "conclusion, then aborting; `rollwise promote` goes on now, `rollwise abort` "
        "goes back"
    )


def _passed(
    w: Watch, step: str, decision: a.Decision, ms: list[a.Measurement], elapsed: float
) -> dict[str, Any]:
    final = (
        a.Decision(a.ADVANCE, decision.reason)
        if decision.action == a.ADVANCE
        else a.Decision(a.ADVANCE, f"step time over ({decision.action}: {decision.reason})")
    )
    data = w.record(step, final, ms)
    return {
        "watched_s": round(elapsed, 1),
        "decision": final.reason,
        "numbers": {m.name: m.numbers for m in ms if m.provider == "router"},
    } | {"measurements": data["measurements"]}


def _confirmed(w: Watch, step: str, decision: a.Decision, ms: list[a.Measurement]) -> bool:
    """A failure: roll back (raise), or in `ask` mode wait for an answer. True when a
    person overrode it with `rollwise promote`."""
    if w.strategy.on_failure == "rollback":
        w.record(step, decision, ms)
        raise AnalysisFailed(decision.reason, where=f"step {step}")
    w.record(step, decision, ms, outcome="confirm")
    deadline = time.monotonic() + w.strategy.confirm_timeout_s
    while time.monotonic() < deadline:
        if w.taken():  # rollback raises; promote overrides
            return True
        time.sleep(min(1.0, w.analysis.interval_s))
    raise AnalysisFailed(
        f"{decision.reason} (no answer within {w.strategy.confirm_timeout_s:g} s; rolled back)",
        where=f"step {step}",
    )


def _checklist(w: Watch, step: str, url: str, *, blame: bool) -> dict[str, Any]:
    """Run every check until each is conclusive (inconclusive ones are retried)."""
    providers = w.verify
    if not providers:
        return {"checks": 0}
    deadline = time.monotonic() + w.strategy.max_pause_s
    results: dict[str, a.Measurement] = {}
    while True:
        look = w.look_at(final=True, solo=True, preview=url)
        for p in providers:
            if p.name not in results or results[p.name].verdict == a.INCONCLUSIVE:
                results[p.name] = p.measure(look)
        ms = list(results.values())
        decision = a.decide(ms, step_over=True)
        if decision.action == a.ROLLBACK and blame and not w.analysis.dry_run:
            w.record(step, decision, ms)
            raise AnalysisFailed(decision.reason, where=f"step {step}")
        if blame and decision.action == a.PAUSE and time.monotonic() > deadline:
            raise Aborted(
                f"checks still inconclusive after {w.strategy.max_pause_s:g} s: {decision.reason}",
                where=f"step {step}",
            )
        if decision.action != a.PAUSE or not blame:
            data = w.record(
                step,
                decision,
                ms,
                outcome=reasons.OK if decision.action == a.ADVANCE else reasons.ERROR,
            )
            return {
                "checks": len(ms),
                "passed": decision.action == a.ADVANCE,
                "decision": decision.reason,
                "measurements": data["measurements"],
            }
        w.taken()
        time.sleep(min(5.0, w.analysis.checks_every_s))
