"""Incidents: every rollback, automatic or asked for, is one, with a timeline read from what
rollwise recorded (the journal of the deployments involved and the audit log's analysis
decisions), the evidence of the decision, the release marked bad and who acted. Closing one
records its root cause and the release that fixes it forward as an `incident` event in the
audit log, so the incident's state lives in the one append-only stream.

`incidents` and `timeline` are pure (rows in, plain data out) and tested by equality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rollwise import reasons

ACTION = "incident"  # the audit action that closes one
PREFIX = "INC-"


@dataclass(frozen=True)
class Incident:
    id: str  # INC-<deployment id of the rollback, or of the deploy rolled back while running>
    env: str
    opened_at: float
    bad_version: str  # the release marked bad
    restored_version: str | None
    how: str  # "automatic" (rolled back while running) or "rollback" (asked for later)
    acted_by: str
    reason: str
    deployment: int  # where traffic went back
    bad_deployment: int | None  # the deploy of the bad release
    status: str = "open"
    root_cause: str | None = None
    fix: str | None = None
    closed_by: str | None = None
    closed_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def incidents(deployments: list[dict[str, Any]], closings: list[dict[str, Any]]) -> list[Incident]:
    """Every incident of `deployments` (rows of the deployments table), newest first, with
    the state `closings` (audit events of action `incident`) gave them."""
    deps = sorted(deployments, key=lambda d: (float(d["created_at"]), int(d["id"])))
    closed = {str(e["data"].get("incident")): e for e in closings if e["outcome"] == "closed"}
    out = []
    for i, d in enumerate(deps):
        if d["kind"] == "deploy" and d["status"] == reasons.ROLLED_BACK:
            found = Incident(
                f"{PREFIX}{d['id']}",
                d["env"],
                float(d["updated_at"]),
                d["to_version"],
                d["from_version"],
                "automatic",
                d.get("request_by") or "analysis",
                d["reason"] or "",
                int(d["id"]),
                int(d["id"]),
            )
        elif d["kind"] == "rollback" and d["status"] == reasons.SUCCEEDED and d["from_version"]:
            bad = next(
                (
                    b
                    for b in reversed(deps[:i])
                    if b["env"] == d["env"]
                    and b["kind"] == "deploy"
                    and b["status"] == reasons.SUCCEEDED
                    and b["to_version"] == d["from_version"]
                ),
                None,
            )
            found = Incident(
                f"{PREFIX}{d['id']}",
                d["env"],
                float(d["updated_at"]),
                d["from_version"],
                d["to_version"],
                "rollback",
                d["actor"],
                d["reason"] or "",
                int(d["id"]),
                int(bad["id"]) if bad else None,
            )
        else:
            continue
        if (e := closed.get(found.id)) is not None:
            found = Incident(
                **{
                    **found.as_dict(),
                    "status": "closed",
                    "root_cause": e["data"].get("root_cause"),
                    "fix": e["data"].get("fix"),
                    "closed_by": e["actor"],
                    "closed_at": float(e["ts"]),
                }
            )
        out.append(found)
    return out[::-1]


def timeline(
    incident: Incident, journal: list[dict[str, Any]], decisions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What happened, in order: the journal rows of the incident's deployments (steps,
    and the undo that sent traffic back with its data actions and checks) and the analysis
    decisions recorded for them; the first failing decision is the first bad signal."""
    ids = {incident.deployment, incident.bad_deployment} - {None}
    rows: list[dict[str, Any]] = []
    for j in journal:
        if j["deployment_id"] not in ids:
            continue
        what = f"{j['step']} {j['phase']}"
        detail = ""
        back = (j["step"] == "undo" and j["phase"] == "started") or (
            incident.how == "rollback"
            and j["deployment_id"] == incident.deployment
            and (j["step"], j["phase"]) == ("switch", "done")
        )
        if back:
            what = f"traffic back to {incident.restored_version}"
        elif j["step"] == "undo" and j["phase"] == "done":
            data = j.get("data") or {}
            what = f"undo done: {data.get('status')}"
            actions = [k for k in ("schema", "purged") if data.get(k)]
            detail = ", ".join(f"{k}: {data[k]}" for k in actions)
            if data.get("checks") is not None:
                detail = (detail + "; " if detail else "") + f"checks: {data['checks']}"
        elif j["phase"] == "failed":
            detail = str((j.get("data") or {}).get("error", ""))
        rows.append(
            {"at": float(j["at"]), "what": what, "detail": detail, "deployment": j["deployment_id"]}
        )
    first_bad = True
    for e in decisions:
        if e["data"].get("deployment") not in ids:
            continue
        failing = e["outcome"] in ("rollback", "fail")
        what = "first bad signal: analysis" if failing and first_bad else "analysis"
        first_bad = first_bad and not failing
        rows.append(
            {
                "at": float(e["ts"]),
                "what": f"{what} {e['data'].get('step')}: {e['outcome']}",
                "detail": e["reason"] or "",
                "deployment": e["data"].get("deployment"),
            }
        )
    return sorted(rows, key=lambda r: r["at"])


def evidence(incident: Incident, decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The measurements behind the decision that rolled the release back (automatic)."""
    failing = [
        e
        for e in decisions
        if e["data"].get("deployment") == incident.bad_deployment
        and e["outcome"] in ("rollback", "fail")
    ]
    if not failing:
        return None
    e = failing[0]
    return {
        "step": e["data"].get("step"),
        "reason": e["reason"],
        "measurements": e["data"].get("measurements", []),
    }
