"""On a terminal, a live panel of a deployment as it runs: the step and the time left in it,
the new release's share of traffic, each version's requests, errors and latency, the
analysis decision with its evidence, and for a fleet a row per host with what each step did
there. The same panel, from status and the router, for `rollwise status --watch`. Off a
terminal the commands print lines instead (`cli.app._progress`)."""

from __future__ import annotations

import atexit
import re
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rollwise import reasons
from rollwise.audit import Event

ENDS = ("deploy", "rollback", "recover")
HOST_COLUMNS = ("agent", "prepare", "start", "health", "stop")
MARKS = {
    "advance": ("✓", "green"),
    "continue": ("…", "dim"),
    "rollback": ("✗", "red"),
    "pause": ("!", "yellow"),
}


@dataclass
class Board:
    """What the panel shows, as plain data (built from events or from status)."""

    title: str = ""
    step: str = ""
    elapsed_s: float | None = None
    pause_s: float | None = None
    percent: float | None = None
    canary: str | None = None
    stable: str | None = None
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    decision: tuple[str, str] | None = None  # action, reason
    steps: list[tuple[str, str]] = field(default_factory=list)  # name, outcome
    hosts: dict[str, dict[str, Text]] = field(default_factory=dict)  # host -> column -> cell


def render(b: Board) -> Panel:
    if not (b.title or b.step or b.versions):  # a fleet command with only host reports
        return Panel(hosts_table(b.hosts), title="hosts", title_align="left")
    head = Text(b.step or "waiting", style="bold")
    if b.elapsed_s is not None:
        head.append(f"  {b.elapsed_s:.0f} s", style="dim")
        if b.pause_s:
            head.append(
                f" of {b.pause_s:.0f} s, {max(0.0, b.pause_s - b.elapsed_s):.0f} s left",
                style="dim",
            )
        elif b.pause_s is None:
            head.append(" (until promoted)", style="dim")
    rows: list[Any] = [head]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("version", "traffic", "requests", "errors", "error rate", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "version" else "right")
    for version, v in b.versions.items():
        role = "new" if version == b.canary else "live"
        share = _share(b, version)
        n, bad = int(v.get("requests", 0)), int(v.get("errors", 0))
        table.add_row(
            f"{version} ({role})",
            _num(share, "%"),
            str(n),
            str(bad),
            f"{100 * bad / n:.2f}%" if n else "-",
            _num(v.get("p50_ms")),
            _num(v.get("p99_ms")),
        )
    if b.versions:
        rows.append(table)
    if b.decision:
        action, reason = b.decision
        mark, style = MARKS.get(action, ("·", "dim"))
        rows.append(Text.assemble((mark, style), f" analysis: {action}: ", (reason, "dim")))
    if b.steps:
        done = Text()
        for name, outcome in b.steps:
            mark, style = {reasons.OK: ("✓", "green"), "started": ("…", "dim")}.get(
                outcome, ("✗", "red")
            )
            done.append(f"{mark} ", style=style).append(f"{name}  ")
        rows.append(done)
    if b.hosts:
        rows.append(hosts_table(b.hosts))
    return Panel(Group(*rows), title=b.title, title_align="left")


def hosts_table(hosts: dict[str, dict[str, Text]]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    t.add_column("host")
    for c in HOST_COLUMNS:
        t.add_column(c)
    for host in sorted(hosts, key=_natural):
        row = hosts[host]
        t.add_row(host, *(row.get(c, Text("·", style="dim")) for c in HOST_COLUMNS))
    return t


def host_cell(outcome: str, data: dict[str, Any]) -> Text:
    ok = outcome in (reasons.OK, "started")
    detail = f" {data['ms']} ms" if "ms" in data else ""
    if data.get("uploaded_bytes"):
        detail += f" {int(data['uploaded_bytes']) / 1e6:.1f} MB"
    return Text.assemble(("✓" if ok else "✗", "green" if ok else "red"), detail)


def _natural(name: str) -> tuple[Any, ...]:
    """web2 before web10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _share(b: Board, version: str) -> float | None:
    """Percent of traffic `version` gets: all of it when nothing new is moving in."""
    if b.canary is None:
        return 100.0
    if version == b.canary:
        return b.percent
    return None if b.percent is None else 100 - b.percent


def _num(x: Any, unit: str = "") -> str:
    return "-" if x is None else f"{float(x):g}{unit}"


class DeployView:
    """Subscribed to a command's events on a terminal; redraws the panel as they come."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.board = Board()
        self.live: Live | None = None
        atexit.register(self.stop)

    def __call__(self, ev: Event) -> None:
        b = self.board
        if ev.action in ENDS and ev.outcome == "started":
            b.title = f"{ev.action} {ev.version} to {ev.env}"
            b.canary = ev.version
        elif ev.action == "step":
            name = str(ev.data.get("step"))
            b.steps = [s for s in b.steps if s[0] != name] + [(name, ev.outcome)]
            if ev.outcome == "started":
                b.step, b.elapsed_s, b.pause_s = name, None, None
        elif ev.action == "look":
            d = ev.data
            b.step, b.elapsed_s = str(d.get("step")), d.get("elapsed_s")
            b.pause_s, b.percent = d.get("pause_s"), d.get("percent")
            b.canary, b.stable = ev.version, d.get("stable")
            b.versions = dict(d.get("versions") or {})
            if decision := d.get("decision"):
                b.decision = (str(decision["action"]), str(decision["reason"]))
        elif ev.action == "analysis":
            b.decision = (ev.outcome, ev.reason or "")
        elif ev.action == "host":
            data = dict(ev.data)
            host, column = str(data.pop("host", "?")), str(data.pop("step", "?"))
            b.hosts.setdefault(host, {})[column] = host_cell(ev.outcome, data)
        elif ev.action in ENDS:
            self.stop()
            return
        else:
            return
        self._show()

    def _show(self) -> None:
        if self.live is None:
            self.live = Live(
                render(self.board), console=self.console, auto_refresh=False, transient=False
            )
            self.live.start()
        self.live.update(render(self.board), refresh=True)

    def stop(self) -> None:
        """Leave the last state on the terminal; the next operation starts a new panel."""
        if self.live is not None:
            self.live.update(render(self.board), refresh=True)
            self.live.stop()
            self.live = None
        self.board = Board()


def board_from_status(env: str, s: dict[str, Any], versions: dict[str, Any]) -> Board:
    """The panel for `status --watch`: what status says, with each version's router
    numbers (`versions`: version -> the router's counters, see `version_summary`)."""
    from rollwise.controller.progressive import version_summary

    live = s.get("live_version")
    moving = s.get("in_progress")
    new = moving["to"] if moving else None
    by_version: dict[str, int] = {}
    names = {i["name"]: i["version"] for i in s.get("instances", [])}
    for name, w in (s.get("weights") or {}).items():
        if name in names:
            by_version[names[name]] = by_version.get(names[name], 0) + int(w)
    total = sum(by_version.values())
    b = Board(
        title=f"{env}: {live or 'nothing'} live"
        + (f", {moving['kind']} to {new} in progress" if moving else ""),
        step=str(moving.get("step") or "starting") if moving else "idle",
        canary=new,
        stable=live,
        percent=round(100 * by_version.get(new, 0) / total, 1) if new and total else None,
    )
    b.versions = {v: version_summary(versions.get(v)) for v in (new, live) if v}
    if s.get("analysis"):
        last = s["analysis"][-1]
        b.decision = (str(last["decision"]), str(last["reason"]))
    return b


def line(b: Board) -> str:
    """The panel as one line, for `status --watch` off a terminal."""
    parts = [b.title, b.step]
    for version, v in b.versions.items():
        share = _share(b, version)
        parts.append(
            f"{version} {_num(share, '%')} {v.get('requests', 0)} requests "
            f"{v.get('errors', 0)} errors p99 {_num(v.get('p99_ms'), ' ms')}"
        )
    if b.decision:
        parts.append(f"analysis {b.decision[0]}: {b.decision[1]}")
    return " | ".join(parts)
