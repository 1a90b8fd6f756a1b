"""Drill plans, the fault wrapper's command, and the report's figures on synthetic
deployments, journals and events, by equality."""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any

import pytest

from rollwise import drill as dr
from rollwise.config.schema import TargetConfig
from rollwise.controller import drills
from rollwise.errors import RollwiseError, UsageError
from rollwise.targets.ssh import Layout


def plan(scenario: str, fault: dr.Fault | None = None, load: float = 50.0) -> dr.Plan:
    return dr.make_plan(
        scenario,
        "staging",
        live="1.0.0",
        base="1.1.0" if scenario in (dr.MANUAL_ROLLBACK, dr.FAILING_MIGRATION) else "1.0.0",
        number=3,
        fault=fault,
        load_rps=load,
        objectives=dr.Objectives(restore_s=300.0, detect_s=10.0),
        hold_s=1.0,
    )


def test_given_a_bad_canary_then_the_plan_deploys_the_live_code_with_the_default_fault():
    assert plan(dr.BAD_CANARY) == dr.Plan(
        id="DRILL-3",
        scenario="bad-canary",
        env="staging",
        live="1.0.0",
        base="1.0.0",
        version="1.0.0+drill.3",
        fault=dr.Fault(error_rate=0.3),
        failing_migration=False,
        load_rps=50.0,
        load_request=("POST", "/orders"),
        hold_s=1.0,
        steps=(
            "snapshot tables",
            "register drill release",
            "start load",
            "deploy",
            "stop load",
            "compare tables",
            "retire drill release",
        ),
        objectives=dr.Objectives(restore_s=300.0, detect_s=10.0),
        analysis_dry_run=False,
        alert=None,
        expect="rolled_back",
    )


def test_given_each_scenario_then_its_steps_and_expected_end():
    got = {s: (plan(s).steps, plan(s).expect, plan(s).analysis_dry_run) for s in dr.SCENARIOS}
    common_head = ("snapshot tables", "register drill release", "start load")
    tail = ("stop load", "compare tables", "retire drill release")
    assert got == {
        "bad-canary": ((*common_head, "deploy", *tail), "rolled_back", False),
        "manual-rollback": (
            (*common_head, "deploy", "write under load", "roll back", *tail),
            "succeeded",
            False,
        ),
        "failing-migration": ((*common_head, "deploy", *tail), "failed", False),
        "alert": ((*common_head, "serve webhook", "deploy", *tail), "rolled_back", True),
    }


def test_given_no_load_then_the_plan_neither_starts_nor_stops_one():
    assert "start load" not in plan(dr.MANUAL_ROLLBACK, load=0).steps
    assert "stop load" not in plan(dr.MANUAL_ROLLBACK, load=0).steps


def test_given_a_release_that_never_gets_healthy_then_the_deploy_must_fail_not_roll_back():
    assert plan(dr.BAD_CANARY, dr.Fault(crash_on_start=True)).expect == "failed"
    assert plan(dr.BAD_CANARY, dr.Fault(fail_health=True)).expect == "failed"
    assert plan(dr.BAD_CANARY, dr.Fault(latency_ms=200)).expect == "rolled_back"


def test_given_a_fault_where_the_scenario_injects_none_then_it_is_refused():
    with pytest.raises(UsageError, match="--fault does not apply to manual-rollback"):
        plan(dr.MANUAL_ROLLBACK, dr.Fault(error_rate=0.5))
    with pytest.raises(UsageError, match="alert fires on failed requests"):
        plan(dr.ALERT, dr.Fault(latency_ms=100))
    with pytest.raises(UsageError, match="unknown scenario 'chaos'"):
        plan("chaos")


def test_fault_specs_parse_and_render_back():
    fault = dr.Fault.parse(["error-rate=0.25", "latency-ms=150", "crash-on-start"])
    assert fault == dr.Fault(error_rate=0.25, latency_ms=150.0, crash_on_start=True)
    assert fault.args() == ["--error-rate", "0.25", "--latency-ms", "150", "--crash-on-start"]
    assert fault.describe() == "error-rate 0.25 latency-ms 150 crash-on-start"
    for bad in (["error-rate"], ["error-rate=lots"], ["fail-health=1"], ["explode"]):
        with pytest.raises(UsageError, match="is not a fault"):
            dr.Fault.parse(bad)
    with pytest.raises(UsageError, match="share from 0 to 1"):
        dr.Fault.parse(["error-rate=1.5"])


def test_the_wrapped_command_keeps_the_apps_command_whole_with_its_port_inside():
    cmd = dr.wrapped_command(
        "env X='a b' python3 app.py --port {port} --host {host}",
        dr.Fault(error_rate=0.3),
        "1.0.0+drill.3",
        "/venv/bin/python",
    )
    assert shlex.split(cmd) == [
        "/venv/bin/python",
        "-m",
        "rollwise.faults",
        "--error-rate",
        "0.3",
        "--only-version",
        "1.0.0+drill.3",
        "--health-path",
        "/health",
        "--",
        "env X='a b' python3 app.py --port {inner_port} --host {inner_host}",
    ]
    assert "{port}" not in cmd and "{host}" not in cmd  # the agent fills in only the outer ones


def test_on_ssh_hosts_the_wrapper_runs_with_the_hosts_python_and_rollwise_modules():
    ssh = TargetConfig(type="ssh", hosts=[{"address": "10.0.0.2"}], ssh={"python": "python3.11"})
    python = drills.faults_python(ssh, "shop", "staging")
    lib = Layout(ssh, "shop", "staging").lib
    assert python == ["env", f"PYTHONPATH={lib}", "python3.11"]
    assert lib.startswith("/srv/rollwise/lib/")
    assert shlex.split(dr.wrapped_command("app --port {port}", dr.Fault(), "2+drill.1", python))[
        :5
    ] == [*python, "-m", "rollwise.faults"]
    assert drills.faults_python(TargetConfig(type="local"), "shop", "dev") == [sys.executable]


def test_faults_need_instances_that_run_the_run_command():
    containers = TargetConfig(type="ssh", hosts=[{"address": "10.0.0.2"}], runtime="container")
    assert [drills._runs_processes(t) for t in (TargetConfig(type="local"), containers)] == [
        True,
        False,
    ]


def test_drill_versions_are_numbered_after_the_highest_one():
    assert dr.next_number(["1.0.0", "1.0.0+drill.2", "1.1.0+drill.9", "1.2.0+build.4"]) == 10
    assert dr.next_number([]) == 1
    assert dr.drill_version("1.1.0+build.7", 4) == "1.1.0+drill.4"
    assert [dr.is_drill_version(v) for v in ("1.0.0+drill.1", "1.0.0", None)] == [
        True,
        False,
        False,
    ]


def test_a_production_environment_is_refused_unless_forced_with_a_reason():
    assert dr.refuse_production("staging", False, None) is False
    assert dr.refuse_production("prod", True, "INC-9 follow-up") is True
    with pytest.raises(RollwiseError, match="prod is marked `production: true`") as e:
        dr.refuse_production("prod", True, None)
    assert "--force" in e.value.hint and e.value.where == "environments.prod.production"


# --- figures from what rollwise recorded ---------------------------------------------------


def dep(i: int, kind: str, frm: str | None, to: str, status: str, at: float, end: float) -> dict:
    return {
        "id": i,
        "env": "staging",
        "kind": kind,
        "from_version": frm,
        "to_version": to,
        "status": status,
        "created_at": at,
        "updated_at": end,
        "actor": "ci",
        "reason": None,
        "request_by": None,
    }


def row(dep_id: int, step: str, phase: str, at: float, **data: Any) -> dict:
    return {"deployment_id": dep_id, "step": step, "phase": phase, "at": at, "data": data}


def event(action: str, outcome: str, ts: float, reason: str = "", **data: Any) -> dict:
    return {"action": action, "outcome": outcome, "ts": ts, "reason": reason, "data": data}


CANARY = [
    row(7, "start", "started", 100.0),
    row(7, "start", "done", 100.5),
    row(7, "health", "done", 101.0),
    row(7, "canary:50", "started", 101.2),
    row(7, "canary:50", "failed", 103.0, error="errors"),
    row(7, "undo", "started", 103.01),
    row(
        7,
        "undo",
        "done",
        103.4,
        status="rolled_back",
        checks={"checks": 1, "passed": True, "decision": "all checks passed"},
    ),
]


def test_given_a_canary_caught_by_analysis_then_times_run_from_its_first_traffic():
    p = plan(dr.BAD_CANARY)
    deps = [dep(7, "deploy", "1.0.0", p.version, "rolled_back", 99.0, 103.4)]
    events = [
        event("analysis", "continue", 102.0, deployment=7, step="canary:50"),
        event("analysis", "rollback", 102.9, "error rate 30%", deployment=7, step="canary:50"),
    ]
    m = dr.moments(p, deps, CANARY, events)
    assert (m.fault_at, m.detected_at, m.traffic_back_at, m.restored_at) == (
        101.2,
        102.9,
        103.01,
        103.4,
    )
    assert m.detected_by == "analysis (error rate 30%)"
    assert m.figures() == {"detect_s": 1.7, "traffic_back_s": 1.81, "restore_s": 2.2}
    assert dr.checklist(CANARY) == [
        {
            "deployment": 7,
            "after": "undo",
            "checks": 1,
            "passed": True,
            "decision": "all checks passed",
        }
    ]


def test_given_an_alert_then_detection_is_the_rollback_request_it_made():
    p = plan(dr.ALERT)
    deps = [dep(7, "deploy", "1.0.0", p.version, "rolled_back", 99.0, 103.4)]
    events = [
        event("analysis", "dry-run", 102.0, deployment=7, step="canary:50"),
        event("rollback", "requested", 102.5, "DRILL-3: 5 of 50 failed", deployment=7),
    ]
    m = dr.moments(p, deps, CANARY, events)
    assert (m.detected_at, m.detected_by) == (102.5, "alert (DRILL-3: 5 of 50 failed)")


def test_given_a_crash_on_start_then_the_fault_begins_at_the_start_step():
    p = plan(dr.BAD_CANARY, dr.Fault(crash_on_start=True))
    journal = [
        row(7, "start", "started", 100.0),
        row(7, "start", "done", 100.1),
        row(7, "health", "started", 100.1),
        row(7, "health", "failed", 100.4, error="exited before it was ready\nhint: read the log"),
        row(7, "undo", "started", 100.41),
        row(7, "undo", "done", 100.5, status="failed"),
    ]
    deps = [dep(7, "deploy", "1.0.0", p.version, "failed", 99.0, 100.5)]
    m = dr.moments(p, deps, journal, [])
    assert m.figures() == {"detect_s": 0.4, "traffic_back_s": 0.41, "restore_s": 0.5}
    assert m.detected_by == "health failed (exited before it was ready)"


def test_given_a_manual_rollback_then_times_run_from_the_drills_request():
    p = plan(dr.MANUAL_ROLLBACK)
    deps = [
        dep(7, "deploy", "1.0.0", p.version, "succeeded", 90.0, 95.0),
        dep(8, "rollback", p.version, "1.0.0", "succeeded", 100.05, 101.0),
    ]
    journal = [
        row(7, "switch", "done", 92.0),
        row(8, "start", "started", 100.1),
        row(8, "switch", "done", 100.6),
        row(8, "migrate_down", "done", 100.7, parked={"orders.channel": {"rows": 40}}),
    ]
    events = [event("drill", "rollback asked", 100.0, id="DRILL-3")]
    m = dr.moments(p, deps, journal, events)
    assert m.figures() == {"detect_s": 0.05, "traffic_back_s": 0.6, "restore_s": 1.0}
    assert dr.parked(journal) == {"orders.channel": 40}


def test_given_no_deployment_of_the_drill_release_then_it_says_the_drill_stopped_early():
    with pytest.raises(
        RollwiseError, match=re.escape("no deployment of 1.0.0+drill.3 was recorded")
    ):
        dr.moments(plan(dr.BAD_CANARY), [], [], [])


def table(columns: tuple[str, ...], *rows: tuple[str, ...]) -> dr.TableState:
    return dr.TableState(columns, {r[0]: r for r in rows})


def test_tables_compared_on_the_columns_both_schemas_have():
    before = {"orders": table(("id", "qty"), ("a", "1"), ("b", "2"))}
    after = {"orders": table(("id", "qty", "channel"), ("a", "1", "web"), ("b", "2", "web"))}
    after["orders"].rows["c"] = ("c", "3", "web")
    got = dr.compare(before, after, acknowledged=1, parked_rows={})
    assert (got["rows_lost"], got["rows_missing"], got["rows_changed"], got["rows_new"]) == (
        0,
        0,
        0,
        1,
    )
    assert got["tables"]["orders"]["columns_added"] == ["channel"]
    assert got["consistent"] and not got["schema_same"]


def test_a_missing_row_a_changed_one_and_an_unaccounted_write_are_each_lost_or_flagged():
    before = {"orders": table(("id", "qty"), ("a", "1"), ("b", "2"))}
    after = {"orders": table(("id", "qty"), ("b", "5"))}
    got = dr.compare(before, after, acknowledged=2, parked_rows={})
    assert (got["rows_missing"], got["rows_changed"], got["rows_lost"]) == (1, 1, 3)
    assert not got["consistent"]


def test_a_dropped_table_parked_whole_is_not_lost():
    before = {"t": table(("id",), ("a",)), "orders": table(("id",))}
    after = {"orders": table(("id",))}
    assert dr.compare(before, after, 0, {"t": 1})["rows_lost"] == 0
    assert dr.compare(before, after, 0, {})["rows_lost"] == 1


def test_checksums_do_not_depend_on_row_order():
    one = dr.TableState(("id",), {"a": ("a",), "b": ("b",)})
    two = dr.TableState(("id",), {"b": ("b",), "a": ("a",)})
    assert one.checksum() == two.checksum() != dr.TableState(("id",), {"a": ("a",)}).checksum()


def test_requests_by_version_and_per_quarter_second():
    load = [(10.0, 201, "1.0.0"), (10.1, 500, "1.0.0+drill.3"), (10.3, 0, ""), (10.4, 201, "1.0.0")]
    assert dr.requests_by_version(load) == {
        "1.0.0": {"sent": 2, "failed": 0},
        "1.0.0+drill.3": {"sent": 1, "failed": 1},
        "none": {"sent": 1, "failed": 1},
    }
    assert dr.series(load, 10.0) == [
        {
            "t": 0.0,
            "versions": {
                "1.0.0": {"sent": 1, "failed": 0},
                "1.0.0+drill.3": {"sent": 1, "failed": 1},
            },
        },
        {
            "t": 0.25,
            "versions": {"none": {"sent": 1, "failed": 1}, "1.0.0": {"sent": 1, "failed": 0}},
        },
    ]


def test_the_verdict_names_each_objective_and_fails_on_any():
    p = plan(dr.BAD_CANARY)
    figures: dict[str, float | None] = {"detect_s": 12.0, "traffic_back_s": 12.1, "restore_s": 13.0}
    verdict = dr.judge(p, figures, "rolled_back", "1.0.0", None, [])
    assert [(v["name"], v["ok"]) for v in verdict] == [
        ("restore_s", True),
        ("detect_s", False),  # over the 10 s objective
        ("1.0.0+drill.3 ended rolled_back", True),
        ("1.0.0 serves again", True),
    ]


def test_a_drills_deployments_are_not_changes_but_drill_rows_of_the_report():
    from rollwise import report as rp

    deps = [
        dep(1, "deploy", None, "1.0.0", "succeeded", 100.0, 110.0),
        dep(2, "deploy", "1.0.0", "1.0.0+drill.1", "rolled_back", 200.0, 203.0),
        dep(3, "deploy", "1.0.0", "1.1.0+drill.2", "succeeded", 300.0, 310.0),
        dep(4, "rollback", "1.1.0+drill.2", "1.0.0", "succeeded", 320.0, 321.0),
    ]
    period = rp.Period(0.0, 1000.0)
    staging = rp.figures(deps, lambda v: 50.0, period)["environments"]["staging"]
    assert (staging["deployments"], staging["changes"], staging["change_failures"]) == (1, 1, 0)
    assert staging["rollbacks"] == 0
    stored = {
        "id": "DRILL-1",
        "env": "staging",
        "scenario": "bad-canary",
        "passed": True,
        "started_at": 199.0,
        "detect_s": 1.5,
        "traffic_back_s": 1.51,
        "restore_s": 2.0,
        "requests_failed": 7,
        "requests_sent": 300,
        "rows_lost": 0,
        "plan": {"objectives": {"restore_s": 300.0}},
    }
    assert rp.drill_rows([stored, stored | {"started_at": 2000.0}], period) == [
        {
            "id": "DRILL-1",
            "env": "staging",
            "scenario": "bad-canary",
            "passed": True,
            "started_at": 199.0,
            "detect_s": 1.5,
            "traffic_back_s": 1.51,
            "restore_s": 2.0,
            "requests_failed": 7,
            "requests_sent": 300,
            "rows_lost": 0,
            "objective_restore_s": 300.0,
        }
    ]
