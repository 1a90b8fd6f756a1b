"""Analysis against a real Prometheus (Debian's package, started here) and alerts arriving as
real Alertmanager webhook calls."""

from __future__ import annotations

import json
import subprocess
import time

import httpx

from rollwise.errors import ExitCode
from rollwise.ports import free_port
from tests.conftest import Project, require_binary
from tests.helpers import (
    FAST,
    TOKEN,
    router_version,
    run_in_background,
    serve,
    start_load,
    status,
    wait_for,
)


def prom_check(url: str, query: str, **bounds: float) -> dict[str, object]:
    return {
        "type": "prometheus",
        "name": "failed orders",
        "url": url,
        "query": query,
        "timeout_s": 2,
        **bounds,
    }


def test_given_prometheus_shows_the_canary_failing_then_rolled_back(project):
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    url = _start_prometheus(project)
    query = 'sum(order_sync_orders_failed_total{version="{canary}"}) or vector(0)'
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 20},
        analysis={**FAST, "router": {"enabled": False}, "checks": [prom_check(url, query, max=0)]},
    )
    load = start_load(project, 50)
    res = project.cli("deploy", "1.1.0")
    load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "failed orders" in res.stderr and "above max 0" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["marks"]["1.1.0"] == "bad"
    m = s["analysis"][-1]["measurements"][0]
    assert m["provider"] == "prometheus" and m["numbers"]["value"] > 0


def test_given_prometheus_unreachable_then_inconclusive_pauses_and_never_promotes(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    dead = f"http://127.0.0.1:{free_port()}"
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 1, "max_pause_s": 3},
        analysis={
            **FAST,
            "router": {"enabled": False},
            "checks": [prom_check(dead, "vector(0)", max=1)],
        },
    )
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR
    assert "unreachable" in res.stderr and "no conclusion" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"
    assert s["last_deployment"]["status"] == "aborted"
    assert s["marks"].get("1.1.0") != "bad"
    pause = [a for a in s["analysis"] if a["decision"] == "pause"]
    assert pause and "query failed" in pause[0]["reason"]


def test_given_an_empty_result_or_a_malformed_query_then_no_blind_promotion(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    url = _start_prometheus(project)
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 1, "max_pause_s": 3},
        analysis={
            **FAST,
            "router": {"enabled": False},
            "checks": [prom_check(url, 'up{job="no-such-job"}', max=1)],
        },
    )
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR and "no data" in res.stderr
    assert status(project)["live_version"] == "1.0.0"
    project.configure(analysis={"checks": [prom_check(url, "sum(rate(x[5m]", max=1)]})
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert "refused the query" in res.stderr and "failed orders" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["in_progress"] is None
    assert router_version(project) == "1.0.0"


def _start_prometheus(p: Project) -> str:
    binary = require_binary("prometheus", "apt-get install prometheus")
    router = status(p)["router"]
    cfg = p.root / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 500ms}\nscrape_configs:\n"
        f"  - job_name: order-sync\n    static_configs: [{{targets: ['{router}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={p.root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=30)

    p.cleanups.append(stop)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("Prometheus did not become ready in 30 s")


def alertmanager_payload(env: str, status_: str = "firing") -> dict[str, object]:
    """What Alertmanager (webhook_config, version 4) posts."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="OrderSyncErrors"}',
        "truncatedAlerts": 0,
        "status": status_,
        "receiver": "rollwise",
        "groupLabels": {"alertname": "OrderSyncErrors"},
        "commonLabels": {"alertname": "OrderSyncErrors", "app": "order-sync", "rollwise_env": env},
        "commonAnnotations": {"summary": "order sync failures above 5%"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status_,
                "labels": {
                    "alertname": "OrderSyncErrors",
                    "app": "order-sync",
                    "rollwise_env": env,
                },
                "annotations": {"summary": "order sync failures above 5%"},
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%S.000000001Z", time.gmtime()),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "c0ffee",
            }
        ],
    }


def test_given_an_alertmanager_webhook_when_firing_then_the_environment_rolls_back(project):
    project.release("0.9.0", "1.0.0", "1.1.0")
    for v in ("0.9.0", "1.0.0", "1.1.0"):
        project.cli("deploy", v, check=True)
    url = serve(project)
    hook = f"{url}/hooks/alertmanager"
    assert httpx.post(hook, json=alertmanager_payload("dev")).status_code == 401
    wrong = httpx.post(
        hook, json=alertmanager_payload("dev"), headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resolved = httpx.post(hook, json=alertmanager_payload("dev", "resolved"), headers=auth)
    assert resolved.status_code == 202 and resolved.json()["results"] == []
    unknown = httpx.post(hook, json=alertmanager_payload("nope"), headers=auth).json()
    assert unknown["results"][0]["action"] == "refused"
    assert status(project)["live_version"] == "1.1.0"
    firing = alertmanager_payload("dev")
    r = httpx.post(hook, json=firing, headers=auth)
    assert r.status_code == 202 and r.json()["results"][0]["action"] == "rolling back"
    s = wait_for(project, lambda s: s["live_version"] == "1.0.0" and not s["in_progress"])
    assert s["marks"]["1.1.0"] == "bad" and router_version(project) == "1.0.0"
    why = "alert OrderSyncErrors: order sync failures above 5%"
    newest = json.loads(project.cli("history", "--json", check=True).stdout)[0]
    assert (newest["kind"], newest["status"], newest["reason"]) == ("rollback", "succeeded", why)
    events = [
        json.loads(x)
        for x in project.cli("audit", "export", check=True).stdout.splitlines()
        if x.startswith("{")
    ]
    assert [e["outcome"] for e in events if e["action"] == "rollback" and e["reason"] == why] == [
        "started",
        "succeeded",
    ]
    again = httpx.post(hook, json=firing, headers=auth).json()
    assert again["results"][0]["action"] == "ignored"  # Alertmanager repeats firing alerts
    time.sleep(1)
    assert status(project)["live_version"] == "1.0.0"


def test_given_a_canary_in_progress_when_a_generic_alert_arrives_then_traffic_goes_back(project):
    project.configure(strategy={"type": "canary", "pause_s": 60, "steps": [30, 100]}, analysis=FAST)
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    url = serve(project)
    proc = run_in_background(project, "deploy", "1.1.0")
    wait_for(project, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    r = httpx.post(
        f"{url}/hooks/generic",
        json={"env": "dev", "reason": "sentry spike"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert r.status_code == 202 and r.json()["results"][0]["action"] == "requested"
    proc.communicate(timeout=60)
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["last_deployment"]["status"] == "rolled_back"
    assert "sentry spike" in s["last_deployment"]["reason"]
