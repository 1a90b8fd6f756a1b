"""Incidents on real rollbacks of the example app: a bad canary rolled back by the router
analysis under load, and a rollback asked for later; closing with a root cause and a
fix-forward release; a release marked bad names its incident when refused."""

from __future__ import annotations

import json

from rollwise.errors import ExitCode
from tests.helpers import FAST, start_load


def test_given_a_bad_canary_and_a_later_rollback_then_two_incidents_with_timelines(project):
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    project.configure(strategy={"type": "canary", "steps": [50, 100], "pause_s": 30}, analysis=FAST)
    load = start_load(project, 50)
    failed = project.cli("deploy", "1.1.0")
    load.stop()
    assert failed.returncode == ExitCode.ERROR, failed.stderr
    [auto] = json.loads(project.cli("incident", "list", "--json", check=True).stdout)
    assert (auto["how"], auto["bad_version"], auto["restored_version"], auto["status"]) == (
        "automatic",
        "1.1.0",
        "1.0.0",
        "open",
    )
    shown = json.loads(project.cli("incident", "show", auto["id"], "--json", check=True).stdout)
    whats = [r["what"] for r in shown["timeline"]]
    first_bad = next(i for i, w in enumerate(whats) if w.startswith("first bad signal"))
    assert whats.index("traffic back to 1.0.0") > first_bad, whats
    assert shown["evidence"]["measurements"], shown["evidence"]
    assert "error rate" in shown["evidence"]["reason"]
    refused = project.cli("deploy", "1.1.0")
    assert refused.returncode != 0 and f"incident {auto['id']} (open)" in refused.stderr
    no_fix = project.cli(
        "incident", "close", auto["id"], "--root-cause", "bad query", "--fix", "1.1.1"
    )
    assert (
        no_fix.returncode == ExitCode.NOT_FOUND and "release 1.1.1 does not exist" in no_fix.stderr
    )
    project.release("1.1.1")
    closed = project.cli(
        "incident",
        "close",
        auto["id"].lower(),
        "--root-cause",
        "orders query fails on empty carts",
        "--fix",
        "1.1.1",
        check=True,
    )
    assert f"{auto['id']} closed" in closed.stdout
    again = project.cli("incident", "close", auto["id"], "--root-cause", "x", "--fix", "1.1.1")
    assert again.returncode != 0 and "was closed by" in again.stderr
    project.configure(strategy={"type": "all-at-once"})  # no load from here on
    project.cli("deploy", "1.1.1", check=True)
    project.cli("rollback", "--yes", check=True)
    manual, first = json.loads(project.cli("incident", "list", "--json", check=True).stdout)
    assert (manual["how"], manual["bad_version"], manual["restored_version"]) == (
        "rollback",
        "1.1.1",
        "1.0.0",
    )
    assert (first["status"], first["fix"]) == ("closed", "1.1.1")
    open_only = project.cli("incident", "list", "--open", check=True).stdout
    assert manual["id"] in open_only and first["id"] not in open_only
    events = [
        json.loads(x)
        for x in project.cli("audit", "export", check=True).stdout.split("\n")
        if x.startswith("{")
    ]
    assert [e["data"]["incident"] for e in events if e["action"] == "incident"] == [first["id"]]
    unknown = project.cli("incident", "show", "INC-999")
    assert unknown.returncode == ExitCode.NOT_FOUND and "no incident 'INC-999'" in unknown.stderr
