"""`hosts run`: one shell command on many hosts at once; per host its exit status and output,
the audit event that records it and the lines shown. Shared by the controller (after a full
load of rollwise.yaml) and the CLI's quick path (cli/quick.py), so light on imports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rollwise import reasons
from rollwise.ssh import H, Hosts, Options

ACTION = "hosts_run"
Row = dict[str, Any]
Segment = tuple[str, str]  # text, style ("" for none, "bold", "red")


def run(hosts: Sequence[H], ssh: Options, env: str, command: str) -> list[Row]:
    """`command` on every host of `hosts` at once (at most `ssh.concurrency`); a host that
    failed has its error and no exit status."""
    with Hosts(hosts, ssh, env) as conns:
        got = conns.each(lambda h: conns.arun(h, command, check=False))
    rows: list[Row] = []
    for h in hosts:
        r = got[h.label]
        rows.append(
            {"name": h.label, "exit": None, "stdout": "", "stderr": "", "error": str(r)}
            if isinstance(r, Exception)
            else {
                "name": h.label,
                "exit": r.exit,
                "stdout": r.stdout,
                "stderr": r.stderr,
                "error": None,
            }
        )
    return rows


def record(command: str, rows: Sequence[Row]) -> tuple[str, dict[str, Any]]:
    """The audit event's outcome and data: the command, not its output."""
    failed = [r["name"] for r in rows if r["exit"] != 0]
    data = {"command": command, "hosts": [r["name"] for r in rows], "failed": failed}
    return (reasons.OK if not failed else reasons.ERROR), data


def exit_code(rows: Sequence[Row]) -> int:
    """1 (ExitCode.ERROR) when the command failed on any host."""
    return 1 if any(r["exit"] != 0 for r in rows) else 0


def as_json(rows: Sequence[Row]) -> str:
    return json.dumps(rows, indent=2, default=str) + "\n"


def segments(row: Row) -> list[Segment]:
    """One host's result as styled text: `name: failed ERROR`, or `name:` and its output
    (on the next lines when it has several) with `(exit N)` when not 0."""
    if row["error"]:
        return [(f"{row['name']}: ", "bold"), ("failed", "red"), (f" {row['error']}", "")]
    text = (row["stdout"] + row["stderr"]).rstrip("\n")
    status = [] if row["exit"] == 0 else [(f" (exit {row['exit']})", "red")]
    return [(row["name"], "bold"), *status, (":" + ("\n" if "\n" in text else " ") + text, "")]
