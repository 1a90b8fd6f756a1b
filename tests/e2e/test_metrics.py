"""Metrics out and discovery against real components: `rollwise metrics` / `sd` and
`rollwise serve`'s /metrics and /sd on a deployed example, and the examples/prometheus files
run by Debian's Prometheus and Alertmanager: a canary's error rate fires the example alert,
Alertmanager calls `rollwise serve`, and the canary is rolled back."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rollwise.errors import ExitCode
from rollwise.ports import free_port
from tests.conftest import ROOT, require_binary
from tests.helpers import FAST, TOKEN, run_in_background, serve, start_load, status, wait_for

EXAMPLES = ROOT / "examples" / "prometheus"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    found = [v for (n, lab), v in samples(text).items() if n == name and set(labels.items()) <= lab]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_given_a_deployed_release_under_load_then_metrics_and_sd_show_it(project):
    metrics_port = free_port()
    project.configure(metrics={"listen": f"127.0.0.1:{metrics_port}"})
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 50)
    time.sleep(1.5)
    results = load.stop()
    text = project.cli("metrics", "--env", "dev", check=True).stdout
    sent = value(
        text,
        "rollwise_router_requests_total",
        rollwise_env="dev",
        version="1.0.0",
        role="stable",
        app="order-sync",
    )
    assert sent >= len(results) > 0
    assert value(text, "rollwise_router_weight_percent", version="1.0.0") == 100
    assert value(text, "rollwise_live_release", version="1.0.0") == 1
    assert value(text, "rollwise_router_up", rollwise_env="dev") == 1
    assert value(text, "rollwise_deployments_total", kind="deploy", status="succeeded") == 1
    assert value(text, "rollwise_router_request_duration_seconds_count", version="1.0.0") == sent
    instances = status(project)["instances"]
    sd = json.loads(project.cli("sd", "--env", "dev", check=True).stdout)
    assert sd == [
        {
            "targets": sorted(f"{i['host']}:{i['port']}" for i in instances),
            "labels": {
                "rollwise_env": "dev",
                "app": "order-sync",
                "version": "1.0.0",
                "role": "stable",
            },
        },
        {
            "targets": [f"127.0.0.1:{metrics_port}"],
            "labels": {"rollwise_env": "dev", "app": "order-sync", "role": "rollwise"},
        },
    ]
    url = serve(project)
    assert httpx.get(f"{url}/sd").json() == sd  # what Prometheus reads is what a person reads
    own = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert own.status_code == 200
    assert value(own.text, "rollwise_router_requests_total", version="1.0.0") == sent
    assert httpx.get(f"{url}/metrics?env=dev").text.count("rollwise_router_requests_total{") == 1
    nope = httpx.get(f"{url}/metrics?env=nope")
    assert nope.status_code == 404 and "no environment 'nope'" in nope.json()["detail"]
    written = project.root / "sd.json"
    project.cli("sd", "--out", str(written), check=True)
    assert json.loads(written.read_text()) == [
        {**sd[0]},
        {
            "targets": [f"127.0.0.1:{metrics_port}"],
            "labels": {"rollwise_env": "dev", "app": "order-sync", "role": "rollwise"},
        },
    ]
    log = [json.loads(x) for x in (project.root / "serve.log").read_text().splitlines()]
    assert log[0]["event"] == "serve"
    sd_lines = [x for x in log if x.get("path") == "/sd"]
    assert len(sd_lines) == 1 and sd_lines[0]["status"] == 200 and sd_lines[0]["ms"] > 0
    assert [x["status"] for x in log if x.get("path") == "/metrics"] == [200, 200, 404]


def test_given_an_unknown_environment_then_metrics_says_which(project):
    res = project.cli("metrics", "--env", "nope")
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert "nope" in res.stderr and res.stdout == ""


def test_examples_pass_promtool():
    promtool = require_binary("promtool", "apt-get install prometheus")
    for args in (
        ["check", "config", str(EXAMPLES / "prometheus.yml")],
        ["check", "rules", str(EXAMPLES / "rules.yml")],
    ):
        res = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    amtool = require_binary("amtool", "apt-get install prometheus-alertmanager")
    res = subprocess.run(
        [amtool, "check-config", str(EXAMPLES / "alertmanager.yml")], capture_output=True, text=True
    )
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def replaced(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        assert old in text, f"the example no longer has {old!r}"
        text = text.replace(old, new)
    return text


def test_given_the_example_alert_when_the_canary_fails_then_alertmanager_rolls_it_back(project):
    prometheus = require_binary("prometheus", "apt-get install prometheus")
    alertmanager = require_binary(
        "prometheus-alertmanager", "apt-get install prometheus-alertmanager"
    )
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 90},
        analysis={**FAST, "router": {"enabled": False}},
    )
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    url = serve(project)
    serve_at = url.removeprefix("http://")
    am_port, prom_port = free_port(), free_port()
    work = project.root / "prom"
    work.mkdir()
    (work / "token").write_text(TOKEN)
    (work / "alertmanager.yml").write_text(
        replaced(
            (EXAMPLES / "alertmanager.yml").read_text(),
            [("127.0.0.1:9747", serve_at), ("/etc/rollwise/webhook-token", str(work / "token"))],
        )
    )
    fast = [("[1m]", "[5s]"), ("for: 30s", "for: 0s")]
    (work / "rules.yml").write_text(replaced((EXAMPLES / "rules.yml").read_text(), fast))
    (work / "prometheus.yml").write_text(
        replaced(
            (EXAMPLES / "prometheus.yml").read_text(),
            [
                ("127.0.0.1:9747", serve_at),
                ("127.0.0.1:9093", f"127.0.0.1:{am_port}"),
                ("scrape_interval: 5s", "scrape_interval: 500ms"),
                ("evaluation_interval: 5s", "evaluation_interval: 500ms"),
                ("refresh_interval: 15s", "refresh_interval: 1s"),
            ],
        )
    )
    logs = [(work / "am.log").open("w"), (work / "prom.log").open("w")]
    procs = [
        subprocess.Popen(
            [
                alertmanager,
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'am'}",
                "--cluster.listen-address=",
                f"--web.listen-address=127.0.0.1:{am_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=logs[0],
        ),
        subprocess.Popen(
            [
                prometheus,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=logs[1],
        ),
    ]
    for proc, log in zip(procs, logs, strict=True):
        project.cleanups.append(
            lambda proc=proc, log=log: (proc.terminate(), proc.wait(timeout=30), log.close())
        )
    load = start_load(project, 40)
    began = time.monotonic()
    deploy = run_in_background(project, "deploy", "1.1.0")
    wait_for(project, lambda s: s["in_progress"] is not None)
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        out, err = deploy.communicate(timeout=90)
    except subprocess.TimeoutExpired:  # say what Prometheus and Alertmanager saw
        raise AssertionError(
            f"no rollback by the alert in 90 s; Prometheus alerts: "
            f"{httpx.get(f'{prom}/api/v1/alerts').text[:2000]}; Alertmanager: "
            f"{httpx.get(f'http://127.0.0.1:{am_port}/api/v2/alerts').text[:2000]}; "
            f"router requests: {_query(prom, 'rollwise_router_requests_total')[:2000]}"
        ) from None
    took = time.monotonic() - began
    load.stop()
    assert deploy.returncode == ExitCode.ERROR, out + err
    assert "CanaryErrorRate" in err, err
    assert took < 80, f"rolled back after {took:.1f} s, not by the alert before the 90 s pause"
    s = wait_for(project, lambda s: s["in_progress"] is None)
    assert s["live_version"] == "1.0.0"
    assert s["last_deployment"]["status"] == "rolled_back"
    assert "alert CanaryErrorRate" in s["last_deployment"]["reason"]
    targets = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
    jobs = {(t["labels"]["job"], t["labels"].get("role")) for t in targets}
    assert ("rollwise", "rollwise") in jobs and ("app", "stable") in jobs, jobs
    for panel in json.loads((EXAMPLES / "grafana-dashboard.json").read_text())["panels"]:
        expr = panel["targets"][0]["expr"].replace("$env", "dev").replace("$app", "order-sync")
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr})
        assert r.status_code == 200 and r.json()["status"] == "success", (panel["title"], r.text)


def test_metrics_listen_must_be_an_address(project):
    project.configure(metrics={"listen": "nowhere"})
    res = project.cli("metrics")
    assert res.returncode == ExitCode.CONFIG
    assert "metrics.listen" in res.stderr, res.stderr


def _query(prom: str, expr: str) -> str:
    return httpx.get(f"{prom}/api/v1/query", params={"query": expr}).text
