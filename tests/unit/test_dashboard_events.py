"""Which audit events a deployment's dashboard page lists."""

from __future__ import annotations

from typing import Any

from rollwise.api.dashboard import belongs

DEP = {"id": 7, "created_at": 100.0, "updated_at": 130.0}


def event(ts: float, action: str = "deploy", **data: Any) -> dict[str, Any]:
    return {"ts": ts, "action": action, "data": data}


def test_a_deployments_page_lists_its_own_events_and_unnamed_ones_while_it_ran() -> None:
    events = [
        event(99.0),  # before it
        event(101.0),  # while it ran, names no deployment
        event(120.0, "switch", deployment=7),
        event(125.0, "deploy", deployment=8),  # a later deployment started within its window
        event(130.5, "analysis"),  # decisions have their own table
        event(130.9),  # the second after it ended
        event(140.0, "deploy", deployment=7),  # a later event about it (a mark, a recovery)
        event(200.0),
    ]
    assert [e["ts"] for e in events if belongs(e, DEP)] == [101.0, 120.0, 130.9, 140.0]
