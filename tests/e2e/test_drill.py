"""Drills on the example app under load, one per scenario: a bad canary (failed requests,
and a crash on start), a manual rollback across a migration, a migration that fails halfway,
and an alert that rolls back through the webhook; a production environment refused. Each
asserts on what the drill measured."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import yaml

from rollwise.errors import ExitCode
from tests.conftest import Project
from tests.helpers import FAST

OBJECTIVES = {"restore_s": 60, "detect_s": 30}
VERIFY = [
    {
        "type": "http",
        "name": "order sync lag",
        "url": "{router}/status",
        "json": {"sync.lag_s": "< 60"},
    }
]
CHANNEL = (
    "ALTER TABLE orders ADD COLUMN channel TEXT;\n",
    "ALTER TABLE orders DROP COLUMN channel;\n",
)


def live_on_1_0_0(project: Project, pause_s: float = 20, with_next: bool = False) -> None:
    """1.0.0 live (and 1.1.0, adding orders.channel, released but not deployed)."""
    project.configure(database={"url": "sqlite:///{shared}/orders.db"})
    project.release("1.0.0")
    if with_next:
        release_next(project)
    project.cli("deploy", "1.0.0", check=True)
    project.configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": pause_s, "bake_s": 0.5},
        analysis=FAST,
        verify=VERIFY,
        objectives=OBJECTIVES,
    )


def release_next(project: Project) -> None:
    """1.1.0: its migration 0002 adds orders.channel (its down migration drops it)."""
    (project.root / "migrations" / "0002_channel.up.sql").write_text(CHANNEL[0])
    (project.root / "migrations" / "0002_channel.down.sql").write_text(CHANNEL[1])
    project.release("1.1.0")


def drill(project: Project, *args: str, code: int = 0) -> dict[str, Any]:
    done = project.cli("drill", "run", "dev", "--load", "50", "--hold", "1", "--json", *args)
    assert done.returncode == code, done.stdout + done.stderr
    return json.loads(done.stdout)


def assert_data_kept(r: dict[str, Any]) -> None:
    data = r["data"]
    orders = data["tables"]["orders"]
    assert data["writes_acknowledged"] > 0
    assert orders["rows_after"] == orders["rows_before"] + data["writes_acknowledged"]
    assert (r["rows_lost"], data["rows_missing"], data["rows_changed"]) == (0, 0, 0)
    assert data["schema_same"], data["tables"]


def assert_manual_rollback_measured(r: dict[str, Any], restore_s: float) -> None:
    """The next release went out as the drill's and was rolled back by a person, under
    load with no failed request; its column's values were parked and no row was lost."""
    assert r["passed"], r["objectives"]
    assert r["plan"]["version"] == "1.1.0+drill.1" and r["status"] == "succeeded"
    assert r["detected_by"].startswith("a person")
    assert 0 < r["detect_s"] < r["traffic_back_s"] < r["restore_s"] < restore_s
    assert r["requests"]["1.1.0+drill.1"]["sent"] > 0 and r["requests_failed"] == 0
    assert r["data"]["parked"]["orders.channel"] > 0
    assert_data_kept(r)


def assert_migration_undone(r: dict[str, Any], restore_s: float) -> None:
    """The drill's migration failed halfway and nothing of it (or of 0002) stayed."""
    assert r["passed"], r["objectives"]
    assert r["status"] == "failed" and "rollwise_drill_missing" in r["detected_by"]
    assert 0 < r["detect_s"] <= r["restore_s"] < restore_s
    assert set(r["data"]["tables"]) == {"orders", "rollwise_schema"}  # no probe table, no 0002
    schema = r["data"]["tables"]["rollwise_schema"]
    assert schema["checksum_after"] == schema["checksum_before"]
    assert_data_kept(r)


def assert_alert_rolled_back(r: dict[str, Any], restore_s: float) -> None:
    """The drill's alert reached the webhook, which rolled the canary back."""
    assert r["passed"], r["objectives"]
    assert r["status"] == "rolled_back" and r["detected_by"].startswith("alert (DRILL-1:")
    assert r["alert"]["status"] == 202
    assert r["alert"]["answer"]["results"][0]["action"] == "requested"
    assert 0 < r["detect_s"] <= r["traffic_back_s"] <= r["restore_s"] < restore_s
    assert_data_kept(r)


def stored_orders(project: Project) -> int:
    db = project.root / ".rollwise" / "envs" / "dev" / "shared" / "orders.db"
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


def test_given_a_bad_canary_drill_then_analysis_catches_it_and_the_report_measures_it(project):
    live_on_1_0_0(project)
    page = project.root / "drill.html"
    r = drill(project, "--scenario", "bad-canary", "--fault", "error-rate=0.3", "--html", str(page))
    assert r["passed"], r["objectives"]
    assert (r["status"], r["live_after"]) == ("rolled_back", "1.0.0")
    assert r["detected_by"].startswith("analysis (router metrics: error rate")
    assert 0 < r["detect_s"] < OBJECTIVES["detect_s"]
    assert r["detect_s"] <= r["traffic_back_s"] <= r["restore_s"] < OBJECTIVES["restore_s"]
    drill_version = r["plan"]["version"]
    assert drill_version == "1.0.0+drill.1"
    assert r["requests"][drill_version]["failed"] > 0
    assert r["requests"]["1.0.0"]["failed"] == 0
    assert r["requests_failed"] == sum(v["failed"] for v in r["requests"].values())
    assert_data_kept(r)
    assert r["data"]["tables"]["orders"]["rows_after"] == stored_orders(project)
    assert [c["passed"] for c in r["checklist"]] == [True]
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 2 and "DRILL-1" in html
    listed = project.cli("drill", "list", "dev", check=True).stdout
    assert "DRILL-1" in listed and "passed" in listed
    shown = json.loads(project.cli("drill", "show", "drill-1", "--json", check=True).stdout)
    assert (shown["restore_s"], shown["rows_lost"]) == (r["restore_s"], 0)
    report = json.loads(project.cli("report", "--since", "1d", "--json", check=True).stdout)
    dev = report["environments"]["dev"]
    assert (dev["deployments"], dev["change_failures"]) == (1, 0), "a drill is no change"
    assert [d["id"] for d in report["drills"]] == ["DRILL-1"]
    releases = project.cli("release", "list", check=True).stdout
    assert drill_version not in releases, "the drill release is retired"
    assert drill_version not in (project.root / "rollwise.yaml").read_text()


def test_given_a_crash_or_a_failing_health_check_then_it_is_stopped_before_any_traffic(
    project,
):
    live_on_1_0_0(project)
    cfg = yaml.safe_load((project.root / "rollwise.yaml").read_text())
    cfg["health"]["ready_timeout_s"] = 2
    (project.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    crash = drill(project, "--scenario", "bad-canary", "--fault", "crash-on-start")
    sick = drill(project, "--scenario", "bad-canary", "--fault", "fail-health")
    for r in (crash, sick):
        assert r["passed"], r["objectives"]
        assert r["status"] == "failed" and r["detected_by"].startswith("health failed")
        assert set(r["requests"]) == {"1.0.0"} and r["requests_failed"] == 0
        assert_data_kept(r)
    assert "exited before it was ready" in crash["detected_by"]
    assert 0 < crash["detect_s"] <= crash["restore_s"] < 2  # the exit is seen at once
    assert "was not ready within 2 s: HTTP 503" in sick["detected_by"]
    assert 2 <= sick["detect_s"] <= sick["restore_s"] < 10


def test_given_a_manual_rollback_drill_then_writes_survive_and_the_dropped_column_is_parked(
    project,
):
    live_on_1_0_0(project, pause_s=1, with_next=True)
    r = drill(project, "--scenario", "manual-rollback")
    assert_manual_rollback_measured(r, OBJECTIVES["restore_s"])
    marks = json.loads(project.cli("status", "--json", check=True).stdout)["environments"]["dev"]
    assert marks["marks"].get("1.1.0") != "bad", "the real next release is not blamed"


def test_given_a_migration_that_fails_halfway_then_nothing_of_it_stays(project):
    live_on_1_0_0(project, with_next=True)
    r = drill(project, "--scenario", "failing-migration")
    assert_migration_undone(r, OBJECTIVES["restore_s"])


def test_given_an_alert_drill_then_the_webhook_rolls_the_canary_back(project):
    live_on_1_0_0(project)
    r = drill(project, "--scenario", "alert")
    assert_alert_rolled_back(r, OBJECTIVES["restore_s"])


def test_given_a_production_environment_then_a_drill_is_refused_without_force(project):
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)
    project.configure(production=True)
    refused = project.cli("drill", "run", "dev", "--scenario", "bad-canary")
    assert refused.returncode == ExitCode.ERROR, refused.stderr
    assert "dev is marked `production: true`" in refused.stderr and "--force" in refused.stderr
    no_reason = project.cli("drill", "run", "dev", "--scenario", "bad-canary", "--force")
    assert no_reason.returncode == ExitCode.USAGE
    events = [
        json.loads(x)
        for x in project.cli("audit", "export", check=True).stdout.splitlines()
        if x.startswith("{")
    ]
    assert [(e["action"], e["outcome"]) for e in events if e["action"] == "drill"] == [
        ("drill", "refused")
    ]
    assert project.cli("drill", "list", check=True).stdout.strip() == "no drills"
