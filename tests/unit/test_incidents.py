"""Incidents from deployments, closing events and the journal, by equality."""

from __future__ import annotations

from typing import Any

from rollwise.incidents import Incident, evidence, incidents, timeline


def dep(i: int, kind: str, frm: str | None, to: str, status: str, at: float, **kw: Any) -> dict:
    return {
        "id": i,
        "env": "prod",
        "kind": kind,
        "from_version": frm,
        "to_version": to,
        "status": status,
        "created_at": at,
        "updated_at": at + 30,
        "actor": "ci",
        "reason": kw.get("reason"),
        "request_by": kw.get("request_by"),
    }


HISTORY = [
    dep(1, "deploy", None, "1.0.0", "succeeded", 100),
    dep(2, "deploy", "1.0.0", "1.1.0", "rolled_back", 200, reason="step canary:10: errors"),
    dep(3, "deploy", "1.0.0", "1.1.1", "succeeded", 300),
    dep(4, "deploy", "1.1.1", "1.2.0", "aborted", 400),
    dep(5, "rollback", "1.1.1", "1.0.0", "succeeded", 500, reason="support tickets"),
    dep(6, "deploy", "1.0.0", "1.3.0", "failed", 600),
]


def test_rollbacks_of_both_kinds_are_incidents_newest_first():
    assert incidents(HISTORY, []) == [
        Incident(
            "INC-5", "prod", 530.0, "1.1.1", "1.0.0", "rollback", "ci", "support tickets", 5, 3
        ),
        Incident(
            "INC-2",
            "prod",
            230.0,
            "1.1.0",
            "1.0.0",
            "automatic",
            "analysis",
            "step canary:10: errors",
            2,
            2,
        ),
    ]


def test_a_closing_event_closes_its_incident_only():
    closing = {
        "outcome": "closed",
        "actor": "lead",
        "ts": 900.0,
        "data": {"incident": "INC-2", "root_cause": "N+1 query", "fix": "1.1.1"},
    }
    got = {
        i.id: (i.status, i.root_cause, i.fix, i.closed_by, i.closed_at)
        for i in incidents(HISTORY, [closing])
    }
    assert got == {
        "INC-5": ("open", None, None, None, None),
        "INC-2": ("closed", "N+1 query", "1.1.1", "lead", 900.0),
    }


def test_timeline_orders_journal_and_decisions_and_names_the_first_bad_signal():
    [_, automatic] = incidents(HISTORY, [])
    journal = [
        {"deployment_id": 2, "step": "start", "phase": "done", "at": 201.0, "data": {}},
        {
            "deployment_id": 2,
            "step": "canary:10",
            "phase": "failed",
            "at": 215.0,
            "data": {"error": "errors 9% vs 0%"},
        },
        {"deployment_id": 2, "step": "undo", "phase": "started", "at": 215.5, "data": {}},
        {
            "deployment_id": 2,
            "step": "undo",
            "phase": "done",
            "at": 218.0,
            "data": {
                "status": "rolled_back",
                "checks": None,
                "schema": None,
                "purged": {"redis": 3},
            },
        },
        {"deployment_id": 3, "step": "start", "phase": "done", "at": 301.0, "data": {}},
    ]
    m = {"name": "router metrics", "verdict": "fail", "reason": "errors 9% vs 0%"}
    decisions = [
        {
            "ts": 210.0,
            "outcome": "continue",
            "reason": "too few requests",
            "data": {"deployment": 2, "step": "canary:10", "measurements": []},
        },
        {
            "ts": 214.9,
            "outcome": "rollback",
            "reason": "errors 9% vs 0%",
            "data": {"deployment": 2, "step": "canary:10", "measurements": [m]},
        },
        {
            "ts": 310.0,
            "outcome": "rollback",
            "reason": "other",
            "data": {"deployment": 3, "step": "bake"},
        },
    ]
    assert [(r["at"], r["what"], r["detail"]) for r in timeline(automatic, journal, decisions)] == [
        (201.0, "start done", ""),
        (210.0, "analysis canary:10: continue", "too few requests"),
        (214.9, "first bad signal: analysis canary:10: rollback", "errors 9% vs 0%"),
        (215.0, "canary:10 failed", "errors 9% vs 0%"),
        (215.5, "traffic back to 1.0.0", ""),
        (218.0, "undo done: rolled_back", "purged: {'redis': 3}"),
    ]
    assert evidence(automatic, decisions) == {
        "step": "canary:10",
        "reason": "errors 9% vs 0%",
        "measurements": [m],
    }


def test_a_later_rollback_puts_traffic_back_at_its_switch():
    [manual, _] = incidents(HISTORY, [])
    journal = [
        {"deployment_id": 3, "step": "switch", "phase": "done", "at": 305.0, "data": {}},
        {"deployment_id": 5, "step": "switch", "phase": "started", "at": 505.0, "data": {}},
        {"deployment_id": 5, "step": "switch", "phase": "done", "at": 505.1, "data": {}},
    ]
    assert [(r["deployment"], r["what"]) for r in timeline(manual, journal, [])] == [
        (3, "switch done"),
        (5, "switch started"),
        (5, "traffic back to 1.0.0"),
    ]
