"""The live panel a terminal shows while a deployment runs, and for `status --watch`."""

import io

from rich.console import Console

from rollwise.audit import Event
from rollwise.cli.liveview import Board, DeployView, board_from_status, hosts_table, render

BUCKETS = [1.0, 2.0, 4.0, "inf"]


def host(name: str, step: str, outcome: str = "ok", **data: object) -> Event:
    return Event(
        "host", outcome, "ci", env="prod", data={"host": name, "step": step, **data}, record=False
    )


def text_of(renderable: object, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_each_host_gets_a_row_and_each_step_a_mark_until_the_operation_ends():
    out = io.StringIO()
    view = DeployView(Console(file=out, force_terminal=True, width=100, color_system=None))
    view(host("web10", "prepare", uploaded_bytes=5_000_000, ms=250))
    view(host("web2", "prepare", uploaded_bytes=0, ms=40))
    view(host("web2", "start", instance="1.1.0-a-0"))
    view(host("web2", "health", "failed", instance="1.1.0-a-0"))
    rows = [ln.split() for ln in text_of(hosts_table(view.board.hosts)).splitlines()]
    assert rows[0] == ["host", "agent", "prepare", "start", "health", "stop"]
    assert rows[1] == ["web2", "·", "✓", "40", "ms", "✓", "✗", "·"]  # web2 before web10
    assert rows[2] == ["web10", "·", "✓", "250", "ms", "5.0", "MB", "·", "·", "·"]
    assert view.live is not None
    view(Event("deploy", "rolled_back", "ci", env="prod"))
    assert view.live is None and view.board == Board()
    assert "web10" in out.getvalue()  # the last state stays on the terminal


def look(elapsed: float, percent: float, decision: tuple[str, str]) -> Event:
    return Event(
        "look",
        "progress",
        "ci",
        env="prod",
        version="1.1.0",
        record=False,
        data={
            "step": "canary:25",
            "elapsed_s": elapsed,
            "pause_s": 60.0,
            "percent": percent,
            "stable": "1.0.0",
            "decision": {"action": decision[0], "reason": decision[1]},
            "versions": {
                "1.1.0": {"requests": 200, "errors": 9, "p50_ms": 2.0, "p99_ms": 4.0},
                "1.0.0": {"requests": 600, "errors": 0, "p50_ms": 1.0, "p99_ms": 2.0},
            },
            "measurements": [],
        },
    )


def test_a_canary_shows_its_step_clock_weights_numbers_and_decision():
    view = DeployView(
        Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    )
    view(Event("deploy", "started", "ci", env="prod", version="1.1.0"))
    view(Event("step", "ok", "ci", env="prod", data={"step": "health"}))
    view(Event("step", "started", "ci", env="prod", data={"step": "canary:25"}))
    view(look(15.0, 25.0, ("continue", "error rate 4.50% vs 0.00% (sequential test 12 < 20)")))
    lines = [ln.strip("│ ").split() for ln in text_of(render(view.board), 120).splitlines()]
    assert ["canary:25", "15", "s", "of", "60", "s,", "45", "s", "left"] in lines
    assert ["1.1.0", "(new)", "25%", "200", "9", "4.50%", "2", "4"] in lines
    assert ["1.0.0", "(live)", "75%", "600", "0", "0.00%", "1", "2"] in lines
    assert [
        "…",
        "analysis:",
        "continue:",
        "error",
        "rate",
        "4.50%",
        "vs",
        "0.00%",
        "(sequential",
        "test",
        "12",
        "<",
        "20)",
    ] in lines
    assert ["✓", "health", "…", "canary:25"] in lines
    assert text_of(render(view.board), 120).splitlines()[0].startswith("╭─ deploy 1.1.0 to prod")
    view(Event("analysis", "rollback", "ci", env="prod", reason="error rate 9% vs 0%"))
    assert view.board.decision == ("rollback", "error rate 9% vs 0%")


def test_status_watch_board_from_status_and_router_counters():
    status = {
        "live_version": "1.0.0",
        "in_progress": {
            "id": 7,
            "kind": "deploy",
            "to": "1.1.0",
            "steps_done": ["health", "start"],
            "step": "canary:10",
        },
        "instances": [{"name": "a", "version": "1.0.0"}, {"name": "b", "version": "1.1.0"}],
        "weights": {"a": 90, "b": 10},
        "analysis": [{"decision": "continue", "reason": "too few requests"}],
    }
    counters = {
        "1.1.0": {
            "requests": 10,
            "status_5xx": 1,
            "conn_errors": 0,
            "buckets_ms": BUCKETS,
            "bucket_counts": [5, 4, 1, 0],
        }
    }
    assert board_from_status("prod", status, counters) == Board(
        title="prod: 1.0.0 live, deploy to 1.1.0 in progress",
        step="canary:10",
        percent=10.0,
        canary="1.1.0",
        stable="1.0.0",
        versions={
            "1.1.0": {"requests": 10, "errors": 1, "p50_ms": 1.0, "p99_ms": 4.0},
            "1.0.0": {"requests": 0, "errors": 0, "p50_ms": None, "p99_ms": None},
        },
        decision=("continue", "too few requests"),
    )
    idle = board_from_status("prod", {"live_version": "1.0.0", "in_progress": None}, {})
    assert (idle.title, idle.step, idle.canary) == ("prod: 1.0.0 live", "idle", None)
    assert ["1.0.0", "(live)", "100%", "0", "0", "-", "-", "-"] in [
        ln.strip("│ ").split() for ln in text_of(render(idle)).splitlines()
    ]
