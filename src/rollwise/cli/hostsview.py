"""On a terminal, a live table of a fleet's hosts by what each step did there (the agent
started, the release prepared, instances started, health, stops), redrawn as hosts report.
Off a terminal, each host report is one line instead (`cli.app._progress`)."""

from __future__ import annotations

import atexit
import re
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rollwise import reasons
from rollwise.audit import Event

COLUMNS = ("agent", "prepare", "start", "health", "stop")
ENDS = ("deploy", "rollback", "recover")


class HostsView:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[str, dict[str, Text]] = {}
        self.live: Live | None = None
        atexit.register(self.stop)

    def __call__(self, ev: Event) -> None:
        if ev.action == "host":
            data = dict(ev.data)
            host, step = str(data.pop("host", "?")), str(data.pop("step", "?"))
            self.rows.setdefault(host, {})[step] = _cell(ev.outcome, data)
            self._show()
        elif ev.action in ENDS and ev.outcome != "started":
            self.stop()

    def table(self) -> Table:
        t = Table(box=None, pad_edge=False, header_style="bold")
        t.add_column("host")
        for c in COLUMNS:
            t.add_column(c)
        for host in sorted(self.rows, key=_natural):
            row = self.rows[host]
            t.add_row(host, *(row.get(c, Text("·", style="dim")) for c in COLUMNS))
        return t

    def _show(self) -> None:
        if self.live is None:
            self.live = Live(self.table(), console=self.console, refresh_per_second=8,
                             transient=False)
            self.live.start()
        else:
            self.live.update(self.table())

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self.table())
            self.live.stop()
            self.live = None
            self.rows.clear()  # the next operation's view starts empty


def _cell(outcome: str, data: dict[str, Any]) -> Text:
    ok = outcome in (reasons.OK, "started")
    detail = f" {data['ms']} ms" if "ms" in data else ""
    if data.get("uploaded_bytes"):
        detail += f" {int(data['uploaded_bytes']) / 1e6:.1f} MB"
    return Text.assemble(("✓" if ok else "✗", "green" if ok else "red"), detail)


def _natural(name: str) -> tuple[Any, ...]:
    """web2 before web10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
