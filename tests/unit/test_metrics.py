"""Metric families and service discovery from plain snapshots, by equality."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rollwise.metrics import Snapshot, discovery, exposition

BUCKETS = [0.5, 1.0, 2.0, "inf"]


def snap() -> Snapshot:
    return Snapshot(
        env="prod",
        app="shop",
        live="1.0.0",
        router={
            "versions": {
                "1.0.0": {
                    "requests": 90,
                    "status_5xx": 1,
                    "status_4xx": 0,
                    "conn_errors": 0,
                    "latency_ms_sum": 45.0,
                    "buckets_ms": BUCKETS,
                    "bucket_counts": [80, 10, 0, 0],
                },
                "1.1.0": {
                    "requests": 10,
                    "status_5xx": 3,
                    "status_4xx": 0,
                    "conn_errors": 1,
                    "latency_ms_sum": 30.0,
                    "buckets_ms": BUCKETS,
                    "bucket_counts": [2, 3, 4, 1],
                },
            }
        },
        weights={"a": 45, "b": 45, "c": 10},
        instances=[
            {"name": "a", "version": "1.0.0", "host": "10.0.0.1", "port": 8001, "alive": True},
            {"name": "b", "version": "1.0.0", "host": "10.0.0.2", "port": 8001, "alive": True},
            {"name": "c", "version": "1.1.0", "host": "10.0.0.1", "port": 8002, "alive": False},
        ],
        deployments=[
            {
                "id": 1,
                "kind": "deploy",
                "status": "succeeded",
                "created_at": 100.0,
                "updated_at": 104.0,
                "to_version": "1.0.0",
            },
            {
                "id": 2,
                "kind": "deploy",
                "status": "rolled_back",
                "created_at": 200.0,
                "updated_at": 290.0,
                "to_version": "1.1.0",
            },
            {
                "id": 3,
                "kind": "deploy",
                "status": "running",
                "created_at": 300.0,
                "updated_at": 300.0,
                "to_version": "1.1.0",
            },
        ],
        decisions=[
            {"outcome": "pass", "seconds": 3.0},
            {"outcome": "fail", "seconds": 40.0},
            {"outcome": "fail", "seconds": None},
        ],
        lock_holder="ci pid 7 on build-1",
    )


def parsed(s: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for f in text_string_to_metric_families(exposition([s]).decode())
        for x in f.samples
    }


def by(name: str, s: Snapshot) -> dict[tuple[tuple[str, str], ...], float]:
    base = {("app", "shop"), ("rollwise_env", "prod")}
    return {
        tuple(kv for kv in labels if kv not in base): v
        for (n, labels), v in parsed(s).items()
        if n == name
    }


def test_router_counters_per_version_with_role():
    s = snap()
    assert by("rollwise_router_requests_total", s) == {
        (("role", "stable"), ("version", "1.0.0")): 90.0,
        (("role", "canary"), ("version", "1.1.0")): 10.0,
    }
    assert by("rollwise_router_errors_total", s) == {
        (("kind", "5xx"), ("role", "stable"), ("version", "1.0.0")): 1.0,
        (("kind", "conn"), ("role", "stable"), ("version", "1.0.0")): 0.0,
        (("kind", "5xx"), ("role", "canary"), ("version", "1.1.0")): 3.0,
        (("kind", "conn"), ("role", "canary"), ("version", "1.1.0")): 1.0,
    }
    assert by("rollwise_router_weight_percent", s) == {
        (("role", "stable"), ("version", "1.0.0")): 90.0,
        (("role", "canary"), ("version", "1.1.0")): 10.0,
    }


def test_latency_histogram_is_cumulative_in_seconds():
    got = by("rollwise_router_request_duration_seconds_bucket", snap())
    canary = {dict(k)["le"]: v for k, v in got.items() if dict(k)["version"] == "1.1.0"}
    assert canary == {"0.0005": 2.0, "0.001": 5.0, "0.002": 9.0, "+Inf": 10.0}
    assert (
        by("rollwise_router_request_duration_seconds_sum", snap())[
            (("role", "canary"), ("version", "1.1.0"))
        ]
        == 0.03
    )


def test_deployments_rollbacks_decisions_lock_and_instances():
    s = snap()
    assert by("rollwise_deployments_total", s) == {
        (("kind", "deploy"), ("status", "succeeded")): 1.0,
        (("kind", "deploy"), ("status", "rolled_back")): 1.0,
    }
    assert by("rollwise_rollbacks_total", s) == {(): 1.0}
    assert by("rollwise_deployment_in_progress", s) == {
        (("kind", "deploy"), ("version", "1.1.0")): 1.0
    }
    assert by("rollwise_analysis_decisions_total", s) == {
        (("decision", "fail"),): 2.0,
        (("decision", "pass"),): 1.0,
    }
    assert by("rollwise_analysis_decision_seconds_count", s) == {
        (("decision", "fail"),): 1.0,
        (("decision", "pass"),): 1.0,
    }
    assert by("rollwise_deployment_duration_seconds_sum", s) == {(("kind", "deploy"),): 94.0}
    assert by("rollwise_lock_held", s) == {(("holder", "ci pid 7 on build-1"),): 1.0}
    assert by("rollwise_instances", s) == {
        (("alive", "true"), ("role", "stable"), ("version", "1.0.0")): 2.0,
        (("alive", "false"), ("role", "canary"), ("version", "1.1.0")): 1.0,
    }
    assert by("rollwise_router_up", s) == {(): 1.0}


def test_an_unreadable_router_is_a_zero_not_a_gap():
    s = Snapshot(env="prod", app="shop", live="1.0.0", router_up=False, error="agent down")
    assert by("rollwise_router_up", s) == {(): 0.0}
    assert by("rollwise_router_requests_total", s) == {}


def test_discovery_groups_instances_by_version_and_role():
    assert discovery([snap()], {"prod": {"target": "127.0.0.1:9747", "__param_env": "prod"}}) == [
        {
            "targets": ["10.0.0.1:8001", "10.0.0.2:8001"],
            "labels": {"rollwise_env": "prod", "app": "shop", "version": "1.0.0", "role": "stable"},
        },
        {
            "targets": ["10.0.0.1:8002"],
            "labels": {"rollwise_env": "prod", "app": "shop", "version": "1.1.0", "role": "canary"},
        },
        {
            "targets": ["127.0.0.1:9747"],
            "labels": {
                "rollwise_env": "prod",
                "app": "shop",
                "role": "rollwise",
                "__param_env": "prod",
            },
        },
    ]
