"""The live hosts table a terminal shows during a fleet rollout."""

import io

from rich.console import Console

from rollwise.audit import Event
from rollwise.cli.hostsview import HostsView


def host(name: str, step: str, outcome: str = "ok", **data: object) -> Event:
    return Event("host", outcome, "ci", env="prod", data={"host": name, "step": step, **data},
                 record=False)


def test_each_host_gets_a_row_and_each_step_a_mark_until_the_operation_ends():
    out = io.StringIO()
    view = HostsView(Console(file=out, force_terminal=True, width=100, color_system=None))
    view(host("web10", "prepare", uploaded_bytes=5_000_000, ms=250))
    view(host("web2", "prepare", uploaded_bytes=0, ms=40))
    view(host("web2", "start", instance="1.1.0-a-0"))
    view(host("web2", "health", "failed", instance="1.1.0-a-0"))
    table = Console(file=io.StringIO(), width=100, color_system=None)
    table.print(view.table())
    text = table.file.getvalue()  # type: ignore[attr-defined]
    rows = [ln.split() for ln in text.splitlines()]
    assert rows[0] == ["host", "agent", "prepare", "start", "health", "stop"]
    assert rows[1] == ["web2", "·", "✓", "40", "ms", "✓", "✗", "·"]  # web2 before web10
    assert rows[2] == ["web10", "·", "✓", "250", "ms", "5.0", "MB", "·", "·", "·"]
    assert view.live is not None
    view(Event("deploy", "rolled_back", "ci", env="prod"))
    assert view.live is None and view.rows == {}
    assert "web10" in out.getvalue()  # the last state stays on the terminal
