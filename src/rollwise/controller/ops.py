"""What the CLI (and later the API) calls: release, deploy, rollback, abort, status, history."""

from __future__ import annotations

import secrets as pysecrets
import time
from dataclasses import dataclass, field
from typing import Any

from rollwise import artifacts, audit, reasons
from rollwise import domain as d
from rollwise.agent.client import AgentClient
from rollwise.controller import caches, machine, schema
from rollwise.controller import progressive as pg
from rollwise.controller.context import Context
from rollwise.controller.lock import Lease, current, holder_id, lease_if_free
from rollwise.errors import ConfigError, NotFound, RollwiseError
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
    db_schema, warnings = schema.release_schema(ctx, source)  # refuses a missing down step
    warnings += caches.static_warnings(ctx, source)
    sha, size, _ = artifacts.pack(source, ctx.config.build.exclude, ctx.artifacts_dir())
    meta = artifacts.ReleaseMeta(
        app=ctx.config.app, version=version, sha256=sha, size=size,
        git_commit=artifacts.git_commit(source), built_at=artifacts.now(),
        builder=artifacts.builder(), changelog=changelog, config_sha256=ctx.config_sha256(),
        schema=db_schema)
    repo.add_release(ctx.engine, meta)
    ctx.emit("release", reasons.OK, version=version, git_commit=meta.git_commit,
             data={"sha256": sha, "size": size, "schema": (db_schema or {}).get("version"),
                   "warnings": warnings})
    pruned = gc(ctx)
    note = f"; pruned {', '.join(pruned)}" if pruned else ""
    warn = "".join(f"\nwarning: {w}" for w in warnings)
    return Outcome(f"release {version} created: sha256 {sha[:12]}, {size} bytes{note}{warn}",
                   {"version": version, "sha256": sha, "size": size, "pruned": pruned,
                    "schema": (db_schema or {}).get("version"), "warnings": warnings})


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
           lock_wait: float = 0.0, force_reason: str | None = None) -> Outcome:
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
        return _run(ctx, env, kind, rel, state, lease, recovered, force_reason)


def _run(ctx: Context, env: str, kind: str, rel: dict[str, Any], state: dict[str, Any],
         lease: Lease, recovered: str | None, force_reason: str | None = None) -> Outcome:
    hooks, env_cfg = ctx.config.hooks, ctx.env(env)
    ctx.target(env).ensure()  # pre-flight: a busy router port fails here, before any record
    warnings = preflight_checks(ctx, env, rel["version"], state["live_version"])
    strategy = env_cfg.strategy
    migrate, migrate_down = schema.needs_migrations(ctx, env, rel), False
    down_first = False
    if kind == d.ROLLBACK:
        change, _ = schema.rollback_change_for(ctx, env, state["live_version"], rel)
        if change.action == "restore":
            raise RollwiseError(f"rollback to {rel['version']}: {change.reason}",
                                where=f"environment {env}", hint="restore the database from "
                                "its backup first; nothing was changed")
        migrate_down = change.action == "down"
        if migrate_down:
            _check_window(ctx, env, state, rel["version"], force_reason)
            down_first = ctx.config.migrations.rollback == "before_start"  # type: ignore[union-attr]
    plan = d.plan_deployment(
        env=env, kind=kind, to_version=rel["version"], sha256=rel["sha256"],
        from_version=state["live_version"],
        old=[d.InstancePlan(**i) for i in state["instances"]],
        ports=free_ports(ctx.env(env).instances), suffix=pysecrets.token_hex(3),
        pre_hooks=bool(hooks.pre_deploy), post_hooks=bool(hooks.post_deploy),
        strategy=strategy.type, bake_s=strategy.bake, checks=bool(env_cfg.verify),
        batch_size=strategy.batch_size, pause_s=strategy.pause_s,
        migrate=migrate, migrate_down=migrate_down, down_first=down_first,
        backup=schema.wants_backup(ctx, env, migrate),
        purge=caches.configured(ctx, env),
        stages=tuple(d.Stage(s.weight, strategy.pause_s if s.pause_s is None else s.pause_s,
                             s.until_promote) for s in strategy.steps))
    dep_id = repo.create_deployment(ctx.engine, plan.as_dict(), ctx.actor)
    ctx.emit(kind, "started", env=env, version=plan.to_version, git_commit=rel["git_commit"],
             data={"deployment": dep_id, "from": plan.from_version, "steps": list(plan.steps),
                   "warnings": warnings})
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


def preflight_checks(ctx: Context, env: str, version: str, live: str | None) -> list[str]:
    """Refuse a malformed Prometheus query before anything moves; an unreachable Prometheus
    is only a warning (its checks will be inconclusive, which pauses the rollout)."""
    from rollwise.analysis import Look
    from rollwise.analysis.prometheus import PrometheusProvider
    from rollwise.config.schema import PrometheusCheck

    look = Look(env, version, live)
    cfg = ctx.env(env)
    warnings = [w for c in [*cfg.analysis.checks, *cfg.verify] if isinstance(c, PrometheusCheck)
                if (w := PrometheusProvider(c).validate(look))]
    for w in warnings:
        ctx.emit("preflight", "warning", env=env, version=version, reason=w)
    return warnings


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


def _check_window(ctx: Context, env: str, state: dict[str, Any], target: str,
                  force_reason: str | None) -> None:
    """R21: past the environment's rollback window a rollback that runs down migrations
    needs an explicit, recorded override."""
    window_h = ctx.env(env).rollback_window_h
    live_for_h = (time.time() - float(state.get("updated_at") or time.time())) / 3600
    if live_for_h <= window_h:
        return
    if not force_reason:
        ctx.emit(d.ROLLBACK, reasons.REFUSED, env=env, version=target,
                 reason=f"rollback window closed ({live_for_h:.1f} h > {window_h:g} h)")
        raise RollwiseError(
            f"{env}: {state['live_version']} has been live {live_for_h:.1f} h, past the "
            f"rollback window of {window_h:g} h; rolling back to {target} would run down "
            "migrations and drop what was written to the new schema since",
            where=f"environments.{env}.rollback_window_h",
            hint="fix forward with a new release, or override: rollwise rollback --force "
            "--reason '...' (recorded in the audit log)")
    ctx.emit(d.ROLLBACK, "forced", env=env, version=target,
             reason=f"past the rollback window ({live_for_h:.1f} h > {window_h:g} h): "
             f"{force_reason}")


def describe_schema(ctx: Context, env: str, live: dict[str, Any] | None,
                    target: dict[str, Any]) -> list[str]:
    """What a rollback to `target` does to the database schema, with the SQL it runs."""
    change, path = schema.rollback_change_for(ctx, env, live["version"] if live else None,
                                              target)
    if change.action != "down" or live is None:
        return schema.describe(change, [])
    sql = schema.preview_down(ctx, env, live["version"], target, path)
    return schema.describe(change, sql, schema.data_dropped(ctx, env, path),
                           schema.parked_dir(ctx, env))


def rollback(ctx: Context, env: str, to: str | None, lock_wait: float = 0.0,
             reason: str | None = None, force_reason: str | None = None) -> Outcome:
    """Roll back to `to` or the newest known-good release. While a deployment is running in
    another live process, ask it to roll back instead (it moves traffic back at once)."""
    if to is None and (asked := _ask_running(ctx, env, pg.ROLLBACK, reason)):
        return asked
    _, target = rollback_plan(ctx, env, to)
    if target is None:
        ctx.emit(d.ROLLBACK, reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: no earlier known-good release to roll back to; nothing done",
                       changed=False)
    return deploy(ctx, env, target["version"], kind=d.ROLLBACK, lock_wait=lock_wait,
                  force_reason=force_reason)


def running(ctx: Context, env: str) -> dict[str, Any] | None:
    """The deployment a live process is running in `env`, if any."""
    ctx.env(env)
    dep = repo.active_deployment(ctx.engine, env)
    lock = current(ctx.engine, env)
    return dep if dep is not None and lock is not None and not lock.expired else None


def _ask_running(ctx: Context, env: str, what: str, reason: str | None) -> Outcome | None:
    """Pass a request to the process running the environment's deployment, if one is."""
    dep, lock = running(ctx, env), current(ctx.engine, env)
    if dep is None or lock is None:
        return None
    if what == pg.ROLLBACK and dep["kind"] == d.ROLLBACK:  # never undo a rollback by asking
        return Outcome(f"{env}: a rollback to {dep['to_version']} is already in progress "
                       f"(deployment {dep['id']}); nothing to do",
                       {"deployment": dep["id"]}, changed=False)
    actor = f"{ctx.actor} ({reason})" if reason else ctx.actor
    repo.request(ctx.engine, dep["id"], what, actor[:128])
    ctx.emit(what, "requested", env=env, version=dep["to_version"], reason=reason,
             data={"deployment": dep["id"]})
    return Outcome(f"{env}: asked {lock.holder} to {what} deployment {dep['id']} "
                   f"({dep['kind']} to {dep['to_version']})",
                   {"deployment": dep["id"], "requested": what})


def promote(ctx: Context, env: str, full: bool = False) -> Outcome:
    """End the current canary pause (or, with `full`, every remaining one)."""
    asked = _ask_running(ctx, env, pg.PROMOTE_FULL if full else pg.PROMOTE, None)
    if asked is None:
        ctx.emit("promote", reasons.REFUSED, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        raise NotFound(f"{env}: no deployment in progress; nothing to promote",
                       where=f"environment {env}",
                       hint="`rollwise status` shows what is running; `rollwise deploy` "
                       "starts a rollout")
    return asked


def abort(ctx: Context, env: str) -> Outcome:
    ctx.env(env)
    dep = repo.active_deployment(ctx.engine, env)
    if dep is None:
        ctx.emit("abort", reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: no deployment in progress; nothing to abort", changed=False)
    if asked := _ask_running(ctx, env, pg.ABORT, None):
        return asked
    with Lease(ctx.engine, env, holder_id(ctx.actor)) as lease:
        repo.request(ctx.engine, dep["id"], pg.ABORT, ctx.actor)
        msg = machine.recover(ctx, env, lease)
    return Outcome(f"{env}: {msg}")


def status(ctx: Context, env: str | None) -> dict[str, Any]:
    """Each environment's state; finishes or undoes interrupted deployments it can lock."""
    out: dict[str, Any] = {"app": ctx.config.app, "environments": {}}
    for name in [env] if env else list(ctx.config.environments):
        ctx.env(name)
        recovered = None
        if _needs_recovery(ctx, name):
            with lease_if_free(ctx.engine, name, holder_id(ctx.actor)) as lease:
                recovered = machine.recover(ctx, name, lease) if lease else None
        out["environments"][name] = _env_status(ctx, name, recovered)
    return out


def _needs_recovery(ctx: Context, env: str) -> bool:
    """A deployment left open, or a dead agent behind a live release. Status takes the lock
    only then, so that polling it never makes a deploy starting at that moment fail."""
    if repo.active_deployment(ctx.engine, env) is not None:
        return True
    live = repo.env_state(ctx.engine, env)["live_version"]
    return bool(live) and AgentClient(ctx.env_dir(env), env).alive() is None


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
        "strategy": ctx.env(env).strategy.type,
        "analysis": _decisions(ctx, env, dep["id"] if dep else last[0]["id"] if last else None),
    }
    return info


def _decisions(ctx: Context, env: str, dep_id: int | None) -> list[dict[str, Any]]:
    """The analysis decisions of a deployment, with the numbers behind them."""
    if dep_id is None:
        return []
    rows = audit.iter_events(ctx.engine, env, limit=50, action="analysis")
    return [{"step": r["data"].get("step"), "decision": r["outcome"], "reason": r["reason"],
             "at": r["ts"], "measurements": r["data"].get("measurements", [])}
            for r in rows if r["data"].get("deployment") == dep_id]


def _dep_summary(dep: dict[str, Any]) -> dict[str, Any]:
    return {k: dep[k] for k in ("id", "env", "kind", "from_version", "to_version", "status",
                                "reason", "actor", "created_at", "updated_at")}


def history(ctx: Context, env: str | None, limit: int) -> list[dict[str, Any]]:
    if env:
        ctx.env(env)
    return [_dep_summary(dep) for dep in repo.list_deployments(ctx.engine, env, limit)]


def backup_create(ctx: Context, env: str, reason: str) -> Outcome:
    _database(ctx, env)
    info = schema.take_backup(ctx, env, reason)
    if info["backup"] is None:
        return Outcome(f"{env}: nothing to back up: {info['skipped']}", info, changed=False)
    return Outcome(f"{env}: backup {info['backup']} taken ({info['size']} bytes, "
                   f"{info['tables']} tables)", info)


def backup_list(ctx: Context, env: str) -> list[dict[str, Any]]:
    from rollwise.data import backups

    ctx.env(env)
    return [m.as_dict() for m in backups.manifests(schema.backups_dir(ctx, env))]


def backup_verify(ctx: Context, env: str, backup_id: str | None) -> Outcome:
    """Restore into a scratch database and compare with the source at backup time."""
    from rollwise.data import backups

    url = _database(ctx, env)
    folder = schema.backups_dir(ctx, env)
    m = backups.get(folder, backup_id) if backup_id else _newest(ctx, env)
    try:
        info = backups.verify(m, folder, url)
    except RollwiseError as e:
        ctx.emit("backup_verify", reasons.ERROR, env=env, reason=str(e), data={"id": m.id})
        raise
    ctx.emit("backup_verify", reasons.OK, env=env, data=info)
    return Outcome(f"{env}: backup {m.id} verified: restored {info['tables']} tables, "
                   f"{info['rows']} rows, identical to the source at backup time "
                   f"({info['restore_s']} s)", info)


def backup_loss(ctx: Context, env: str, backup_id: str) -> dict[str, int]:
    from rollwise.data import backups

    m = backups.get(schema.backups_dir(ctx, env), backup_id)
    return backups.loss(m, _database(ctx, env))


def backup_restore(ctx: Context, env: str, backup_id: str, lock_wait: float = 0.0) -> Outcome:
    """Put the database back as it was at the backup, under the environment's lock."""
    from rollwise.data import backups

    url = _database(ctx, env)
    folder = schema.backups_dir(ctx, env)
    m = backups.get(folder, backup_id)
    with Lease(ctx.engine, env, holder_id(ctx.actor), lock_wait):
        lost = backups.loss(m, url)
        backups.restore(m, folder, url)
    ctx.emit("backup_restore", reasons.OK, env=env, data={"id": m.id, "lost": lost})
    return Outcome(f"{env}: database restored from backup {m.id}", {"id": m.id, "lost": lost})


def _database(ctx: Context, env: str) -> str:
    url = schema.database_url(ctx, env)
    if url is None:
        raise ConfigError(f"environment {env!r} has no database (and `migrations`)",
                          where=str(ctx.config_path),
                          hint="add `database: {url: ...}` to the environment")
    return url


def _newest(ctx: Context, env: str) -> Any:
    from rollwise.data import backups

    ms = backups.manifests(schema.backups_dir(ctx, env))
    if not ms:
        raise NotFound(f"{env}: no backup yet", hint="`rollwise backup create`")
    return ms[-1]
