"""One state machine for deploys and rollbacks: each step journaled before and after it runs.

A step is idempotent. After a crash, the next command finds the deployment: if traffic was
already switched it resumes the remaining steps, otherwise it puts traffic back on the old
instances and stops the new ones.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from rollwise import artifacts, reasons
from rollwise import domain as d
from rollwise.controller import caches, schema
from rollwise.controller import progressive as pg
from rollwise.controller.context import Context
from rollwise.controller.lock import Lease
from rollwise.errors import ConfigError, RollwiseError
from rollwise.failpoint import failpoint
from rollwise.store import repo
from rollwise.traffic import Backend


def run_plan(ctx: Context, dep_id: int, plan: d.Plan, lease: Lease) -> str:
    """Run the steps not yet done; on failure undo what must be undone. Returns the status."""
    done = repo.done_steps(ctx.engine, dep_id)
    watch = pg.Watch.open(ctx, plan, dep_id)
    for step in plan.steps:
        if step in done:
            continue
        try:
            if repo.pending_request(ctx.engine, dep_id) in (pg.ABORT, pg.ROLLBACK):
                watch.taken()
            repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, step, "started")
            ctx.emit("step", "started", env=plan.env, version=plan.to_version,
                     data={"deployment": dep_id, "step": step})
            failpoint(step, "before")
            data = run_step(ctx, plan, step, watch)
            failpoint(step, "after")
            repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, step, "done", data)
            ctx.emit("step", reasons.OK, env=plan.env, version=plan.to_version,
                     data={"deployment": dep_id, "step": step, **data})
            done.add(step)
        except Exception as e:
            switched = plan.traffic_moving(done | {step})
            reason = f"step {step}: {e}"
            repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, step, "failed",
                               {"error": str(e)})
            ctx.emit("step", reasons.ERROR, env=plan.env, version=plan.to_version,
                     reason=reason, data={"deployment": dep_id, "step": step})
            status = undo(ctx, dep_id, plan, lease, switched=switched, reason=reason,
                          blame_new=not isinstance(e, pg.Aborted | ConfigError))
            if isinstance(e, RollwiseError):
                e.message = f"{e.message}\n(deployment {dep_id} {status})"
                raise
            raise RollwiseError(f"{reason} (deployment {dep_id} {status})") from e
    return reasons.SUCCEEDED


def start_ready(ctx: Context, env: str, instances: tuple[d.InstancePlan, ...]) -> float:
    """Start instances (idempotent by name) and wait until each is ready; returns ms."""
    target, cfg = ctx.target(env), ctx.config
    target.ensure()
    for i in instances:
        target.start(i.name, i.version, ctx.release_dir(env, i.version), i.port,
                     cfg.run.command, ctx.instance_env(env, i.version))
    t0 = time.monotonic()
    for i in instances:
        target.wait_ready(i.name, i.port, cfg.health)
    return round((time.monotonic() - t0) * 1000, 1)


def _hooks(ctx: Context, plan: d.Plan, commands: list[str]) -> dict[str, Any]:
    env = {**os.environ, "ROLLWISE_ENV": plan.env, "ROLLWISE_VERSION": plan.to_version,
           "ROLLWISE_PREVIOUS_VERSION": plan.from_version or ""}
    for cmd in commands:
        proc = subprocess.run(cmd, shell=True, cwd=ctx.release_dir(plan.env, plan.to_version),
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RollwiseError(f"hook exited with {proc.returncode}: {cmd}",
                                where="hooks", hint="\n".join(tail))
    return {"hooks": len(commands)}


def run_step(ctx: Context, plan: d.Plan, step: str, watch: pg.Watch) -> dict[str, Any]:
    target, cfg = ctx.target(plan.env), ctx.config
    if stage := plan.stage(step):
        return pg.run_stage(watch, stage)
    if step == d.BACKUP:
        return schema.take_backup(ctx, plan.env, f"before deploying {plan.to_version}")
    if step == d.MIGRATE:
        backup = next((j["data"].get("backup") for j in repo.journal_rows(ctx.engine,
                                                                          watch.dep_id)
                       if j["step"] == d.BACKUP and j["phase"] == "done"), None)
        return schema.migrate_up(ctx, plan, backup)
    if step == d.MIGRATE_DOWN:
        assert plan.from_version is not None
        target_rel = repo.get_release(ctx.engine, plan.to_version) or {}
        return schema.migrate_down(ctx, plan.env, plan.from_version, target_rel)
    if step == d.PURGE:
        if plan.kind == d.ROLLBACK:
            return caches.purge_quietly(ctx, plan.env, plan.to_version, plan.from_version) or {}
        return caches.purge(ctx, plan.env, plan.to_version, plan.from_version)
    if step == d.PREVIEW:
        return pg.run_preview(watch, f"http://127.0.0.1:{plan.new[0].port}")
    if step == d.CHECKS:
        return pg.run_checks(watch)
    if step == d.BAKE:
        return pg.run_bake(watch)
    if step == d.VERIFY:
        artifacts.verify(ctx.artifacts_dir(), plan.sha256, plan.to_version)
        return {"sha256": plan.sha256}
    if step == d.UNPACK:
        path = artifacts.artifact_path(ctx.artifacts_dir(), plan.sha256)
        return {"dir": str(target.prepare(path, plan.sha256, plan.to_version))}
    if step == d.PRE_HOOKS:
        return _hooks(ctx, plan, cfg.hooks.pre_deploy)
    if step == d.POST_HOOKS:
        return _hooks(ctx, plan, cfg.hooks.post_deploy)
    if step == d.START:
        target.ensure()
        env = ctx.instance_env(plan.env, plan.to_version)
        for i in plan.new:
            target.start(i.name, i.version, ctx.release_dir(plan.env, plan.to_version), i.port,
                         cfg.run.command, env)
        return {"instances": [i.name for i in plan.new]}
    if step == d.HEALTH:
        t0 = time.monotonic()
        for i in plan.new:
            target.wait_ready(i.name, i.port, cfg.health)
        return {"ready_ms": round((time.monotonic() - t0) * 1000, 1)}
    if (k := plan.batch(step)) is not None:
        return pg.run_batch(watch, k)
    if step == d.SWITCH:
        return switch(ctx, plan.env, plan.new)
    if step == d.DRAIN:
        router = ctx.router(plan.env)
        left = {i.name: router.drain(i.name, cfg.stop.drain_timeout_s) for i in plan.old}
        return {"inflight_left": left}
    if step == d.STOP_OLD:
        stop(ctx, plan.env, plan.old)
        return {"stopped": [i.name for i in plan.old]}
    if step == d.FINALIZE:
        finalize(ctx, plan)
        return {"live": plan.to_version}
    raise RollwiseError(f"unknown step {step!r}")


def switch(ctx: Context, env: str, to: tuple[d.InstancePlan, ...]) -> dict[str, Any]:
    """Send all new requests to `to`."""
    return shift(ctx, env, to, {i.name: 1 for i in to})


def shift(ctx: Context, env: str, instances: tuple[d.InstancePlan, ...],
          weights: dict[str, int]) -> dict[str, Any]:
    """Apply `weights` (others get 0), then read them back to verify."""
    router = ctx.router(env)
    router.register([Backend(i.name, i.version, "127.0.0.1", i.port) for i in instances])
    want = {k: v for k, v in weights.items() if v > 0}
    t0 = time.perf_counter()
    router.set_weights(want)
    ms = (time.perf_counter() - t0) * 1000
    got = {k: v for k, v in router.weights().items() if v > 0}
    if got != want:
        raise RollwiseError(f"router did not apply the weights: want {want}, has {got}",
                            where=f"router of {env}")
    versions = {i.name: i.version for i in instances}
    ctx.emit("switch", reasons.OK, env=env,
             version=next((versions[n] for n in want if n in versions), None),
             data={"switch_ms": round(ms, 3), "to": list(want), "weights": want})
    return {"switch_ms": round(ms, 3), "weights": want}


def stop(ctx: Context, env: str, instances: tuple[d.InstancePlan, ...]) -> None:
    target, router = ctx.target(env), ctx.router(env)
    for i in instances:
        router.remove(i.name)
        target.stop(i.name, ctx.config.stop.grace_s)


def finalize(ctx: Context, plan: d.Plan) -> None:
    with ctx.engine.begin() as conn:
        repo.set_env_state(conn, plan.env, plan.to_version, [vars(i) for i in plan.new])
        repo.set_mark(conn, plan.env, plan.to_version, reasons.GOOD, "passed its checks")
        if plan.kind == d.ROLLBACK and plan.from_version and \
                plan.from_version != plan.to_version:
            repo.set_mark(conn, plan.env, plan.from_version, reasons.BAD,
                          reasons.ROLLED_BACK_BY_USER)


def undo(ctx: Context, dep_id: int, plan: d.Plan, lease: Lease, *, switched: bool,
         reason: str, blame_new: bool) -> str:
    """Traffic back on the old instances first, then stop the new ones."""
    repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, "undo", "started")
    if plan.old or not switched:
        if plan.old:
            restore(ctx, plan)
            switch(ctx, plan.env, plan.old)
        try:
            stop(ctx, plan.env, plan.new)
        except RollwiseError as e:  # nothing to stop where the target never came up
            ctx.emit("stop", reasons.ERROR, env=plan.env, reason=str(e))
        status = reasons.ABORTED if not blame_new else (
            reasons.ROLLED_BACK if switched else reasons.FAILED)
    else:  # first release of the environment: nothing to go back to, keep it serving
        finalize(ctx, plan)
        status = reasons.FAILED
    with ctx.engine.begin() as conn:
        repo.fence(conn, plan.env, lease.token)
        repo.set_status(conn, dep_id, status, reason)
        if blame_new and (plan.old or not switched):
            repo.set_mark(conn, plan.env, plan.to_version, reasons.BAD, reason)
    schema_back = _schema_back(ctx, dep_id, plan) if plan.old else None
    purged = caches.purge_quietly(ctx, plan.env, plan.from_version or "", plan.to_version) \
        if plan.old and switched else None
    checks = pg.verify_after_undo(ctx, plan, dep_id) if plan.old else None
    repo.journal_write(ctx.engine, plan.env, lease.token, dep_id, "undo", "done",
                       {"status": status, "checks": checks, "schema": schema_back,
                        "purged": purged})
    ctx.emit(plan.kind, status, env=plan.env, version=plan.to_version, reason=reason,
             data={"deployment": dep_id, "serving": plan.from_version})
    return status


def _schema_back(ctx: Context, dep_id: int, plan: d.Plan) -> dict[str, Any] | None:
    """With traffic back on the old release, undo exactly what this deployment's schema
    step did: a deploy's migrations down (the ones it applied, nothing else); a rollback's
    down migrations, run before the older release started, up again."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    ran = {j["step"]: j["data"] for j in rows if j["phase"] == "done"}
    started = {j["step"] for j in rows if j["phase"] == "started"}
    try:
        if plan.kind == d.ROLLBACK and d.MIGRATE_DOWN in ran and \
                plan.steps.index(d.MIGRATE_DOWN) < plan.steps.index(d.SWITCH):
            assert plan.from_version is not None  # the older release never took traffic
            return schema.upgrade(ctx, plan.env, plan.from_version, plan.from_version)
        if plan.kind == d.DEPLOY and d.MIGRATE in started:
            applied = ran[d.MIGRATE].get("versions") if d.MIGRATE in ran else None
            return schema.undo_upgrade(ctx, plan.env, plan.to_version, applied,
                                       plan.from_version)
    except RollwiseError as e:
        ctx.emit("migrate", reasons.ERROR, env=plan.env, version=plan.from_version,
                 reason=f"schema not taken back: {e}")
        return {"schema": "error", "error": str(e)}
    return None


def restore(ctx: Context, plan: d.Plan) -> None:
    """Before traffic goes back: old instances a rolling deploy already stopped (or that
    died) start again from their release and must be ready, so traffic never goes to cold
    or too few instances."""
    alive = {i.name for i in ctx.target(plan.env).instances() if i.alive}
    gone = tuple(i for i in plan.old if i.name not in alive)
    if gone:
        ms = start_ready(ctx, plan.env, gone)
        ctx.emit("restore", reasons.OK, env=plan.env, version=plan.from_version,
                 data={"instances": [i.name for i in gone], "ready_ms": ms})


def recover(ctx: Context, env: str, lease: Lease) -> str | None:
    """Under the lock: finish or undo a deployment whose process died, and note on it what
    was done. Says what it did (None: nothing was left to do)."""
    dep = repo.active_deployment(ctx.engine, env)
    if dep is None and not repo.env_state(ctx.engine, env)["live_version"]:
        return None
    agent_back = ctx.target(env).ensure()  # a dead agent comes back with its instances
    if dep is None:
        return "the agent was not running; started it with its instances" if agent_back \
            else None
    plan = d.Plan.from_dict(dep["plan"])
    at, switched = interrupted_at(ctx, dep["id"])
    who = f"recovered by {ctx.actor} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}Z"
    if switched:
        ctx.emit("recover", "resume", env=env, version=plan.to_version,
                 reason=reasons.INTERRUPTED_AFTER_SWITCH, data={"deployment": dep["id"]})
        run_plan(ctx, dep["id"], plan, lease)
        complete(ctx, dep["id"], plan, lease,
                 note=f"interrupted at step {at}, after the switch; resumed and completed, "
                 f"{who}")
        return (f"deployment {dep['id']} ({plan.kind} to {plan.to_version}) was interrupted "
                f"at step {at}, after the switch; resumed and completed it")
    serving = plan.from_version or "nothing"
    undo(ctx, dep["id"], plan, lease, switched=False,
         reason=f"interrupted at step {at}, before the switch; undone, {serving} keeps "
         f"serving; {who}", blame_new=False)
    return (f"deployment {dep['id']} ({plan.kind} to {plan.to_version}) was interrupted "
            f"at step {at}, before the switch; rolled it back, {serving} keeps serving")


def interrupted_at(ctx: Context, dep_id: int) -> tuple[str, bool]:
    """The step an interrupted deployment last journaled, and whether its switch was done
    (then recovery finishes it; otherwise it undoes it)."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    done = {r["step"] for r in rows if r["phase"] == "done"}
    return (rows[-1]["step"] if rows else "start"), d.SWITCH in done


def complete(ctx: Context, dep_id: int, plan: d.Plan, lease: Lease,
             note: str | None = None) -> None:
    with ctx.engine.begin() as conn:
        repo.fence(conn, plan.env, lease.token)
        repo.set_status(conn, dep_id, reasons.SUCCEEDED, note)
    ctx.emit(plan.kind, reasons.SUCCEEDED, env=plan.env, version=plan.to_version,
             data={"deployment": dep_id, "from": plan.from_version})
