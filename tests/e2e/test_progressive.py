"""End to end: canary rollouts judged by the router's own metrics, on the real agent, router
and example app, under load."""

from __future__ import annotations

import json
import time

from rollwise.demo import run_demo
from rollwise.errors import ExitCode
from tests.conftest import EXAMPLE
from tests.helpers import (
    FAST,
    failed_not_by,
    incident_of,
    router_version,
    run_in_background,
    start_load,
    status,
    wait_for,
)


def test_demo_stops_the_bad_canary_and_promotes_the_fixed_one_without_switch_failures():
    report = run_demo(EXAMPLE, rate=250, hold_s=2)
    assert report["rolled_back"] is True
    assert report["live_version"] == "1.1.1"
    assert report["requests_failed_by_switch"] == 0
    assert report["requests_failed_by_bad_release"] >= 1
    assert report["requests_sent"] >= 3000
    assert report["detection_s"] is not None and report["detection_s"] <= 15
    assert report["rollback_traffic_ms"] <= 100
    assert report["orders_lost"] == 0
    assert report["orders_stored"] == report["orders_acknowledged"]
    assert "channel" not in report["schema_after_rollback"]  # the down migration ran
    assert report["schema_now"][-1] == "channel"  # 1.1.1 brought it back


def test_given_a_canary_with_8pct_errors_when_analysed_under_load_then_rolled_back(project):
    project.configure(
        strategy={"type": "canary", "steps": [5, 25, 100], "pause_s": 20}, analysis=FAST
    )
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.08})
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 200)
    res = project.cli("deploy", "1.1.0")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "router metrics" in res.stderr and "rolled_back" in res.stderr
    assert failed_not_by(results, "1.1.0") == []
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"
    assert s["marks"]["1.1.0"] == "bad"
    fail = [a for a in s["analysis"] if a["decision"] == "rollback"]
    assert fail and fail[0]["step"] == "canary:5"
    why = s["last_deployment"]["reason"]
    assert why.startswith("step canary:5: ") and why.count("step canary:5") == 1, why
    numbers = fail[0]["measurements"][0]["numbers"]
    assert (
        numbers["canary_errors"] >= 1 and numbers["e_value"] >= numbers["threshold"]
    ) or numbers["canary_error_rate"] > 0.05


def test_given_a_canary_50pct_slower_when_analysed_then_rolled_back(project):
    project.configure(strategy={"type": "canary", "steps": [20, 100], "pause_s": 30}, analysis=FAST)
    project.release("1.0.0", faults={"delay_ms": [4, 12]})
    project.release("1.1.0", faults={"delay_ms": [4, 12], "delay_factor": 1.5})
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 150)
    res = project.cli("deploy", "1.1.0")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "slower than" in res.stderr
    assert [r for r in results if not 200 <= r.status < 300] == []
    assert status(project)["live_version"] == "1.0.0"


def test_given_a_noisy_canary_no_worse_than_stable_when_analysed_then_promoted(project):
    project.configure(
        strategy={"type": "canary", "steps": [20, 50, 100], "pause_s": 6, "bake_s": 2},
        analysis=FAST,
    )
    noisy = {"order_error_rate": 0.01, "delay_ms": [1, 12]}
    project.release("1.0.0", "1.1.0", faults=noisy)
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 200)
    res = project.cli("deploy", "1.1.0")
    results = load.stop()
    assert res.returncode == 0, res.stderr
    s = status(project)
    assert s["live_version"] == "1.1.0" and router_version(project) == "1.1.0"
    assert [a["step"] for a in s["analysis"]] == ["canary:20", "canary:50", "bake"]
    assert {a["decision"] for a in s["analysis"]} == {"advance"}
    errors_by = {
        v: sum(1 for r in results if r.version == v and r.status >= 500) for v in ("1.0.0", "1.1.0")
    }
    assert errors_by["1.1.0"] >= 1  # it was noisy, and still promoted
    assert failed_not_by(results, "1.1.0") == [
        r for r in results if r.status >= 500 and r.version == "1.0.0"
    ]


def test_given_dry_run_when_the_canary_is_bad_then_it_reports_and_does_not_act(project):
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 6, "bake_s": 0},
        analysis={**FAST, "dry_run": True},
    )
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 100)
    res = project.cli("deploy", "1.1.0")
    load.stop()
    assert res.returncode == 0, res.stderr
    s = status(project)
    assert s["live_version"] == "1.1.0"
    assert "dry-run" in {a["decision"] for a in s["analysis"]}


def test_given_a_step_waiting_for_promote_when_promoted_then_it_completes(project):
    project.configure(
        strategy={
            "type": "canary",
            "pause_s": 1,
            "bake_s": 0,
            "steps": [{"weight": 10, "until_promote": True}, 100],
        },
        analysis=FAST,
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    nothing = project.cli("promote")
    assert nothing.returncode == ExitCode.NOT_FOUND
    assert "nothing to promote" in nothing.stderr
    proc = run_in_background(project, "deploy", "1.1.0")
    s = wait_for(
        project,
        lambda s: (
            "canary:10" in str(s["weights"]) or len([w for w in s["weights"].values() if w]) == 2
        ),
    )
    assert s["live_version"] == "1.0.0" and s["in_progress"]["to"] == "1.1.0"
    time.sleep(2)
    assert proc.poll() is None  # still waiting
    project.cli("promote", check=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = status(project)
    assert s["live_version"] == "1.1.0" and s["in_progress"] is None


def test_given_a_canary_in_progress_when_rollback_is_asked_then_traffic_goes_back(project):
    project.configure(strategy={"type": "canary", "pause_s": 60, "steps": [30, 100]}, analysis=FAST)
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    proc = run_in_background(project, "deploy", "1.1.0")
    wait_for(project, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    asked = project.cli("rollback", check=True)
    assert "asked" in asked.stdout
    proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.ERROR
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"
    assert s["last_deployment"]["status"] == "rolled_back"
    assert s["marks"]["1.1.0"] == "bad"


def test_given_ask_mode_when_analysis_fails_then_it_waits_and_rollback_confirms(project):
    project.configure(
        strategy={"type": "canary", "pause_s": 30, "steps": [50, 100], "on_failure": "ask"},
        analysis=FAST,
    )
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.5})
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 100)
    proc = run_in_background(project, "deploy", "1.1.0")
    s = wait_for(project, lambda s: any(a["decision"] == "confirm" for a in s["analysis"]))
    assert s["live_version"] == "1.0.0" and s["in_progress"] is not None
    project.cli("rollback", check=True)
    proc.communicate(timeout=60)
    load.stop()
    assert status(project)["live_version"] == "1.0.0"
    assert proc.returncode == ExitCode.ERROR


def test_given_invalid_steps_or_unknown_provider_then_config_error_and_state_unharmed(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    project.configure(strategy={"type": "canary", "steps": [50, 10, 100]})
    bad = project.cli("deploy", "1.1.0")
    assert bad.returncode == ExitCode.CONFIG
    assert "rollwise.yaml" in bad.stderr and "must increase" in bad.stderr
    project.configure(
        strategy={"type": "canary"}, analysis={"checks": [{"type": "datadog", "name": "x"}]}
    )
    bad = project.cli("deploy", "1.1.0")
    assert bad.returncode == ExitCode.CONFIG and "datadog" in bad.stderr
    project.configure(analysis={})
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"


def test_given_a_json_report_when_status_then_analysis_numbers_are_there(project):
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 3, "bake_s": 0},
        analysis={**FAST, "router": {"min_requests": 20}},
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 60)
    project.cli("deploy", "1.1.0", check=True)
    load.stop()
    decision = status(project)["analysis"][0]
    m = decision["measurements"][0]
    assert decision["decision"] == "advance" and m["provider"] == "router"
    assert m["numbers"]["canary_requests"] >= 20
    assert {"stable_requests", "e_value", "threshold"} <= set(m["numbers"])
    events = [
        json.loads(line) for line in project.cli("audit", "export", check=True).stdout.splitlines()
    ]
    assert any(e["action"] == "analysis" for e in events)


def test_given_rolling_batches_when_the_release_is_good_then_replaced_without_failures(project):
    project.configure(
        instances=3,
        strategy={"type": "rolling", "batch_size": 2, "pause_s": 2},
        analysis={**FAST, "router": {"min_requests": 10}},
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 150)
    res = project.cli("deploy", "1.1.0")
    results = load.stop()
    assert res.returncode == 0, res.stderr
    assert "rolling:1" in res.stderr and "rolling:2" in res.stderr
    assert [r for r in results if not 200 <= r.status < 300] == []
    s = status(project)
    assert s["live_version"] == "1.1.0"
    assert sorted(i["version"] for i in s["instances"]) == ["1.1.0"] * 3


def test_given_rolling_batches_when_a_batch_is_bad_then_old_instances_come_back(project):
    project.configure(
        instances=3, strategy={"type": "rolling", "batch_size": 1, "pause_s": 4}, analysis=FAST
    )
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    old = {i["name"] for i in status(project)["instances"]}
    load = start_load(project, 150)
    res = project.cli("deploy", "1.1.0")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert failed_not_by(results, "1.1.0") == []
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["marks"]["1.1.0"] == "bad"
    assert {i["name"] for i in s["instances"] if i["alive"]} == old
    assert {w for n, w in s["weights"].items() if n in old} == {1}


def test_given_a_rolling_deploy_killed_after_a_batch_then_recovery_restarts_old_instances(project):
    project.configure(
        instances=3,
        strategy={"type": "rolling", "batch_size": 1, "pause_s": 0},
        analysis={**FAST, "router": {"enabled": False}},
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    old = {i["name"] for i in status(project)["instances"]}
    killed = project.cli("deploy", "1.1.0", env={"ROLLWISE_FAILPOINT": "rolling:2:before"})
    assert killed.returncode == -9
    split = status(project)["weights"]  # status only reads: traffic stays as it was
    assert status(project)["weights"] == split and any(n not in old for n in split)
    # recover: the stopped old instance starts again, then traffic goes back to it
    assert "rolled it back" in project.cli("recover", check=True).stdout
    s = status(project)
    assert s["live_version"] == "1.0.0"
    assert {i["name"] for i in s["instances"] if i["alive"]} == old
    assert {n for n, w in s["weights"].items() if w} == old
    assert router_version(project) == "1.0.0"


def test_given_a_verify_checklist_when_deploying_and_rolling_back_then_it_runs_each_time(project):
    marker = project.root / "token-ok"
    marker.write_text("1")
    project.configure(
        verify=[
            {
                "type": "http",
                "name": "order sync lag",
                "url": "{router}/status",
                "json": {"sync.lag_s": "< 60", "sync.ok": "== true"},
            },
            {"type": "command", "name": "marketplace token valid", "run": f"test -f {marker}"},
        ]
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    marker.unlink()  # the token check fails after the next deploy: it is rolled back
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR
    assert "marketplace token valid: exit 1" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["last_deployment"]["status"] == "rolled_back"
    checks = [a for a in s["analysis"] if a["step"] == "checks"]
    assert [m["verdict"] for m in checks[0]["measurements"]] == ["pass", "fail"]
    # after traffic went back, the checklist ran again against 1.0.0 and was recorded
    assert [c["decision"] for c in checks] == ["rollback", "error"]
    marker.write_text("1")
    project.release("1.2.0")
    project.cli("deploy", "1.2.0", check=True)
    marker.unlink()
    rolled = project.cli("rollback", check=True)  # a rollback records its checklist
    assert "rolled back to 1.0.0" in rolled.stdout
    s = status(project)
    assert s["live_version"] == "1.0.0"
    checks = [a for a in s["analysis"] if a["step"] == "checks"]
    assert checks[-1]["decision"] == "error"
    assert checks[-1]["measurements"][1]["verdict"] == "fail"


def test_given_blue_green_when_the_preview_fails_then_nothing_is_switched(project):
    project.configure(
        strategy={"type": "blue-green", "bake_s": 1},
        verify=[
            {
                "type": "http",
                "name": "status",
                "url": "{router}/status",
                "json": {"version": '== "1.0.0"'},
            }
        ],
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    res = project.cli("deploy", "1.1.0")
    assert res.returncode == ExitCode.ERROR and "step preview" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and s["last_deployment"]["status"] == "failed"
    preview = next(a for a in s["analysis"] if a["step"] == "preview")
    assert preview["measurements"][0]["numbers"]["url"].endswith("/status")
    assert s["router"] not in preview["measurements"][0]["numbers"]["url"]  # the new instance
    project.configure(verify=[{"type": "http", "name": "status", "url": "{router}/status"}])
    refused = project.cli("deploy", "1.1.0")  # marked bad by its failed preview
    assert refused.returncode == ExitCode.ERROR and "--force" in refused.stderr
    # marked bad before any traffic: no incident to name
    assert incident_of(project, "1.1.0") is None
    project.cli("deploy", "1.1.0", "--force", "--reason", "the check was wrong", check=True)
    s = status(project)
    assert s["live_version"] == "1.1.0"
    assert [a["step"] for a in s["analysis"]] == ["preview", "checks", "bake"]


def test_given_a_canary_that_no_request_reaches_then_it_says_why_it_waits_and_aborts(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 1, "max_pause_s": 2},
        analysis={**FAST, "router": {"min_requests": 20}},
    )

    res = project.cli("deploy", "1.1.0")

    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "no request reached the new release" in res.stderr
    assert "paused: waiting up to 2 s (strategy.max_pause_s)" in res.stderr
    assert "`rollwise promote` goes on now, `rollwise abort` goes back" in res.stderr
    assert "no conclusion after 2 s paused" in res.stderr
    s = status(project)
    assert s["live_version"] == "1.0.0" and router_version(project) == "1.0.0"
    assert s["last_deployment"]["status"] == "aborted"
