"""One state machine for deploys and rollbacks: each step journaled before and after it runs.

A step is idempotent. After a crash, the next command finds the deployment: if traffic was
already switched it resumes the remaining steps, otherwise it puts traffic back on the old
instances and stops the new ones.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollwise import artifacts, reasons
from rollwise import domain as d
from rollwise.controller import caches, schema
from rollwise.controller import progressive as pg
from rollwise.controller.context import Context, Environment
from rollwise.controller.instances import (
    drain,
    start,
    start_ready,
    stop,
    switch,
    wait_ready,
)
from rollwise.controller.lock import Lease
from rollwise.errors import ConfigError, RollwiseError, Unreachable
from rollwise.failpoint import failpoint
from rollwise.secrets import without_secrets
from rollwise.store import repo


def run_plan(ctx: Context, env: Environment, dep_id: int, plan: d.Plan, lease: Lease) -> str:
    """Run the steps not yet done; on failure undo what must be undone. Returns the status."""
    done = repo.done_steps(ctx.engine, dep_id)
    run = Run(ctx, env, plan, pg.Watch.open(ctx, env, plan, dep_id))
    for step in plan.steps:
        name = step.name
        if name in done:
            continue
        try:
            if repo.pending_request(ctx.engine, dep_id) in (pg.ABORT, pg.ROLLBACK):
                run.watch.taken()
            repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, name, "started")
            ctx.emit(
                "step",
                "started",
                env=plan.env,
                version=plan.to_version,
                data={"deployment": dep_id, "step": name},
            )
            failpoint(name, "before")
            data = run_step(run, step)
            failpoint(name, "after")
            repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, name, "done", data)
            ctx.emit(
                "step",
                reasons.OK,
                env=plan.env,
                version=plan.to_version,
                data={"deployment": dep_id, "step": name, **data},
            )
            done.add(name)
        except Exception as e:
            switched = plan.traffic_moving(done | {name})
            where = f"step {name}"  # said once, also when the error names its step
            reason = str(e) if getattr(e, "where", None) == where else f"{where}: {e}"
            repo.journal_write(
                ctx.engine, plan.env, lease.token, dep_id, name, "failed", {"error": str(e)}
            )
            ctx.emit(
                "step",
                reasons.ERROR,
                env=plan.env,
                version=plan.to_version,
                reason=reason,
                data={"deployment": dep_id, "step": name},
            )
            status = undo(
                ctx,
                env,
                dep_id,
                plan,
                lease,
                switched=switched,
                reason=reason,
                blame_new=not isinstance(e, pg.Aborted | ConfigError),
            )
            if isinstance(e, RollwiseError):
                e.message = f"{e.message}\n(deployment {dep_id} {status})"
                raise
            raise RollwiseError(f"{reason} (deployment {dep_id} {status})") from e
    return reasons.SUCCEEDED


@dataclass(frozen=True)
class Run:
    """One deployment as this process runs it: what every step's handler works with."""

    ctx: Context
    env: Environment
    plan: d.Plan
    watch: pg.Watch


def run_step(run: Run, step: d.AnyStep) -> dict[str, Any]:
    if isinstance(step, d.Stage):
        return pg.run_stage(run.watch, step)
    if isinstance(step, d.Batch):
        return pg.run_batch(run.watch, step)
    if (handler := STEPS.get(step.kind)) is None:
        raise RollwiseError(f"unknown step {step.name!r}")
    return handler(run)


def _verify(run: Run) -> dict[str, Any]:
    artifacts.verify(run.ctx.artifacts_dir(), run.plan.sha256, run.plan.to_version)
    return {"sha256": run.plan.sha256}


def _unpack(run: Run) -> dict[str, Any]:
    p = run.plan
    path = artifacts.artifact_path(run.ctx.artifacts_dir(), p.sha256)
    return {"dir": str(run.env.target.prepare(path, p.sha256, p.to_version))}


def _backup(run: Run) -> dict[str, Any]:
    return schema.take_backup(run.ctx, run.env, f"before deploying {run.plan.to_version}")


def _migrate(run: Run) -> dict[str, Any]:
    """Up, with the backup this deployment took first (restored if a non-transactional
    migration fails halfway)."""
    backup = next(
        (
            j["data"].get("backup")
            for j in repo.journal_rows(run.ctx.engine, run.watch.dep_id)
            if j["step"] == d.BACKUP and j["phase"] == "done"
        ),
        None,
    )
    return schema.migrate_up(run.ctx, run.env, run.plan, backup)


def _migrate_down(run: Run) -> dict[str, Any]:
    assert run.plan.from_version is not None
    target_rel = repo.get_release(run.ctx.engine, run.plan.to_version) or {}
    return schema.migrate_down(run.ctx, run.env, run.plan.from_version, target_rel)


def _start(run: Run) -> dict[str, Any]:
    start(run.ctx, run.env, run.plan.new)
    return {"instances": [i.name for i in run.plan.new]}


def _purge(run: Run) -> dict[str, Any]:
    p = run.plan
    if p.kind == d.ROLLBACK:
        return caches.purge_quietly(run.ctx, run.env, p.to_version, p.from_version) or {}
    return caches.purge(run.ctx, run.env, p.to_version, p.from_version)


def _drain(run: Run) -> dict[str, Any]:
    return {"inflight_left": drain(run.ctx, run.env, run.plan.old)}


def _stop_old(run: Run) -> dict[str, Any]:
    stop(run.ctx, run.env, run.plan.old)
    return {"stopped": [i.name for i in run.plan.old]}


def _finalize(run: Run) -> dict[str, Any]:
    finalize(run.ctx, run.plan)
    return {"live": run.plan.to_version}


def _hooks(run: Run, commands: list[str]) -> dict[str, Any]:
    plan = run.plan
    variables = {
        **without_secrets(os.environ),
        "ROLLWISE_ENV": plan.env,
        "ROLLWISE_VERSION": plan.to_version,
        "ROLLWISE_PREVIOUS_VERSION": plan.from_version or "",
    }
    for cmd in commands:
        proc = subprocess.run(
            cmd,
            shell=True,
            cwd=run.env.release_dir(plan.to_version),
            env=variables,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RollwiseError(
                f"hook exited with {proc.returncode}: {cmd}", where="hooks", hint="\n".join(tail)
            )
    return {"hooks": len(commands)}


STEPS: dict[str, Callable[[Run], dict[str, Any]]] = {
    d.VERIFY: _verify,
    d.UNPACK: _unpack,
    d.PRE_HOOKS: lambda run: _hooks(run, run.ctx.config.hooks.pre_deploy),
    d.BACKUP: _backup,
    d.MIGRATE: _migrate,
    d.START: _start,
    d.HEALTH: lambda run: {"ready_ms": wait_ready(run.ctx, run.env, run.plan.new)},
    d.PREVIEW: lambda run: pg.run_preview(run.watch, run.plan.new[0].endpoint.url()),
    d.SWITCH: lambda run: switch(run.ctx, run.env, run.plan.new),
    d.MIGRATE_DOWN: _migrate_down,
    d.PURGE: _purge,
    d.POST_HOOKS: lambda run: _hooks(run, run.ctx.config.hooks.post_deploy),
    d.CHECKS: lambda run: pg.run_checks(run.watch),
    d.BAKE: lambda run: pg.run_bake(run.watch),
    d.DRAIN: _drain,
    d.STOP_OLD: _stop_old,
    d.FINALIZE: _finalize,
}


def finalize(ctx: Context, plan: d.Plan) -> None:
    with ctx.engine.begin() as conn:
        repo.set_env_state(conn, plan.env, plan.to_version, [vars(i) for i in plan.new])
        repo.set_mark(conn, plan.env, plan.to_version, reasons.GOOD, "passed its checks")
        if plan.kind == d.ROLLBACK and plan.from_version and plan.from_version != plan.to_version:
            repo.set_mark(
                conn, plan.env, plan.from_version, reasons.BAD, reasons.ROLLED_BACK_BY_USER
            )


def undo(
    ctx: Context,
    env: Environment,
    dep_id: int,
    plan: d.Plan,
    lease: Lease,
    *,
    switched: bool,
    reason: str,
    blame_new: bool,
) -> str:
    """Traffic back on the old instances first, then stop the new ones."""
    repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, "undo", "started")
    if plan.old or not switched:
        if plan.old:
            restore(ctx, env, plan)
            switch(ctx, env, plan.old)
        try:
            stop(ctx, env, plan.new)
        except RollwiseError as e:  # nothing to stop where the target never came up
            ctx.emit("stop", reasons.ERROR, env=plan.env, reason=str(e))
        status = (
            reasons.ABORTED
            if not blame_new
            else (reasons.ROLLED_BACK if switched else reasons.FAILED)
        )
    else:  # first release of the environment: nothing to go back to, keep it serving
        finalize(ctx, plan)
        status = reasons.FAILED
    with ctx.engine.begin() as conn:
        repo.fence(conn, plan.env, lease.token)
        repo.set_status(conn, dep_id, status, reason)
        if blame_new and (plan.old or not switched):
            repo.set_mark(conn, plan.env, plan.to_version, reasons.BAD, reason)
    schema_back = _schema_back(ctx, env, dep_id, plan) if plan.old else None
    purged = (
        caches.purge_quietly(ctx, env, plan.from_version or "", plan.to_version)
        if plan.old and switched
        else None
    )
    checks = pg.verify_after_undo(ctx, env, plan, dep_id) if plan.old else None
    repo.journal_write(
        ctx.engine,
        plan.env,
        lease.token,
        dep_id,
        "undo",
        "done",
        {"status": status, "checks": checks, "schema": schema_back, "purged": purged},
    )
    ctx.emit(
        plan.kind,
        status,
        env=plan.env,
        version=plan.to_version,
        reason=reason,
        data={"deployment": dep_id, "serving": plan.from_version},
    )
    return status


def _schema_back(
    ctx: Context, env: Environment, dep_id: int, plan: d.Plan
) -> dict[str, Any] | None:
    """With traffic back on the old release, undo exactly what this deployment's schema
    step did: a deploy's migrations down (the ones it applied, nothing else); a rollback's
    down migrations, run before the older release started, up again."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    ran = {j["step"]: j["data"] for j in rows if j["phase"] == "done"}
    started = {j["step"] for j in rows if j["phase"] == "started"}
    try:
        if (
            plan.kind == d.ROLLBACK
            and d.MIGRATE_DOWN in ran
            and plan.names().index(d.MIGRATE_DOWN) < plan.names().index(d.SWITCH)
        ):
            assert plan.from_version is not None  # the older release never took traffic
            return schema.upgrade(ctx, env, plan.from_version, plan.from_version)
        if plan.kind == d.DEPLOY and d.MIGRATE in started:
            applied = ran[d.MIGRATE].get("versions") if d.MIGRATE in ran else None
            return schema.undo_upgrade(ctx, env, plan.to_version, applied, plan.from_version)
    except RollwiseError as e:
        ctx.emit(
            "migrate",
            reasons.ERROR,
            env=plan.env,
            version=plan.from_version,
            reason=f"schema not taken back: {e}",
        )
        return {"schema": "error", "error": str(e)}
    return None


def restore(ctx: Context, env: Environment, plan: d.Plan) -> None:
    """Before traffic goes back: old instances a rolling deploy already stopped (or that
    died) start again from their release and must be ready, so traffic never goes to cold
    or too few instances."""
    try:
        alive = {i.name for i in env.target.instances() if i.alive}
    except Unreachable as e:  # a fleet host is down: start (idempotent) where hosts answer
        ctx.emit("restore", reasons.ERROR, env=plan.env, reason=str(e))
        alive = set()
    gone = tuple(i for i in plan.old if i.name not in alive)
    started: list[str] = []
    ms = 0.0
    for i in gone:
        try:
            ms += start_ready(ctx, env, (i,))
            started.append(i.name)
        except Unreachable as e:  # its host is down: it serves nothing, as before
            ctx.emit("restore", reasons.ERROR, env=plan.env, reason=f"{i.name}: {e}")
    if started:
        ctx.emit(
            "restore",
            reasons.OK,
            env=plan.env,
            version=plan.from_version,
            data={"instances": started, "ready_ms": round(ms, 1)},
        )


def recover(ctx: Context, env: Environment, lease: Lease) -> str | None:
    """Under the lock: finish or undo a deployment whose process died, and note on it what
    was done. Says what it did (None: nothing was left to do)."""
    dep = repo.active_deployment(ctx.engine, env.name)
    if dep is None and not repo.env_state(ctx.engine, env.name)["live_version"]:
        return None
    agent_back = env.target.ensure()  # a dead agent comes back with its instances
    if dep is None:
        return "the agent was not running; started it with its instances" if agent_back else None
    plan = d.Plan.from_dict(dep["plan"])
    at, switched = interrupted_at(ctx, dep["id"])
    who = f"recovered by {ctx.actor} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}Z"
    if switched:
        ctx.emit(
            "recover",
            "resume",
            env=env.name,
            version=plan.to_version,
            reason=reasons.INTERRUPTED_AFTER_SWITCH,
            data={"deployment": dep["id"]},
        )
        run_plan(ctx, env, dep["id"], plan, lease)
        complete(
            ctx,
            dep["id"],
            plan,
            lease,
            note=f"interrupted at step {at}, after the switch; resumed and completed, {who}",
        )
        return (
            f"deployment {dep['id']} ({plan.kind} to {plan.to_version}) was interrupted "
            f"at step {at}, after the switch; resumed and completed it"
        )
    serving = plan.from_version or "nothing"
    undo(
        ctx,
        env,
        dep["id"],
        plan,
        lease,
        switched=False,
        reason=f"interrupted at step {at}, before the switch; undone, {serving} keeps "
        f"serving; {who}",
        blame_new=False,
    )
    return (
        f"deployment {dep['id']} ({plan.kind} to {plan.to_version}) was interrupted "
        f"at step {at}, before the switch; rolled it back, {serving} keeps serving"
    )


def interrupted_at(ctx: Context, dep_id: int) -> tuple[str, bool]:
    """The step an interrupted deployment last journaled, and whether its switch was done
    (then recovery finishes it; otherwise it undoes it)."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    done = {r["step"] for r in rows if r["phase"] == "done"}
    return (rows[-1]["step"] if rows else "start"), d.SWITCH in done


def complete(
    ctx: Context, dep_id: int, plan: d.Plan, lease: Lease, note: str | None = None
) -> None:
    with ctx.engine.begin() as conn:
        repo.fence(conn, plan.env, lease.token)
        repo.set_status(conn, dep_id, reasons.SUCCEEDED, note)
    ctx.emit(
        plan.kind,
        reasons.SUCCEEDED,
        env=plan.env,
        version=plan.to_version,
        reason=note,
        data={"deployment": dep_id, "from": plan.from_version},
    )
