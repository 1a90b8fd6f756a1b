"""What the CLI (and later the API) calls: release, deploy, rollback, abort, status, history."""

from __future__ import annotations

import secrets as pysecrets
from dataclasses import dataclass, field
from typing import Any

from rollwise import artifacts, reasons
from rollwise import domain as d
from rollwise.agent.client import AgentClient
from rollwise.controller import machine
from rollwise.controller.context import Context
from rollwise.controller.lock import Lease, current, holder_id, lease_if_free
from rollwise.errors import NotFound, RollwiseError
from rollwise.ports import free_ports
from rollwise.store import repo


@dataclass
class Outcome:
    """What an operation did, for humans (`message`) and scripts (`data`)."""

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    changed: bool = True


def create_release(ctx: Context, version: str, changelog: str | None) -> Outcome:
    version = artifacts.check_version(version)
    if (old := repo.get_release(ctx.engine, version)) is not None:
        raise RollwiseError(f"release {version} already exists (sha256 {old['sha256'][:12]})",
                            hint="releases are immutable; create a new version")
    source = (ctx.root / ctx.config.source).resolve()
    if ctx.config.build.command:
        artifacts.run_build(ctx.config.build.command, source)
    sha, size, _ = artifacts.pack(source, ctx.config.build.exclude, ctx.artifacts_dir())
    meta = artifacts.ReleaseMeta(
        app=ctx.config.app, version=version, sha256=sha, size=size,
        git_commit=artifacts.git_commit(source), built_at=artifacts.now(),
        builder=artifacts.builder(), changelog=changelog, config_sha256=ctx.config_sha256())
    repo.add_release(ctx.engine, meta)
    ctx.emit("release", reasons.OK, version=version, git_commit=meta.git_commit,
             data={"sha256": sha, "size": size})
    pruned = gc(ctx)
    note = f"; pruned {', '.join(pruned)}" if pruned else ""
    return Outcome(f"release {version} created: sha256 {sha[:12]}, {size} bytes{note}",
                   {"version": version, "sha256": sha, "size": size, "pruned": pruned})


def protected_versions(ctx: Context) -> set[str]:
    """Never pruned: live releases and each environment's newest known-good ones."""
    keep = {s["live_version"] for s in repo.all_env_states(ctx.engine) if s["live_version"]}
    for env in ctx.config.environments:
        good = [m["version"] for m in repo.get_marks(ctx.engine, env)
                if m["mark"] == reasons.GOOD]
        keep.update(good[:2])  # the last known-good and the rollback target before it
    return keep


def gc(ctx: Context) -> list[str]:
    rels = repo.list_releases(ctx.engine)
    doomed = artifacts.prune_plan([r["version"] for r in rels], ctx.config.keep_releases,
                                  protected_versions(ctx))
    in_use = {r["sha256"] for r in rels if r["version"] not in doomed}
    for r in rels:
        if r["version"] in doomed:
            if r["sha256"] not in in_use:
                artifacts.artifact_path(ctx.artifacts_dir(), r["sha256"]).unlink(missing_ok=True)
            repo.set_pruned(ctx.engine, r["version"])
            ctx.emit("prune", reasons.OK, version=r["version"])
    return doomed


def _release(ctx: Context, version: str, flag: str = "version") -> dict[str, Any]:
    version = version.removeprefix("v")
    rel = repo.get_release(ctx.engine, version)
    if rel is None or rel["pruned"]:
        known = [r["version"] for r in repo.list_releases(ctx.engine)]
        state = "was pruned" if rel else "does not exist"
        raise NotFound(f"release {version} {state}", where=flag,
                       hint=f"releases you can use: {', '.join(known) or 'none'} "
                       "(`rollwise release list`)")
    return rel


def deploy(ctx: Context, env: str, version: str, *, kind: str = d.DEPLOY,
           lock_wait: float = 0.0) -> Outcome:
    ctx.env(env)
    rel = _release(ctx, version, "--to" if kind == d.ROLLBACK else "version")
    with Lease(ctx.engine, env, holder_id(ctx.actor), lock_wait) as lease:
        recovered = machine.recover(ctx, env, lease)
        state = repo.env_state(ctx.engine, env)
        if kind == d.ROLLBACK and state["live_version"] == rel["version"]:
            ctx.emit(kind, reasons.NOOP, env=env, version=rel["version"],
                     reason=reasons.ALREADY_SERVING)
            return Outcome(f"{rel['version']} is already serving {env}; nothing to do",
                           {"recovered": recovered}, changed=False)
        return _run(ctx, env, kind, rel, state, lease, recovered)


def _run(ctx: Context, env: str, kind: str, rel: dict[str, Any], state: dict[str, Any],
         lease: Lease, recovered: str | None) -> Outcome:
    hooks = ctx.config.hooks
    ctx.target(env).ensure()  # pre-flight: a busy router port fails here, before any record
    plan = d.plan_deployment(
        env=env, kind=kind, to_version=rel["version"], sha256=rel["sha256"],
        from_version=state["live_version"],
        old=[d.InstancePlan(**i) for i in state["instances"]],
        ports=free_ports(ctx.env(env).instances), suffix=pysecrets.token_hex(3),
        pre_hooks=bool(hooks.pre_deploy), post_hooks=bool(hooks.post_deploy))
    dep_id = repo.create_deployment(ctx.engine, plan.as_dict(), ctx.actor)
    ctx.emit(kind, "started", env=env, version=plan.to_version, git_commit=rel["git_commit"],
             data={"deployment": dep_id, "from": plan.from_version})
    machine.run_plan(ctx, dep_id, plan, lease)
    machine.complete(ctx, dep_id, plan, lease)
    journal = repo.journal_rows(ctx.engine, dep_id)
    switch_ms = next((j["data"]["switch_ms"] for j in journal
                      if j["step"] == d.SWITCH and j["phase"] == "done"), None)
    verb = "rolled back" if kind == d.ROLLBACK else "deployed"
    return Outcome(f"{env}: {verb} to {plan.to_version} (from {plan.from_version or 'nothing'})"
                   f", traffic switched in {switch_ms} ms",
                   {"deployment": dep_id, "env": env, "version": plan.to_version,
                    "from": plan.from_version, "switch_ms": switch_ms,
                    "recovered": recovered})


def rollback_plan(ctx: Context, env: str, to: str | None) -> tuple[dict[str, Any] | None,
                                                                   dict[str, Any] | None]:
    """(current live release, release a rollback goes to) — None where there is none."""
    ctx.env(env)
    live = repo.env_state(ctx.engine, env)["live_version"]
    marks = repo.get_marks(ctx.engine, env)
    good = [m["version"] for m in marks if m["mark"] == reasons.GOOD]
    bad = {m["version"] for m in marks if m["mark"] == reasons.BAD}
    usable = [v for v in good if (r := repo.get_release(ctx.engine, v)) and not r["pruned"]]
    target = d.rollback_target(live, usable, bad, to.removeprefix("v") if to else None)
    return (repo.get_release(ctx.engine, live) if live else None,
            _release(ctx, target, "--to") if target else None)


def describe_change(live: dict[str, Any] | None, target: dict[str, Any]) -> list[str]:
    def val(r: dict[str, Any] | None, k: str) -> str:
        return str(r[k]) if r and r[k] else "-"
    rows = [f"version: {val(live, 'version')} -> {target['version']}",
            f"commit:  {val(live, 'git_commit')[:12]} -> {val(target, 'git_commit')[:12]}",
            f"sha256:  {val(live, 'sha256')[:12]} -> {target['sha256'][:12]}"]
    same = live is not None and live["config_sha256"] == target["config_sha256"]
    rows.append("config:  " + ("unchanged" if same else "differs (rollwise.yaml at release time)"))
    return rows


def rollback(ctx: Context, env: str, to: str | None, lock_wait: float = 0.0) -> Outcome:
    _, target = rollback_plan(ctx, env, to)
    if target is None:
        ctx.emit(d.ROLLBACK, reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: no earlier known-good release to roll back to; nothing done",
                       changed=False)
    return deploy(ctx, env, target["version"], kind=d.ROLLBACK, lock_wait=lock_wait)


def abort(ctx: Context, env: str) -> Outcome:
    ctx.env(env)
    dep = repo.active_deployment(ctx.engine, env)
    if dep is None:
        ctx.emit("abort", reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: no deployment in progress; nothing to abort", changed=False)
    lock = current(ctx.engine, env)
    if lock is not None and not lock.expired:
        repo.request_abort(ctx.engine, dep["id"], machine.ABORT_REQUESTED)
        ctx.emit("abort", "requested", env=env, version=dep["to_version"])
        return Outcome(f"{env}: asked {lock.holder} to abort deployment {dep['id']}; it stops "
                       "before its next step")
    with Lease(ctx.engine, env, holder_id(ctx.actor)) as lease:
        repo.request_abort(ctx.engine, dep["id"], machine.ABORT_REQUESTED)
        msg = machine.recover(ctx, env, lease)
    return Outcome(f"{env}: {msg}")


def status(ctx: Context, env: str | None) -> dict[str, Any]:
    """Each environment's state; finishes or undoes interrupted deployments it can lock."""
    out: dict[str, Any] = {"app": ctx.config.app, "environments": {}}
    for name in [env] if env else list(ctx.config.environments):
        ctx.env(name)
        with lease_if_free(ctx.engine, name, holder_id(ctx.actor)) as lease:
            recovered = machine.recover(ctx, name, lease) if lease else None
        out["environments"][name] = _env_status(ctx, name, recovered)
    return out


def _env_status(ctx: Context, env: str, recovered: str | None) -> dict[str, Any]:
    state = repo.env_state(ctx.engine, env)
    lock = current(ctx.engine, env)
    dep = repo.active_deployment(ctx.engine, env)
    done = sorted(repo.done_steps(ctx.engine, dep["id"])) if dep else []
    last = repo.list_deployments(ctx.engine, env, 1)
    target = ctx.target(env)
    agent_up = AgentClient(ctx.env_dir(env), env).alive() is not None
    info: dict[str, Any] = {
        "live_version": state["live_version"],
        "instances": [vars(i) for i in target.instances()] if agent_up else [],
        "agent": "running" if agent_up else "not running",
        "router": ctx.env(env).router.listen,
        "weights": ctx.router(env).weights() if agent_up else {},
        "lock": None if lock is None or lock.expired else
        {"holder": lock.holder, "token": lock.token, "expires_at": lock.expires_at},
        "in_progress": None if dep is None else
        {"id": dep["id"], "kind": dep["kind"], "to": dep["to_version"],
         "steps_done": done, "on_recovery": "resume" if d.SWITCH in done else "roll back"},
        "last_deployment": _dep_summary(last[0]) if last else None,
        "recovered": recovered,
        "marks": {m["version"]: m["mark"] for m in repo.get_marks(ctx.engine, env)},
    }
    return info


def _dep_summary(dep: dict[str, Any]) -> dict[str, Any]:
    return {k: dep[k] for k in ("id", "env", "kind", "from_version", "to_version", "status",
                                "reason", "actor", "created_at", "updated_at")}


def history(ctx: Context, env: str | None, limit: int) -> list[dict[str, Any]]:
    if env:
        ctx.env(env)
    return [_dep_summary(dep) for dep in repo.list_deployments(ctx.engine, env, limit)]
