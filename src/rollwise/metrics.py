"""Metrics out: what rollwise knows, in Prometheus' exposition format, and where each
instance runs, as Prometheus HTTP service discovery.

`snapshot` reads one environment: its router's per-version counters (the numbers the
analysis reads), weights, instances, deployments, analysis decisions and lock. `families`
and `discovery` turn snapshots into metric families and http_sd target groups; both are pure
and tested by equality. Every series carries `rollwise_env` and `app`, the labels the
alert webhook reads, so an alert rule on them rolls back the environment it fires for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from rollwise import reasons
from rollwise.controller.context import Context, Environment
from rollwise.errors import RollwiseError

STABLE, CANARY = "stable", "canary"
DURATION_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DECISIONS_READ = 1000  # newest analysis decisions read per scrape


@dataclass
class Snapshot:
    """One environment, as plain data."""

    env: str
    app: str
    live: str | None
    router: dict[str, Any] = field(default_factory=dict)  # the router's metrics()
    weights: dict[str, int] = field(default_factory=dict)  # instance name -> percent
    instances: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # outcome, seconds
    lock_holder: str | None = None
    router_up: bool = True
    error: str | None = None  # why router or instances could not be read

    def role(self, version: str) -> str:
        return STABLE if version == self.live else CANARY


def snapshot(ctx: Context, env: str) -> Snapshot:
    """Read environment `env` from the state store and its router; a router or target that
    does not answer is reported (`rollwise_router_up 0`), not raised."""
    from rollwise.audit import iter_events
    from rollwise.controller.lock import current
    from rollwise.store import repo

    environment = ctx.environment(env)
    snap = Snapshot(env, ctx.config.app, repo.env_state(ctx.engine, env)["live_version"])
    deps = repo.list_deployments(ctx.engine, env, 100_000)
    snap.deployments = [
        {k: dep[k] for k in ("id", "kind", "status", "created_at", "updated_at", "to_version")}
        for dep in deps
    ]
    started = {dep["id"]: float(dep["created_at"]) for dep in deps}
    for ev in iter_events(ctx.engine, env, limit=DECISIONS_READ, action="analysis"):
        begun = started.get(ev["data"].get("deployment"))
        snap.decisions.append(
            {
                "outcome": ev["outcome"],
                "seconds": None if begun is None else float(ev["ts"]) - begun,
            }
        )
    lock = current(ctx.engine, env)
    snap.lock_holder = None if lock is None or lock.expired else lock.holder
    try:
        snap.router = router_counters(environment)
        snap.weights = environment.router.weights()
        snap.instances = [vars(i) for i in environment.target.instances()]
    except (RollwiseError, OSError) as e:
        snap.router_up, snap.error = False, str(e)
    return snap


def router_counters(environment: Environment) -> dict[str, Any]:
    """The router's metrics now (per-version counters under "versions"); RollwiseError when
    the environment's agent, whose embedded router it is, is not running."""
    from rollwise.agent.client import AgentClient

    if (
        environment.config.router.type == "builtin"
        and AgentClient(environment.dir, environment.name).alive() is None
    ):
        raise RollwiseError("the environment's agent is not running")
    return environment.router.metrics()


def families(snaps: list[Snapshot]) -> list[Metric]:
    """Metric families for these environments (pure)."""
    m: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "requests": CounterMetricFamily(
            "rollwise_router_requests",
            "Requests the router sent to each version.",
            labels=["rollwise_env", "app", "version", "role"],
        ),
        "errors": CounterMetricFamily(
            "rollwise_router_errors",
            "Failed requests by version: `5xx` answers and `conn` (no answer from the instance).",
            labels=["rollwise_env", "app", "version", "role", "kind"],
        ),
        "weight": GaugeMetricFamily(
            "rollwise_router_weight_percent",
            "Percent of new requests sent to each version.",
            labels=["rollwise_env", "app", "version", "role"],
        ),
        "up": GaugeMetricFamily(
            "rollwise_router_up",
            "1 when the environment's router answered this scrape.",
            labels=["rollwise_env", "app"],
        ),
        "instances": GaugeMetricFamily(
            "rollwise_instances",
            "Instances by version and whether their process is alive.",
            labels=["rollwise_env", "app", "version", "role", "alive"],
        ),
        "live": GaugeMetricFamily(
            "rollwise_live_release",
            "1 for the release the environment runs as stable.",
            labels=["rollwise_env", "app", "version"],
        ),
        "deployments": CounterMetricFamily(
            "rollwise_deployments",
            "Deployments (kind deploy or rollback) by how they ended.",
            labels=["rollwise_env", "app", "kind", "status"],
        ),
        "rollbacks": CounterMetricFamily(
            "rollwise_rollbacks",
            "Rollbacks: asked for, or done by a failed deploy.",
            labels=["rollwise_env", "app"],
        ),
        "in_progress": GaugeMetricFamily(
            "rollwise_deployment_in_progress",
            "1 while a deployment to `version` runs.",
            labels=["rollwise_env", "app", "kind", "version"],
        ),
        "decisions": CounterMetricFamily(
            "rollwise_analysis_decisions",
            "Analysis decisions (pass, fail, inconclusive, ...) "
            f"among the newest {DECISIONS_READ}.",
            labels=["rollwise_env", "app", "decision"],
        ),
        "lock": GaugeMetricFamily(
            "rollwise_lock_held",
            "1 while the environment's deploy lock is held, by `holder`.",
            labels=["rollwise_env", "app", "holder"],
        ),
    }
    latency = []
    durations = []
    decision_s = []
    for s in snaps:
        base = [s.env, s.app]
        m["up"].add_metric(base, 1.0 if s.router_up else 0.0)
        if s.live:
            m["live"].add_metric([*base, s.live], 1.0)
        versions: dict[str, dict[str, Any]] = s.router.get("versions", {})
        for version, v in sorted(versions.items()):
            labels = [*base, version, s.role(version)]
            m["requests"].add_metric(labels, float(v.get("requests", 0)))
            m["errors"].add_metric([*labels, "5xx"], float(v.get("status_5xx", 0)))
            m["errors"].add_metric([*labels, "conn"], float(v.get("conn_errors", 0)))
            if v.get("bucket_counts"):
                latency.append((labels, _buckets(v), float(v.get("latency_ms_sum", 0)) / 1000))
        by_name = {i["name"]: i["version"] for i in s.instances}
        shares: Counter[str] = Counter()
        for name, w in s.weights.items():
            if name in by_name:
                shares[by_name[name]] += w
        total = sum(shares.values())
        for version, w in sorted(shares.items()):
            m["weight"].add_metric([*base, version, s.role(version)], 100.0 * w / total)
        counted: Counter[tuple[str, str]] = Counter(
            (i["version"], str(bool(i["alive"])).lower()) for i in s.instances
        )
        for (version, alive), n in sorted(counted.items()):
            m["instances"].add_metric([*base, version, s.role(version), alive], float(n))
        ended: Counter[tuple[str, str]] = Counter()
        for dep in s.deployments:
            if dep["status"] in reasons.ACTIVE_STATUSES:
                m["in_progress"].add_metric([*base, dep["kind"], dep["to_version"]], 1.0)
                continue
            ended[(dep["kind"], dep["status"])] += 1
            durations.append(
                ([*base, dep["kind"]], float(dep["updated_at"]) - float(dep["created_at"]))
            )
        for (kind, status), n in sorted(ended.items()):
            m["deployments"].add_metric([*base, kind, status], float(n))
        m["rollbacks"].add_metric(
            base,
            float(
                sum(
                    n
                    for (kind, status), n in ended.items()
                    if kind == "rollback" or status == reasons.ROLLED_BACK
                )
            ),
        )
        for outcome, n in sorted(Counter(x["outcome"] for x in s.decisions).items()):
            m["decisions"].add_metric([*base, outcome], float(n))
        decision_s += [
            ([*base, x["outcome"]], x["seconds"]) for x in s.decisions if x["seconds"] is not None
        ]
        if s.lock_holder:
            m["lock"].add_metric([*base, s.lock_holder], 1.0)
    hist = HistogramMetricFamily(
        "rollwise_router_request_duration_seconds",
        "Time from the router sending a request "
        "to an instance to the end of its answer, by version.",
        labels=["rollwise_env", "app", "version", "role"],
    )
    for labels, buckets, seconds in latency:
        hist.add_metric(labels, buckets, seconds)
    return [
        *m.values(),
        hist,
        _histogram(
            "rollwise_deployment_duration_seconds",
            "How long finished deployments took, from start to end.",
            ["rollwise_env", "app", "kind"],
            durations,
        ),
        _histogram(
            "rollwise_analysis_decision_seconds",
            "Time from a deployment's start to each analysis decision.",
            ["rollwise_env", "app", "decision"],
            decision_s,
        ),
    ]


def _buckets(v: dict[str, Any]) -> list[tuple[str, float]]:
    """The router's per-bucket counts (milliseconds) as cumulative seconds buckets."""
    out, total = [], 0
    for bound, n in zip(v["buckets_ms"], v["bucket_counts"], strict=True):
        total += int(n)
        le = "+Inf" if bound == "inf" else repr(float(bound) / 1000)
        out.append((le, float(total)))
    return out


def _histogram(
    name: str, doc: str, labels: list[str], values: list[tuple[list[str], float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    grouped: dict[tuple[str, ...], list[float]] = {}
    for labels, x in values:
        grouped.setdefault(tuple(labels), []).append(x)
    for key, xs in sorted(grouped.items()):
        buckets = [(repr(b), float(sum(1 for x in xs if x <= b))) for b in DURATION_BUCKETS_S]
        family.add_metric(list(key), [*buckets, ("+Inf", float(len(xs)))], sum(xs))
    return family


def exposition(snaps: list[Snapshot]) -> bytes:
    """The text Prometheus scrapes."""

    class Fixed(Collector):
        def collect(self) -> list[Metric]:
            return families(snaps)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return generate_latest(registry)


def discovery(
    snaps: list[Snapshot], metrics_at: dict[str, dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Prometheus http_sd / file_sd target groups: one per environment, version and role,
    listing each instance's `host:port`, and, for each environment `metrics_at` names, one
    for where its rollwise metrics are scraped (role `rollwise`): `{"target": "host:port"}`
    and labels to add, such as `__param_env` (pure)."""
    groups: list[dict[str, Any]] = []
    for s in snaps:
        by_version: dict[str, list[str]] = {}
        for i in s.instances:
            by_version.setdefault(i["version"], []).append(f"{i['host']}:{i['port']}")
        for version, targets in sorted(by_version.items()):
            groups.append(
                {
                    "targets": sorted(targets),
                    "labels": {
                        "rollwise_env": s.env,
                        "app": s.app,
                        "version": version,
                        "role": s.role(version),
                    },
                }
            )
        if metrics_at and s.env in metrics_at:
            at = dict(metrics_at[s.env])
            groups.append(
                {
                    "targets": [at.pop("target")],
                    "labels": {"rollwise_env": s.env, "app": s.app, "role": "rollwise", **at},
                }
            )
    return groups


def read(ctx: Context, envs: list[str] | None = None) -> list[Snapshot]:
    """Snapshots of `envs` (all configured environments when None)."""
    return [snapshot(ctx, e) for e in (envs or sorted(ctx.config.environments))]
