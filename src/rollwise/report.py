"""The delivery report: deployment frequency, lead time for changes, change failure rate and
time to restore (the four DORA figures) per environment over a period, from the deployments
rollwise recorded.

`figures` is pure (plain rows in, plain data out) and tested by equality against figures a
test computes its own way over a generated history. Definitions (docs/report.md):

- a *deployment* is a `deploy` that went live (`succeeded`) in the period;
- *lead time*: from the release's commit time (its build time when the commit is unknown)
  to the deployment going live;
- a *change failure* is a `deploy` rolled back while it ran (`rolled_back`), or one that went
  live and was later rolled back away from (a `rollback` from its version, before the next
  deployment); the *change failure rate* divides them by the deploys that reached traffic
  (succeeded + rolled_back). Deploys that failed or were aborted before any traffic moved
  changed nothing for users and count in neither;
- *time to restore*: for a deploy rolled back while it ran, from its start to its end; for
  a later rollback, from the bad deployment going live to the rollback's end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollwise import reasons
from rollwise.drill import is_drill_version

DAY_S = 86400.0


@dataclass(frozen=True)
class Period:
    since: float
    until: float

    @property
    def days(self) -> float:
        return (self.until - self.since) / DAY_S


def quantile(xs: list[float], q: float) -> float | None:
    """Nearest-rank quantile: the smallest value with at least q of the values at or
    below it."""
    if not xs:
        return None
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _summary(xs: list[float]) -> dict[str, Any]:
    return {"count": len(xs), "median": _r(quantile(xs, 0.5)), "p90": _r(quantile(xs, 0.9))}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def figures(
    deployments: list[dict[str, Any]], commit_time: Callable[[str], float | None], period: Period
) -> dict[str, Any]:
    """The report of every environment in `deployments` (rows of the deployments table)
    over `period`; `commit_time(version)` is the release's commit (or build) time."""
    by_env: dict[str, list[dict[str, Any]]] = {}
    real = [d for d in deployments if not rehearsal(d)]
    for dep in sorted(real, key=lambda d: (float(d["created_at"]), int(d["id"]))):
        by_env.setdefault(str(dep["env"]), []).append(dep)
    out = {}
    for env, deps in sorted(by_env.items()):
        out[env] = _env_figures(deps, commit_time, period)
    return {
        "since": period.since,
        "until": period.until,
        "days": round(period.days, 2),
        "environments": out,
    }


def rehearsal(dep: dict[str, Any]) -> bool:
    """A deployment of a drill (to or from a drill release): it changed nothing for users,
    so it is in the drills section, not in the four figures."""
    return is_drill_version(dep["to_version"]) or is_drill_version(dep["from_version"])


def drill_rows(drills: list[dict[str, Any]], period: Period) -> list[dict[str, Any]]:
    """The drills run in `period` (their stored reports), oldest first, as report rows."""
    keys = ("id", "env", "scenario", "passed", "started_at", "detect_s", "traffic_back_s")
    return [
        {k: d[k] for k in keys}
        | {
            "restore_s": d["restore_s"],
            "requests_failed": d["requests_failed"],
            "requests_sent": d["requests_sent"],
            "rows_lost": d["rows_lost"],
            "objective_restore_s": d["plan"]["objectives"]["restore_s"],
        }
        for d in sorted(drills, key=lambda d: float(d["started_at"]))
        if period.since <= float(d["started_at"]) < period.until
    ]


def _env_figures(
    deps: list[dict[str, Any]], commit_time: Callable[[str], float | None], period: Period
) -> dict[str, Any]:
    def inside(d: dict[str, Any]) -> bool:
        return period.since <= float(d["created_at"]) < period.until

    live = [d for d in deps if d["kind"] == "deploy" and d["status"] == reasons.SUCCEEDED]
    lead, restore, failures = [], [], 0
    for d in live:
        if not inside(d):
            continue
        committed = commit_time(str(d["to_version"]))
        if committed is not None:
            lead.append(float(d["updated_at"]) - committed)
        later = _rolled_back_from(d, deps)
        if later is not None:
            failures += 1
            restore.append(float(later["updated_at"]) - float(d["updated_at"]))
    for d in deps:
        if inside(d) and d["kind"] == "deploy" and d["status"] == reasons.ROLLED_BACK:
            failures += 1
            restore.append(float(d["updated_at"]) - float(d["created_at"]))
    reached = sum(
        1
        for d in deps
        if inside(d)
        and d["kind"] == "deploy"
        and d["status"] in (reasons.SUCCEEDED, reasons.ROLLED_BACK)
    )
    n = sum(1 for d in live if inside(d))
    return {
        "deployments": n,
        "per_day": round(n / period.days, 3) if period.days > 0 else None,
        "lead_time_s": _summary(lead),
        "change_failures": failures,
        "changes": reached,
        "change_failure_rate": round(failures / reached, 4) if reached else None,
        "restore_s": _summary(restore),
        "rollbacks": sum(
            1
            for d in deps
            if inside(d) and d["kind"] == "rollback" and d["status"] == reasons.SUCCEEDED
        ),
    }


def _rolled_back_from(dep: dict[str, Any], deps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rollback that took `dep`'s release away, if one came before the next deploy."""
    after = [
        d
        for d in deps
        if (float(d["created_at"]), int(d["id"])) > (float(dep["created_at"]), int(dep["id"]))
        and d["status"] == reasons.SUCCEEDED
    ]
    for d in after:
        if d["kind"] == "deploy":
            return None
        if d["kind"] == "rollback" and d["from_version"] == dep["to_version"]:
            return d
    return None


def parse_duration_s(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w` as seconds; ValueError for anything else."""
    units = {"m": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 2w")
    return float(text[:-1]) * units[text[-1]]


def html_page(report: dict[str, Any], deployments: list[dict[str, Any]], title: str) -> str:
    """A self-contained page: the figures as a table and three charts (PNG, inline)."""
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    period = Period(float(report["since"]), float(report["until"]))
    envs = sorted(report["environments"])

    def chart(draw: Callable[[Any], None]) -> str:
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        return f'<img alt="" src="data:image/png;base64,{data}">'

    weeks = max(1, math.ceil(period.days / 7))

    def per_week(ax: Any) -> None:
        for i, env in enumerate(envs):
            counts = [0] * weeks
            for d in deployments:
                t = float(d["created_at"])
                if (
                    d["env"] == env
                    and d["kind"] == "deploy"
                    and d["status"] == reasons.SUCCEEDED
                    and period.since <= t < period.until
                ):
                    counts[min(weeks - 1, int((t - period.since) // (7 * DAY_S)))] += 1
            width = 0.8 / len(envs)
            ax.bar([w + i * width for w in range(weeks)], counts, width, label=env)
        ax.set_xlabel("week")
        ax.set_ylabel("deployments")
        ax.legend()

    def restores(ax: Any) -> None:
        for env in envs:
            rolled = [
                d
                for d in deployments
                if d["env"] == env
                and d["kind"] == "deploy"
                and d["status"] == reasons.ROLLED_BACK
                and period.since <= float(d["created_at"]) < period.until
            ]
            xs = [(float(d["created_at"]) - period.since) / DAY_S for d in rolled]
            ys = [float(d["updated_at"]) - float(d["created_at"]) for d in rolled]
            ax.scatter(xs, ys, label=env, s=12)
        ax.set_xlabel("day")
        ax.set_ylabel("seconds to restore (automatic)")
        ax.legend()

    rows = "".join(
        f"<tr><td>{html.escape(env)}</td><td>{f['deployments']}</td><td>{f['per_day']}</td>"
        f"<td>{fmt_s(f['lead_time_s']['median'])}</td><td>{fmt_s(f['lead_time_s']['p90'])}"
        f"</td><td>{pct(f['change_failure_rate'])}</td>"
        f"<td>{fmt_s(f['restore_s']['median'])}</td><td>{fmt_s(f['restore_s']['p90'])}</td>"
        f"<td>{f['rollbacks']}</td></tr>"
        for env, f in report["environments"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{report["days"]} days. Definitions: docs/report.md.</p>
<table><tr><th>environment</th><th>deployments</th><th>per day</th><th>lead time median</th>
<th>lead time p90</th><th>change failure rate</th><th>restore median</th><th>restore p90</th>
<th>rollbacks</th></tr>{rows}</table>
<h2>Deployments per week</h2>{chart(per_week)}
<h2>Automatic rollbacks: time to restore</h2>{chart(restores)}
{_drills_html(report.get("drills"))}
</body></html>
"""


def _drills_html(drills: list[dict[str, Any]] | None) -> str:
    """The drills section: each rehearsal's times against its objective (docs/drills.md)."""
    import html

    if not drills:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(d['id'])}</td><td>{html.escape(d['env'])}</td>"
        f"<td>{html.escape(d['scenario'])}</td><td>{'passed' if d['passed'] else 'failed'}</td>"
        f"<td>{_secs(d['detect_s'])}</td><td>{_secs(d['traffic_back_s'])}</td>"
        f"<td>{_secs(d['restore_s'])}</td><td>{fmt_s(d['objective_restore_s'])}</td>"
        f"<td>{d['requests_failed']}</td><td>{'-' if d['rows_lost'] is None else d['rows_lost']}"
        "</td></tr>"
        for d in drills
    )
    return (
        "<h2>Drills</h2><p>Rehearsed rollbacks (not counted above).</p><table><tr><th>drill</th>"
        "<th>environment</th><th>scenario</th><th>result</th><th>detected</th>"
        "<th>traffic back</th><th>restored</th><th>objective</th><th>requests failed</th>"
        f"<th>rows lost</th></tr>{rows}</table>"
    )


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def commit_times(root: Any, releases: list[dict[str, Any]]) -> dict[str, float]:
    """Each release's commit time from git (the project's repository), else its build
    time."""
    import subprocess

    out = {}
    for rel in releases:
        at = float(rel["built_at"])
        commit = str(rel.get("git_commit") or "").removesuffix("-dirty")
        if commit:
            try:
                shown = subprocess.run(
                    ["git", "-C", str(root), "show", "-s", "--format=%ct", commit],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                if shown.returncode == 0 and shown.stdout.strip().isdigit():
                    at = float(shown.stdout.strip())
            except (OSError, subprocess.TimeoutExpired):
                pass
        out[str(rel["version"])] = at
    return out


def table(report: dict[str, Any], title: str) -> Any:
    """The figures as a Rich table, one row per environment."""
    from rich.table import Table

    t = Table(title=title, box=None, header_style="bold")
    for col in (
        "environment",
        "deployments",
        "per day",
        "lead time p50",
        "lead time p90",
        "change failure rate",
        "restore p50",
        "restore p90",
        "rollbacks",
    ):
        t.add_column(col, justify="left" if col == "environment" else "right")
    for name, f in report["environments"].items():
        t.add_row(
            name,
            str(f["deployments"]),
            str(f["per_day"]),
            fmt_s(f["lead_time_s"]["median"]),
            fmt_s(f["lead_time_s"]["p90"]),
            pct(f["change_failure_rate"]),
            fmt_s(f["restore_s"]["median"]),
            fmt_s(f["restore_s"]["p90"]),
            str(f["rollbacks"]),
        )
    return t
