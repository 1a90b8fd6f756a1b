"""Rollback drills: a rehearsal of a rollback on a non-production environment, run end to end
through the ordinary deploy, rollback and alert paths, and measured.

A drill is a plan (`make_plan`: scenario, steps, the release it deploys, the fault, load and
objectives), plain data tested by equality. `rollwise.controller.drills` runs it. What it
measured comes from what rollwise recorded, read here by pure functions: the journal of the
drill's deployments and the analysis decisions (through the incident timeline of
`rollwise.incidents`), the load generator's requests, and the app's tables before and after.

Scenarios:

- `bad-canary`: the live release again, as a drill release whose instances run with a fault
  (failed requests, added latency, a crash on start, a failing health check); analysis (or
  the health check) must catch it and send traffic back;
- `manual-rollback`: the next release (with its migrations) goes live, takes writes under
  load, and is rolled back as a person would;
- `failing-migration`: the next release with one more migration that fails halfway;
- `alert`: as `bad-canary` with analysis in dry run, so that an alert sent to rollwise's
  webhook is what rolls it back.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rollwise import incidents as inc
from rollwise import reasons
from rollwise.errors import RollwiseError, UsageError

ACTION = "drill"  # audit action of a drill's events; the result is its `passed`/`failed` one
PREFIX = "DRILL-"
PASSED, FAILED, STARTED, ASKED = "passed", "failed", "started", "rollback asked"
DRILL_TAG = "+drill."  # drill releases are `<base>+drill.<n>`: the base's code, a drill build

BAD_CANARY = "bad-canary"
MANUAL_ROLLBACK = "manual-rollback"
FAILING_MIGRATION = "failing-migration"
ALERT = "alert"
SCENARIOS = (BAD_CANARY, MANUAL_ROLLBACK, FAILING_MIGRATION, ALERT)

# steps of a plan, in the order they run
SNAPSHOT_BEFORE = "snapshot tables"
RELEASE = "register drill release"
LOAD = "start load"
WEBHOOK = "serve webhook"
DEPLOY = "deploy"
WRITE = "write under load"
ROLLBACK = "roll back"
STOP_LOAD = "stop load"
SNAPSHOT_AFTER = "compare tables"
RETIRE = "retire drill release"

FAIL_MIGRATION_NAME = "rollwise_drill_fails"
PROBE_TABLE = "rollwise_drill_probe"
MISSING_TABLE = "rollwise_drill_missing"


@dataclass(frozen=True)
class Fault:
    """What the drill release's instances do wrong (rollwise.faults)."""

    error_rate: float = 0.0
    latency_ms: float = 0.0
    crash_on_start: bool = False
    fail_health: bool = False

    @classmethod
    def parse(cls, specs: list[str]) -> Fault:
        """`error-rate=0.3`, `latency-ms=200`, `crash-on-start`, `fail-health`."""
        values: dict[str, Any] = {}
        for spec in specs:
            name, _, value = spec.partition("=")
            key = name.strip().replace("-", "_")
            try:
                if key in ("error_rate", "latency_ms") and value:
                    values[key] = float(value)
                elif key in ("crash_on_start", "fail_health") and not value:
                    values[key] = True
                else:
                    raise ValueError
            except ValueError:
                raise UsageError(
                    f"--fault {spec!r} is not a fault",
                    where="--fault",
                    hint="error-rate=0.3, latency-ms=200, crash-on-start or fail-health",
                ) from None
        fault = cls(**values)
        if not 0.0 <= fault.error_rate <= 1.0 or fault.latency_ms < 0:
            raise UsageError(
                f"--fault {', '.join(specs)}: error-rate is a share from 0 to 1 and "
                "latency-ms is not negative",
                where="--fault",
            )
        return fault

    def args(self) -> list[str]:
        out = []
        if self.error_rate:
            out += ["--error-rate", f"{self.error_rate:g}"]
        if self.latency_ms:
            out += ["--latency-ms", f"{self.latency_ms:g}"]
        if self.crash_on_start:
            out.append("--crash-on-start")
        if self.fail_health:
            out.append("--fail-health")
        return out

    def describe(self) -> str:
        return " ".join(a.removeprefix("--") for a in self.args()) or "none"

    @property
    def empty(self) -> bool:
        return not self.args()


DEFAULT_FAULT = Fault(error_rate=0.3)


@dataclass(frozen=True)
class Objectives:
    restore_s: float = 300.0
    detect_s: float | None = None
    traffic_back_s: float | None = None


@dataclass(frozen=True)
class AlertRule:
    """The drill's stand-in for a monitoring alert: fires once the requests of the last
    `window_s` failed at `error_rate` or more, `min_errors` at least."""

    window_s: float = 1.0
    error_rate: float = 0.05
    min_errors: int = 3


@dataclass(frozen=True)
class Plan:
    id: str
    scenario: str
    env: str
    live: str  # serving before the drill, and again after it
    base: str  # the release whose code the drill release carries
    version: str  # the drill release
    fault: Fault | None
    failing_migration: bool
    load_rps: float
    load_request: tuple[str, str]  # method, path
    hold_s: float
    steps: tuple[str, ...]
    objectives: Objectives
    analysis_dry_run: bool = False
    alert: AlertRule | None = None
    expect: str = reasons.ROLLED_BACK  # how the drill release's deploy must end

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drill_version(base: str, number: int) -> str:
    return f"{base.split('+', 1)[0]}{DRILL_TAG}{number}"


def is_drill_version(version: str | None) -> bool:
    return bool(version) and DRILL_TAG in str(version)


def next_number(versions: list[str]) -> int:
    """One more than the highest drill number among the releases (pruned ones too)."""
    numbers = [int(v.rsplit(DRILL_TAG, 1)[1]) for v in versions if _numbered(v)]
    return max(numbers, default=0) + 1


def _numbered(version: str) -> bool:
    return DRILL_TAG in version and version.rsplit(DRILL_TAG, 1)[1].isdigit()


def make_plan(
    scenario: str,
    env: str,
    *,
    live: str,
    base: str,
    number: int,
    fault: Fault | None,
    load_rps: float,
    objectives: Objectives,
    hold_s: float = 2.0,
    load_request: tuple[str, str] = ("POST", "/orders"),
) -> Plan:
    """The drill to run; a fault only where the scenario injects one."""
    if scenario not in SCENARIOS:
        raise UsageError(
            f"unknown scenario {scenario!r}",
            where="--scenario",
            hint=f"one of {', '.join(SCENARIOS)}",
        )
    faulty = scenario in (BAD_CANARY, ALERT)
    if fault is not None and not fault.empty and not faulty:
        raise UsageError(
            f"--fault does not apply to {scenario}",
            where="--fault",
            hint=f"faults are injected by {BAD_CANARY} and {ALERT}",
        )
    if faulty and (fault is None or fault.empty):
        fault = DEFAULT_FAULT
    if scenario == ALERT and not fault.error_rate:  # type: ignore[union-attr]
        raise UsageError(
            "the alert scenario's alert fires on failed requests",
            where="--fault",
            hint="give it an error rate, e.g. --fault error-rate=0.3",
        )
    load = ((LOAD,) if load_rps > 0 else ()) + ((WEBHOOK,) if scenario == ALERT else ())
    middle = (DEPLOY, WRITE, ROLLBACK) if scenario == MANUAL_ROLLBACK else (DEPLOY,)
    return Plan(
        id=f"{PREFIX}{number}",
        scenario=scenario,
        env=env,
        live=live,
        base=base,
        version=drill_version(base, number),
        fault=fault if faulty else None,
        failing_migration=scenario == FAILING_MIGRATION,
        load_rps=load_rps,
        load_request=load_request,
        hold_s=hold_s,
        steps=(SNAPSHOT_BEFORE, RELEASE, *load, *middle)
        + ((STOP_LOAD,) if load_rps > 0 else ())
        + (SNAPSHOT_AFTER, RETIRE),
        objectives=objectives,
        analysis_dry_run=scenario == ALERT,
        alert=AlertRule() if scenario == ALERT else None,
        expect=_expected(scenario, fault),
    )


def _expected(scenario: str, fault: Fault | None) -> str:
    """How the drill release's deploy must end: live (then rolled back by the drill), failed
    before any traffic moved (a migration, a release that never gets healthy), or rolled back
    while it ran."""
    if scenario == MANUAL_ROLLBACK:
        return reasons.SUCCEEDED
    never_healthy = fault is not None and (fault.crash_on_start or fault.fail_health)
    if scenario == FAILING_MIGRATION or never_healthy:
        return reasons.FAILED
    return reasons.ROLLED_BACK


def refuse_production(env: str, production: bool, force_reason: str | None) -> bool:
    """True when the drill runs on a production environment by a recorded override; raises
    when it is one and there is none."""
    if not production:
        return False
    if force_reason:
        return True
    raise RollwiseError(
        f"{env} is marked `production: true`: a drill deploys a faulty release there and "
        "rolls it back in front of its users; not run",
        where=f"environments.{env}.production",
        hint="rehearse on a staging environment; an admin may override with --force "
        "--reason '...' (recorded in the audit log)",
    )


# --- the fault, injected by wrapping the run command -------------------------------------


def wrapped_command(
    command: str,
    fault: Fault,
    version: str,
    python: str | Sequence[str],
    health_path: str = "/health",
) -> str:
    """`run.command` behind rollwise.faults, for instances of `version` only (others run the
    command as it is). The app's `{port}` and `{host}` become the wrapper's inner address.
    `python` runs rollwise's modules where the instances run: an interpreter, or an argv
    prefix (`env PYTHONPATH=... python3` on SSH hosts)."""
    inner = command.replace("{port}", "{inner_port}").replace("{host}", "{inner_host}")
    return shlex.join(
        [
            *([python] if isinstance(python, str) else python),
            "-m",
            "rollwise.faults",
            *fault.args(),
            "--only-version",
            version,
            "--health-path",
            health_path,
            "--",
            inner,
        ]
    )


def failing_migration_sql(engine_name: str) -> tuple[str, str]:
    """(up, down) of the injected migration: its first statement works, its second fails
    (it writes to a table that does not exist) on every engine."""
    text_type = "TEXT" if engine_name != "mysql" else "VARCHAR(64)"
    up = (
        "-- rollwise: drill, fails halfway on purpose\n"
        f"CREATE TABLE {PROBE_TABLE} (id INTEGER PRIMARY KEY, note {text_type});\n"
        f"INSERT INTO {MISSING_TABLE} (id) VALUES (1);\n"
    )
    down = f"DROP TABLE {PROBE_TABLE};\n"
    return up, down


# --- what happened, from what rollwise recorded -----------------------------------------


@dataclass(frozen=True)
class Moments:
    """When the fault took effect, was detected, traffic went back and all was restored
    (epoch seconds), and how it was detected."""

    fault_at: float
    detected_at: float | None
    traffic_back_at: float | None
    restored_at: float | None
    detected_by: str
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def figures(self) -> dict[str, float | None]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.fault_at, 3)

        return {
            "detect_s": since(self.detected_at),
            "traffic_back_s": since(self.traffic_back_at),
            "restore_s": since(self.restored_at),
        }


TRAFFIC_STEPS = ("canary:", "rolling:", "switch")


def moments(
    plan: Plan,
    deployments: list[dict[str, Any]],
    journal: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> Moments:
    """Read the drill's moments from its deployments (rows of the deployments table), their
    journal rows, and the audit events of the drill's time (analysis decisions, requests to
    roll back, the drill's own `rollback asked`)."""
    bad = next(
        (d for d in deployments if d["kind"] == "deploy" and d["to_version"] == plan.version), None
    )
    if bad is None:
        raise RollwiseError(
            f"{plan.id}: no deployment of {plan.version} was recorded",
            where=f"environment {plan.env}",
            hint="the drill stopped before its deploy; `rollwise history` shows what ran",
        )
    back = next(
        (
            d
            for d in deployments
            if d["kind"] == "rollback" and d["from_version"] == plan.version and d["id"] > bad["id"]
        ),
        None,
    )
    incident = _incident(plan, bad, back)
    decisions = [e for e in events if e["action"] == "analysis"]
    rows = inc.timeline(incident, journal, decisions)
    mine = [j for j in journal if j["deployment_id"] == bad["id"]]
    fault_at, detected_at, by = _fault_and_detection(plan, bad, back, mine, rows, events)
    traffic = next((r["at"] for r in rows if r["what"].startswith("traffic back to")), None)
    restored = _restored_at(bad, back, mine)
    return Moments(fault_at, detected_at, traffic, restored, by, rows)


def _incident(plan: Plan, bad: dict[str, Any], back: dict[str, Any] | None) -> inc.Incident:
    where = back or bad
    return inc.Incident(
        id=f"{inc.PREFIX}{where['id']}",
        env=plan.env,
        opened_at=float(where["updated_at"]),
        bad_version=plan.version,
        restored_version=plan.live,
        how="rollback" if back else "automatic",
        acted_by=str(where.get("request_by") or where.get("actor") or ""),
        reason=str(where.get("reason") or ""),
        deployment=int(where["id"]),
        bad_deployment=int(bad["id"]),
    )


def _fault_and_detection(
    plan: Plan,
    bad: dict[str, Any],
    back: dict[str, Any] | None,
    mine: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> tuple[float, float | None, str]:
    if plan.scenario == MANUAL_ROLLBACK:
        asked = next(
            (float(e["ts"]) for e in events if e["action"] == ACTION and e["outcome"] == ASKED),
            float(back["created_at"]) if back else float(bad["updated_at"]),
        )
        started = float(back["created_at"]) if back else None
        return asked, started, "a person (the drill asked for the rollback)"
    fault_at = _fault_at(bad, mine)
    signals: list[tuple[float, str]] = []
    for r in rows:
        detail = str(r["detail"]).splitlines()[0] if r["detail"] else ""
        if r["what"].startswith("first bad signal"):
            signals.append((r["at"], f"analysis ({detail})"))
        elif r["deployment"] == bad["id"] and r["what"].endswith(" failed"):
            signals.append((r["at"], f"{r['what']} ({detail})"))
    for e in events:
        if (
            e["action"] == "rollback"
            and e["outcome"] == "requested"
            and e["data"].get("deployment") == bad["id"]
        ):
            signals.append((float(e["ts"]), f"alert ({e['reason'] or 'no reason'})"))
    if back is not None:
        signals.append((float(back["created_at"]), f"rollback {back['id']} ({back['reason']})"))
    if not signals:
        return fault_at, None, "not detected"
    at, by = min(signals)
    return fault_at, at, by


def _fault_at(bad: dict[str, Any], mine: list[dict[str, Any]]) -> float:
    """When users (or the release's own start) first met the fault: the first step that
    sent the drill release traffic, else its start step (it never got traffic), else its
    migration, else the deployment's start."""
    started = [j for j in mine if j["phase"] == "started"]
    for choose in (
        lambda j: str(j["step"]).startswith(TRAFFIC_STEPS),
        lambda j: j["step"] == "start",
        lambda j: j["step"] == "migrate",
    ):
        found = [float(j["at"]) for j in started if choose(j)]
        if found:
            return min(found)
    return float(bad["created_at"])


def _restored_at(
    bad: dict[str, Any], back: dict[str, Any] | None, mine: list[dict[str, Any]]
) -> float | None:
    if back is not None:
        return float(back["updated_at"]) if back["status"] == reasons.SUCCEEDED else None
    undone = [float(j["at"]) for j in mine if j["step"] == "undo" and j["phase"] == "done"]
    return max(undone) if undone else None


def checklist(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The verification checklists the drill's deployments ran (after a switch, and after
    traffic went back), as recorded in their journal."""
    out = []
    for j in journal:
        data = j.get("data") or {}
        if j["step"] == "checks" and j["phase"] == "done":
            found = data
        elif j["step"] == "undo" and j["phase"] == "done" and data.get("checks"):
            found = data["checks"]
        else:
            continue
        if found.get("checks"):
            out.append(
                {
                    "deployment": j["deployment_id"],
                    "after": "undo" if j["step"] == "undo" else "switch",
                    "checks": found.get("checks"),
                    "passed": bool(found.get("passed")),
                    "decision": found.get("decision"),
                }
            )
    return out


def parked(journal: list[dict[str, Any]]) -> dict[str, int]:
    """Rows (or values) the down migrations parked, by table or table.column."""
    out: dict[str, int] = {}
    for j in journal:
        data = j.get("data") or {}
        for holder in (data, data.get("schema") or {}):
            if isinstance(holder, dict):
                for name, what in (holder.get("parked") or {}).items():
                    out[name] = out.get(name, 0) + int(what.get("rows", 0))
    return out


# --- requests ----------------------------------------------------------------------------


def requests_by_version(results: list[tuple[float, int, str]]) -> dict[str, dict[str, int]]:
    """(sent_at, status, version) -> per version (`none` when nothing answered): sent and
    failed (not 2xx)."""
    out: dict[str, dict[str, int]] = {}
    for _, status, version in results:
        row = out.setdefault(version or "none", {"sent": 0, "failed": 0})
        row["sent"] += 1
        row["failed"] += 0 if 200 <= status < 300 else 1
    return dict(sorted(out.items()))


def series(
    results: list[tuple[float, int, str]], start: float, step_s: float = 0.25
) -> list[dict[str, Any]]:
    """Requests per `step_s` since `start`, by version: answered and failed."""
    buckets: dict[int, dict[str, list[int]]] = {}
    for sent, status, version in results:
        b = buckets.setdefault(int((sent - start) // step_s), {})
        row = b.setdefault(version or "none", [0, 0])
        row[0] += 1
        row[1] += 0 if 200 <= status < 300 else 1
    return [
        {
            "t": round(k * step_s, 3),
            "versions": {v: {"sent": s, "failed": f} for v, (s, f) in b.items()},
        }
        for k, b in sorted(buckets.items())
    ]


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableState:
    """A table as read at one moment: its columns and each row by primary key (the whole
    row where it has none)."""

    columns: tuple[str, ...]
    rows: dict[str, tuple[str, ...]]

    def checksum(self) -> str:
        h = hashlib.sha256("\x1f".join(self.columns).encode())
        for key in sorted(self.rows):
            h.update(("\x1e" + "\x1f".join(self.rows[key])).encode())
        return h.hexdigest()[:16]


def compare(
    before: dict[str, TableState],
    after: dict[str, TableState],
    acknowledged: int,
    parked_rows: dict[str, int],
) -> dict[str, Any]:
    """Every table before and after: row counts, checksums, rows that were there before
    and are gone or changed (in the columns both schemas have), and new rows. `acknowledged`
    writes the app answered 201 to must be among the new rows; a table dropped and parked
    whole is not lost."""
    tables, missing, changed, added = {}, 0, 0, 0
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        row: dict[str, Any] = {
            "rows_before": len(b.rows) if b else None,
            "rows_after": len(a.rows) if a else None,
            "checksum_before": b.checksum() if b else None,
            "checksum_after": a.checksum() if a else None,
        }
        if b and a:
            common = [c for c in b.columns if c in a.columns]
            gone = [k for k in b.rows if k not in a.rows]
            diff = [
                k
                for k in b.rows
                if k in a.rows and _project(b, k, common) != _project(a, k, common)
            ]
            row |= {
                "missing": len(gone),
                "changed": len(diff),
                "new": len(set(a.rows) - set(b.rows)),
            }
            row["columns_dropped"] = [c for c in b.columns if c not in a.columns]
            row["columns_added"] = [c for c in a.columns if c not in b.columns]
            missing, changed, added = missing + len(gone), changed + len(diff), added + row["new"]
        elif b and not a and name not in parked_rows:
            row["missing"] = len(b.rows)
            missing += len(b.rows)
        tables[name] = row
    unaccounted = max(0, acknowledged - added)
    return {
        "schema_same": _shape(before) == _shape(after),
        "tables": tables,
        "rows_missing": missing,
        "rows_changed": changed,
        "rows_new": added,
        "writes_acknowledged": acknowledged,
        "rows_lost": missing + unaccounted,
        "parked": parked_rows,
        "consistent": missing == 0 and changed == 0 and unaccounted == 0,
    }


def _shape(tables: dict[str, TableState]) -> dict[str, tuple[str, ...]]:
    return {name: t.columns for name, t in tables.items()}


def _project(t: TableState, key: str, columns: list[str]) -> tuple[str, ...]:
    idx = [t.columns.index(c) for c in columns]
    row = t.rows[key]
    return tuple(row[i] for i in idx)


# --- the verdict -------------------------------------------------------------------------


def judge(
    plan: Plan,
    figures: dict[str, float | None],
    status: str | None,
    live_after: str | None,
    data: dict[str, Any] | None,
    checks: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each objective with its limit, the measured value and whether it was met."""
    o = plan.objectives
    out = [
        _limit("restore_s", figures["restore_s"], o.restore_s),
        _limit("detect_s", figures["detect_s"], o.detect_s),
        _limit("traffic_back_s", figures["traffic_back_s"], o.traffic_back_s),
        {
            "name": f"{plan.version} ended {plan.expect}",
            "value": status,
            "ok": status == plan.expect,
        },
        {"name": f"{plan.live} serves again", "value": live_after, "ok": live_after == plan.live},
    ]
    if data is not None:
        out.append(
            {
                "name": "rows_lost",
                "limit": 0,
                "value": data["rows_lost"],
                "ok": data["rows_lost"] == 0,
            }
        )
        out.append(
            {"name": "schema as before", "value": data["schema_same"], "ok": data["schema_same"]}
        )
        out.append(
            {
                "name": "rows kept unchanged",
                "value": data["rows_changed"],
                "ok": data["rows_changed"] == 0,
            }
        )
    for c in checks:
        out.append(
            {
                "name": f"checklist after {c['after']} (deployment {c['deployment']})",
                "value": c["decision"],
                "ok": c["passed"],
            }
        )
    return [x for x in out if x is not None]


def _limit(name: str, value: float | None, limit: float | None) -> dict[str, Any] | None:
    if limit is None:  # not an objective of this environment
        return None
    return {
        "name": name,
        "limit": limit,
        "value": value,
        "ok": value is not None and (limit is None or value <= limit),
    }


def report(
    plan: Plan,
    m: Moments,
    *,
    status: str | None,
    live_after: str | None,
    journal: list[dict[str, Any]],
    load: list[tuple[float, int, str]],
    data: dict[str, Any] | None,
    started_at: float,
    ended_at: float,
    forced: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a drill measured, plain data (stored with its `drill` event)."""
    figures = m.figures()
    checks = checklist(journal)
    verdict = judge(plan, figures, status, live_after, data, checks)
    by_version = requests_by_version(load)
    return {
        "id": plan.id,
        "scenario": plan.scenario,
        "env": plan.env,
        "plan": plan.as_dict(),
        "passed": all(v["ok"] for v in verdict),
        **figures,
        "detected_by": m.detected_by,
        "fault_at": m.fault_at,
        "status": status,
        "live_after": live_after,
        "requests": by_version,
        "requests_sent": sum(v["sent"] for v in by_version.values()),
        "requests_failed": sum(v["failed"] for v in by_version.values()),
        "rows_lost": data["rows_lost"] if data is not None else None,
        "data": data,
        "checklist": checks,
        "objectives": verdict,
        "timeline": m.timeline,
        "series": series(load, started_at),
        "started_at": started_at,
        "ended_at": ended_at,
        "took_s": round(ended_at - started_at, 3),
        "forced": forced,
        **(extra or {}),
    }


# --- showing a drill ------------------------------------------------------------------------


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def render(r: dict[str, Any]) -> list[str]:
    """A drill's report as lines of text."""
    plan = r["plan"]
    lines = [
        f"{r['id']} {'passed' if r['passed'] else 'FAILED'}: {r['env']}: {r['scenario']} "
        f"({plan['version']}, the code of {plan['base']}"
        + (f", fault {Fault(**plan['fault']).describe()}" if plan.get("fault") else "")
        + f"); {r['live_after']} serves now",
        f"  detected      {_s(r['detect_s'])} after the fault, by {r['detected_by']}",
        f"  traffic back  {_s(r['traffic_back_s'])} after the fault",
        f"  restored      {_s(r['restore_s'])} after the fault (drill took {r['took_s']:.1f} s)",
        f"  requests      {r['requests_failed']} of {r['requests_sent']} failed: "
        + ", ".join(f"{v} {x['failed']}/{x['sent']}" for v, x in r["requests"].items()),
    ]
    data = r.get("data")
    if data is not None:
        lines.append(
            f"  data          {data['writes_acknowledged']} writes acknowledged, "
            f"{data['rows_new']} new rows, {data['rows_missing']} missing, "
            f"{data['rows_changed']} changed, rows lost {data['rows_lost']}"
            + (
                "; parked: " + ", ".join(f"{k} {v}" for k, v in data["parked"].items())
                if data["parked"]
                else ""
            )
        )
        for name, t in data["tables"].items():
            lines.append(
                f"    {name:<20} rows {t['rows_before']} -> {t['rows_after']}, checksum "
                f"{t['checksum_before'] or '-'} -> {t['checksum_after'] or '-'}"
            )
    for c in r["checklist"]:
        lines.append(
            f"  checklist     after {c['after']}: {'passed' if c['passed'] else 'failed'}: "
            f"{c['decision']}"
        )
    for o in r["objectives"]:
        limit = f" (limit {o['limit']})" if o.get("limit") is not None else ""
        lines.append(f"  {'✓' if o['ok'] else '✗'} {o['name']}: {o['value']}{limit}")
    return lines


def html_page(r: dict[str, Any]) -> str:
    """A self-contained page: the figures, objectives, requests and data tables, and two
    charts (PNG, inline): the requests by version through the drill with its moments, and
    the times against the objective."""
    import html

    rows = "".join(
        f"<tr><td>{'✓' if o['ok'] else '✗'}</td><td>{html.escape(str(o['name']))}</td>"
        f"<td>{html.escape(str(o['value']))}</td><td>{o.get('limit', '')}</td></tr>"
        for o in r["objectives"]
    )
    reqs = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{x['sent']}</td><td>{x['failed']}</td></tr>"
        for v, x in r["requests"].items()
    )
    tables = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{t['rows_before']}</td><td>{t['rows_after']}</td>"
        f"<td>{t.get('missing', '')}</td><td>{t.get('changed', '')}</td>"
        f"<td><code>{t['checksum_before'] or '-'}</code></td>"
        f"<td><code>{t['checksum_after'] or '-'}</code></td></tr>"
        for n, t in ((r.get("data") or {}).get("tables") or {}).items()
    )
    timeline = "".join(
        f"<tr><td>{row['at'] - r['fault_at']:+.3f} s</td><td>{row['deployment']}</td>"
        f"<td>{html.escape(row['what'])}</td><td>{html.escape(str(row['detail']))}</td></tr>"
        for row in r["timeline"]
    )
    title = f"rollwise drill {r['id']}: {r['scenario']} on {r['env']}"
    verdict = "passed" if r["passed"] else "failed"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:64em}}
table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:.3em .6em}}
.passed{{color:#15803d}}.failed{{color:#b91c1c}}</style></head><body>
<h1>{html.escape(title)}: <span class="{verdict}">{verdict}</span></h1>
<p>{html.escape(r["plan"]["version"])} (the code of {html.escape(r["plan"]["base"])}),
{html.escape(str(r["live_after"]))} serving after; detected by {html.escape(r["detected_by"])}.</p>
<table><tr><th>detected</th><th>traffic back</th><th>restored</th><th>requests failed</th>
<th>rows lost</th></tr><tr><td>{_s(r["detect_s"])}</td><td>{_s(r["traffic_back_s"])}</td>
<td>{_s(r["restore_s"])}</td><td>{r["requests_failed"]} of {r["requests_sent"]}</td>
<td>{r["rows_lost"] if r["rows_lost"] is not None else "-"}</td></tr></table>
<h2>Requests through the drill</h2>{_chart(lambda ax: _requests(ax, r))}
<h2>Times against the objective</h2>{_chart(lambda ax: _times(ax, r), height=2.2)}
<h2>Objectives</h2><table><tr><th></th><th>objective</th><th>measured</th><th>limit</th></tr>
{rows}</table>
<h2>Requests by version</h2><table><tr><th>version</th><th>sent</th><th>failed</th></tr>
{reqs}</table>
<h2>Tables</h2><table><tr><th>table</th><th>rows before</th><th>rows after</th>
<th>missing</th><th>changed</th><th>checksum before</th><th>checksum after</th></tr>{tables}</table>
<h2>Timeline</h2><table><tr><th>since the fault</th><th>deployment</th><th>what</th>
<th>detail</th></tr>{timeline}</table>
</body></html>
"""


def _chart(draw: Any, height: float = 3.0) -> str:
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, height), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _requests(ax: Any, r: dict[str, Any]) -> None:
    points = r["series"]
    versions = sorted({v for p in points for v in p["versions"]})
    step = points[1]["t"] - points[0]["t"] if len(points) > 1 else 0.25
    for v in versions:
        xs = [p["t"] for p in points]
        ax.plot(xs, [p["versions"].get(v, {}).get("sent", 0) / step for p in points], label=v)
        failed = [p["versions"].get(v, {}).get("failed", 0) / step for p in points]
        if any(failed):
            ax.plot(xs, failed, linestyle="--", label=f"{v} failed")
    start = r["started_at"]
    for name, key, color in (
        ("fault", "fault_at", "#b91c1c"),
        ("detected", "detect_s", "#d97706"),
        ("traffic back", "traffic_back_s", "#2563eb"),
        ("restored", "restore_s", "#15803d"),
    ):
        value = r[key]
        if value is None:
            continue
        at = value - start if key == "fault_at" else r["fault_at"] - start + value
        ax.axvline(at, color=color, linestyle=":", linewidth=1)
        ax.annotate(name, (at, ax.get_ylim()[1]), rotation=90, va="top", fontsize=7, color=color)
    ax.set_xlabel("seconds since the drill started")
    ax.set_ylabel("requests per second")
    ax.legend(fontsize=7)


def _times(ax: Any, r: dict[str, Any]) -> None:
    names = ["detected", "traffic back", "restored"]
    values = [r["detect_s"] or 0.0, r["traffic_back_s"] or 0.0, r["restore_s"] or 0.0]
    ax.barh(names, values, color=["#d97706", "#2563eb", "#15803d"])
    limit = r["plan"]["objectives"]["restore_s"]
    ax.axvline(limit, color="#b91c1c", linestyle="--", linewidth=1)
    ax.annotate(f"objective {limit:g} s", (limit, 2.3), fontsize=7, color="#b91c1c", ha="right")
    ax.set_xscale("log")  # seconds beside an objective of minutes
    ax.set_xlim(
        max(0.001, min(v for v in values if v > 0) / 2 if any(values) else 0.001), limit * 2
    )
    ax.set_xlabel("seconds after the fault (log scale)")
