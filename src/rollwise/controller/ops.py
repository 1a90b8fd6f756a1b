"""What the CLI (and later the API) calls: release, deploy, rollback, abort, status, history."""

from __future__ import annotations

import re
import secrets as pysecrets
import time
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from rollwise import artifacts, audit, containers, reasons
from rollwise import domain as d
from rollwise import incidents as inc
from rollwise.agent.client import AgentClient
from rollwise.controller import caches, freezes, machine, schema
from rollwise.controller import progressive as pg
from rollwise.controller.context import Context, Environment
from rollwise.controller.lock import Lease, current, holder_dead, holder_id
from rollwise.errors import (
    ConfigError,
    HealthCheckFailed,
    LockHeld,
    NotFound,
    RollwiseError,
    UsageError,
)
from rollwise.store import repo


@dataclass
class Outcome:
    """What an operation did, for humans (`message`) and scripts (`data`)."""

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    changed: bool = True


def create_release(ctx: Context, version: str, changelog: str | None) -> Outcome:
    version = d.check_version(version)
    if (old := repo.get_release(ctx.engine, version)) is not None:
        raise RollwiseError(
            f"release {version} already exists (sha256 {old['sha256'][:12]})",
            hint="releases are immutable; create a new version",
        )
    source, build = (ctx.root / ctx.config.source).resolve(), ctx.config.build
    with artifacts.built(source, build.command, build.exclude) as tree:  # a copy, if built
        db_schema, warnings = schema.release_schema(ctx, tree.root)  # refuses a missing down
        warnings += caches.static_warnings(ctx, tree.root)
        image = (
            containers.release_image(ctx.config.image, tree.root, ctx.config.app, version)
            if ctx.config.image
            else None
        )
        sha, size, _ = artifacts.pack(
            tree,
            build.exclude,
            ctx.artifacts_dir(),
            {containers.IMAGE_FILE: containers.encode(image)} if image else None,
        )
    meta = artifacts.ReleaseMeta(
        app=ctx.config.app,
        version=version,
        sha256=sha,
        size=size,
        git_commit=artifacts.git_commit(source),
        built_at=artifacts.now(),
        builder=artifacts.builder(),
        changelog=changelog,
        config_sha256=ctx.config_sha256,
        schema=db_schema,
    )
    repo.add_release(ctx.engine, meta)
    ctx.emit(
        "release",
        reasons.OK,
        version=version,
        git_commit=meta.git_commit,
        data={
            "sha256": sha,
            "size": size,
            "schema": (db_schema or {}).get("version"),
            "image": image,
            "warnings": warnings,
        },
    )
    pruned = gc(ctx)
    note = f"; pruned {', '.join(pruned)}" if pruned else ""
    warn = "".join(f"\nwarning: {w}" for w in warnings)
    shown = f", image {image['id'][:19]} ({image['ref']})" if image else ""
    return Outcome(
        f"release {version} created: sha256 {sha[:12]}, {size} bytes{shown}{note}{warn}",
        {
            "version": version,
            "sha256": sha,
            "size": size,
            "pruned": pruned,
            "image": image,
            "schema": (db_schema or {}).get("version"),
            "warnings": warnings,
        },
    )


def protected_versions(ctx: Context) -> set[str]:
    """Never pruned: live releases and each environment's newest known-good ones."""
    keep = {s["live_version"] for s in repo.all_env_states(ctx.engine) if s["live_version"]}
    for env in ctx.config.environments:
        good = [m["version"] for m in repo.get_marks(ctx.engine, env) if m["mark"] == reasons.GOOD]
        keep.update(good[:2])  # the last known-good and the rollback target before it
    return keep


def gc(ctx: Context) -> list[str]:
    rels = repo.list_releases(ctx.engine)
    doomed = artifacts.prune_plan(
        [r["version"] for r in rels], ctx.config.keep_releases, protected_versions(ctx)
    )
    in_use = {r["sha256"] for r in rels if r["version"] not in doomed}
    for r in rels:
        if r["version"] in doomed:
            if r["sha256"] not in in_use:
                artifacts.artifact_path(ctx.artifacts_dir(), r["sha256"]).unlink(missing_ok=True)
            repo.set_pruned(ctx.engine, r["version"])
            ctx.emit("prune", reasons.OK, version=r["version"])
    return doomed


def release_record(ctx: Context, version: str) -> dict[str, Any]:
    """A release that exists and is not pruned (else NotFound naming the ones there are)."""
    return _release(ctx, version)


def _release(ctx: Context, version: str, flag: str = "version") -> dict[str, Any]:
    version = version.removeprefix("v")
    rel = repo.get_release(ctx.engine, version)
    if rel is None or rel["pruned"]:
        known = [r["version"] for r in repo.list_releases(ctx.engine)]
        state = "was pruned" if rel else "does not exist"
        raise NotFound(
            f"release {version} {state}",
            where=flag,
            hint=f"releases you can use: {', '.join(known) or 'none'} (`rollwise release list`)",
        )
    return rel


def deploy(
    ctx: Context,
    env: str,
    version: str,
    *,
    kind: str = d.DEPLOY,
    lock_wait: float = 0.0,
    force_reason: str | None = None,
    reason: str | None = None,
    approval: int | None = None,
    break_freeze: str | None = None,
) -> Outcome:
    """Deploy `version` (or, with kind rollback, go back to it). `force_reason` overrides a
    refusal that protects the user (a release marked bad, a closed rollback window) and is
    recorded; `reason` (an alert's, say) is recorded on the deployment and its events;
    `approval`: the approved request a deploy to an environment with `approvals` runs on;
    `break_freeze`: why a deploy goes ahead inside a freeze window (audited); rollbacks
    need none."""
    environment = ctx.environment(env)
    rel = _release(ctx, version, "--to" if kind == d.ROLLBACK else "version")
    with Lease(ctx.engine, env, holder_id(ctx.actor), lock_wait) as lease:
        recovered = machine.recover(ctx, environment, lease)
        state = repo.env_state(ctx.engine, env)
        if kind == d.ROLLBACK and state["live_version"] == rel["version"]:
            ctx.emit(
                kind, reasons.NOOP, env=env, version=rel["version"], reason=reasons.ALREADY_SERVING
            )
            return Outcome(
                f"{rel['version']} is already serving {env}; nothing to do",
                {"recovered": recovered},
                changed=False,
            )
        if kind == d.DEPLOY:
            _check_not_bad(ctx, env, rel["version"], force_reason)
            freezes.check(ctx, env, rel["version"], break_freeze)  # under the lock: when it runs
            _check_approved(ctx, environment, rel["version"], approval)
        return _run(ctx, environment, kind, rel, state, lease, recovered, force_reason, reason)


def _check_approved(ctx: Context, environment: Environment, version: str, ask: int | None) -> None:
    """With `approvals`, take the deploy's approved request (once), or refuse."""
    from rollwise import approvals

    rule, env = environment.config.approvals, environment.name
    if rule is None:
        return
    if ask is None:
        ctx.emit("deploy", reasons.REFUSED, env=env, version=version, reason="no approval")
        raise approvals.Refused(
            f"{env} needs {rule.required} approval(s) from someone other than the requester "
            "before a deploy",
            where=f"environments.{env}.approvals",
            hint="deploy through the team server (ROLLWISE_URL): it asks for the approvals "
            "and runs the deploy once they are given; rollbacks need none",
        )
    used = approvals.use(ctx.engine, ask, env, version)
    ctx.emit(
        "approval",
        "used",
        env=env,
        version=version,
        data={"request": used.id, "approvers": list(used.approvers), "by": used.decided_by},
    )


def check_deployable(
    ctx: Context,
    env: str,
    version: str,
    break_freeze: str | None = None,
    zone: tzinfo | None = None,
    force_reason: str | None = None,
) -> None:
    """Refuse, before anything moves, a release that does not exist or is marked bad
    (unless forced with a reason, recorded by the deploy), and a deploy inside a freeze
    window unless glass is broken (recorded by the deploy); the window's end is shown in
    the user's `zone` too."""
    ctx.env(env)
    version = _release(ctx, version)["version"]
    _check_not_bad(ctx, env, version, force_reason, record_forced=False)
    if not break_freeze:
        freezes.check(ctx, env, version, None, zone)


def _check_not_bad(
    ctx: Context, env: str, version: str, force_reason: str | None, record_forced: bool = True
) -> None:
    """A release marked bad in `env` deploys again only with a recorded reason that names
    the incident its rollback opened (e.g. `INC-2: config fixed`), so the override is tied
    to what went wrong. `record_forced`: emit the override (the deploy itself does; a
    check before a job is queued does not)."""
    mark = next((m for m in repo.get_marks(ctx.engine, env) if m["version"] == version), None)
    if mark is None or mark["mark"] != reasons.BAD:
        return
    why = reasons.words(mark["reason"] or "")
    opened = next((i for i in incident_list(ctx, env) if i.bad_version == version), None)
    if force_reason and (
        opened is None or re.search(rf"\b{re.escape(opened.id)}\b", force_reason, re.IGNORECASE)
    ):
        if record_forced:
            ctx.emit(
                d.DEPLOY,
                "forced",
                env=env,
                version=version,
                reason=f"deploying a release marked bad ({why}): {force_reason}",
            )
        return
    ctx.emit(
        d.DEPLOY,
        reasons.REFUSED,
        env=env,
        version=version,
        reason=f"marked bad: {why}",
    )
    named = f"; incident {opened.id} ({opened.status})" if opened else ""
    cite = f"{opened.id}: " if opened else ""
    raise RollwiseError(
        f"{version} is marked bad ({why}{named}); not deployed"
        + (f"; a forced deploy's reason must name {opened.id}" if force_reason and opened else ""),
        where=env,
        hint="fix forward with a new release, or deploy it "
        f"anyway: rollwise deploy {version} --env {env} --force --reason '{cite}...' (recorded "
        "in the audit log)",
    )


def _schema_steps(
    ctx: Context,
    environment: Environment,
    kind: str,
    rel: dict[str, Any],
    state: dict[str, Any],
    force_reason: str | None,
) -> tuple[bool, bool, bool]:
    """(migrate up, migrate down, down before the older release starts). A deploy never
    runs down migrations: to an older release whose schema must go back, it is refused and
    points to `rollback --to`, which previews the down path and the data it drops."""
    live, version, env = state["live_version"], rel["version"], environment.name
    if kind == d.ROLLBACK:
        change, _ = schema.rollback_change_for(ctx, environment, live, rel)
        if change.action == "restore":
            raise RollwiseError(
                f"rollback to {version}: {change.reason}",
                where=f"environment {env}",
                hint="restore the database from its backup first; nothing was changed",
            )
        if change.action != "down":
            return False, False, False
        _check_window(ctx, environment, state, version, force_reason)
        return False, True, ctx.config.migrations.rollback == "before_start"  # type: ignore[union-attr]
    if live and live != version and d.is_newer(live, version, release_order(ctx, env)):
        change, _ = schema.rollback_change_for(ctx, environment, live, rel)
        if change.action in ("down", "restore"):
            ctx.emit(
                kind,
                reasons.REFUSED,
                env=env,
                version=version,
                reason=f"older release needs the schema taken back: {change.reason}",
            )
            raise RollwiseError(
                f"{env}: {version} is older than the live release {live} and its schema is "
                f"behind the database ({change.reason}); a deploy never runs down migrations",
                where=f"release {version}",
                hint=f"`rollwise rollback --to {version} --env "
                f"{env}` previews the down migrations and the data they drop, then runs them; "
                "nothing was changed",
            )
        return False, False, False
    return bool(schema.pending(ctx, environment, version, live)), False, False


def _run(
    ctx: Context,
    environment: Environment,
    kind: str,
    rel: dict[str, Any],
    state: dict[str, Any],
    lease: Lease,
    recovered: str | None,
    force_reason: str | None = None,
    reason: str | None = None,
) -> Outcome:
    env, env_cfg, target = environment.name, environment.config, environment.target
    hooks = ctx.config.hooks
    ctx.instance_env(env, rel["version"])  # pre-flight: a secret without a value fails here
    target.ensure()  # pre-flight: a busy router port fails here, before any record
    # the release's migrations are read before planning: its checked artifact is unpacked
    target.prepare(
        artifacts.verify(ctx.artifacts_dir(), rel["sha256"], rel["version"]),
        rel["sha256"],
        rel["version"],
    )
    restart = kind == d.DEPLOY and state["live_version"] == rel["version"]
    warnings = preflight_checks(ctx, environment, rel["version"], state["live_version"], restart)
    strategy = env_cfg.strategy
    migrate, migrate_down, down_first = _schema_steps(
        ctx, environment, kind, rel, state, force_reason
    )
    backup = schema.wants_backup(ctx, environment, migrate)
    plan = d.plan_deployment(
        env=env,
        kind=kind,
        to_version=rel["version"],
        sha256=rel["sha256"],
        from_version=state["live_version"],
        old=[d.InstancePlan.from_dict(i) for i in state["instances"]],
        endpoints=target.endpoints(env_cfg.instances),
        suffix=pysecrets.token_hex(3),
        pre_hooks=bool(hooks.pre_deploy),
        post_hooks=bool(hooks.post_deploy),
        strategy="all-at-once" if restart else strategy.type,
        bake_s=0.0 if restart else strategy.bake,
        checks=bool(env_cfg.verify),
        batch_size=strategy.batch_size,
        pause_s=strategy.pause_s,
        batches=tuple(strategy.batches),
        migrate=migrate,
        migrate_down=migrate_down,
        down_first=down_first,
        backup=backup,
        purge=caches.configured(environment),
        stages=tuple(
            d.Stage(s.weight, strategy.pause_s if s.pause_s is None else s.pause_s, s.until_promote)
            for s in strategy.steps
        ),
    )
    dep_id = repo.create_deployment(ctx.engine, plan.as_dict(), ctx.actor)
    ctx.emit(
        kind,
        "started",
        env=env,
        version=plan.to_version,
        git_commit=rel["git_commit"],
        reason=reason,
        data={
            "deployment": dep_id,
            "from": plan.from_version,
            "steps": list(plan.names()),
            "warnings": warnings,
            "restart": restart,
        },
    )
    machine.run_plan(ctx, environment, dep_id, plan, lease)
    machine.complete(ctx, dep_id, plan, lease, note=reason)
    done = {
        j["step"]: j["data"] for j in repo.journal_rows(ctx.engine, dep_id) if j["phase"] == "done"
    }
    switch_ms = done.get(d.SWITCH, {}).get("switch_ms")
    backup_note = _backup_note(
        ctx, environment, kind, migrate, done.get(d.BACKUP) if backup else None
    )
    verb = "rolled back" if kind == d.ROLLBACK else "restarted" if restart else "deployed"
    what = (
        f"{plan.to_version} (already live; new instances replace the old ones)"
        if restart
        else f"{plan.to_version} (from {plan.from_version or 'nothing'})"
    )
    return Outcome(
        f"{env}: {verb}{'' if restart else ' to'} {what}, traffic "
        f"switched in {switch_ms} ms" + (f"; {backup_note}" if backup_note else ""),
        {
            "deployment": dep_id,
            "env": env,
            "version": plan.to_version,
            "from": plan.from_version,
            "switch_ms": switch_ms,
            "recovered": recovered,
            "restart": restart,
            "backup": backup_note,
            "warnings": warnings,
        },
    )


def _backup_note(
    ctx: Context, environment: Environment, kind: str, migrate: bool, backup: dict[str, Any] | None
) -> str | None:
    """Why a deploy took a backup or not, in words, from its `backup` step's journal (None:
    the environment has none)."""
    db = environment.config.database
    if (
        kind != d.DEPLOY
        or db is None
        or db.backup == "never"
        or schema.database_url(ctx, environment) is None
    ):
        return None
    if backup is not None and backup.get("backup") is None:
        return f"no backup: {backup.get('skipped')}"
    if backup is not None:
        return f"backup {backup['backup']} taken first: " + (
            "database.backup is `always`" if not migrate else "the deploy changes the schema"
        )
    return "no backup: the deploy changes no schema (database.backup: always takes one every time)"


def preflight_checks(
    ctx: Context, environment: Environment, version: str, live: str | None, restart: bool = False
) -> list[str]:
    """Refuse a malformed Prometheus query before anything moves; an unreachable Prometheus
    is only a warning (its checks will be inconclusive, which pauses the rollout), and so is
    a canary that nothing watches."""
    from rollwise.analysis import Look
    from rollwise.analysis.prometheus import PrometheusProvider
    from rollwise.config.lint import lint
    from rollwise.config.schema import PrometheusCheck

    env, cfg = environment.name, environment.config
    look = Look(env, version, live)
    warnings = [
        w
        for c in [*cfg.analysis.checks, *cfg.verify]
        if isinstance(c, PrometheusCheck)
        if (w := PrometheusProvider(c).validate(look))
    ]
    if (
        cfg.strategy.type == "canary"
        and live
        and not restart
        and not (cfg.analysis.router.enabled or cfg.analysis.checks)
    ):
        warnings.append(
            "canary with no analysis (analysis.router.enabled is false and "
            "analysis.checks is empty): each step only waits its pause; nothing "
            "rolls back a bad release automatically"
        )
    warnings += lint(ctx.config, env)
    for w in warnings:
        ctx.emit("preflight", "warning", env=env, version=version, reason=w)
    return warnings


def rollback_plan(
    ctx: Context, env: str, to: str | None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(current live release, release a rollback goes to). Refuses a rollback that would
    move forward, and one with nothing older to go to."""
    ctx.env(env)
    live = repo.env_state(ctx.engine, env)["live_version"]
    marks = repo.get_marks(ctx.engine, env)
    good = {
        m["version"]
        for m in marks
        if m["mark"] == reasons.GOOD
        if (r := repo.get_release(ctx.engine, m["version"])) and not r["pruned"]
    }
    bad = {m["version"] for m in marks if m["mark"] == reasons.BAD}
    requested = _release(ctx, to, "--to")["version"] if to else None  # unknown: exit 7
    choice = d.rollback_target(live, release_order(ctx, env), good, bad, requested)
    if choice.version is None:
        ctx.emit(d.ROLLBACK, reasons.REFUSED, env=env, version=to, reason=choice.refusal)
        if choice.why == d.NEWER_THAN_LIVE:
            raise RollwiseError(
                f"{env}: {choice.refusal}",
                where="--to",
                hint=f"`rollwise deploy {to} --env {env}` deploys it (with "
                "its checks and canary); nothing was changed",
            )
        raise NotFound(
            f"{choice.refusal}; nothing to roll back to",
            where=f"environment {env}",
            hint="`rollwise history` shows what went live when; `rollwise rollback "
            "--to VERSION` names an older release; nothing was changed",
        )
    return (
        repo.get_release(ctx.engine, live) if live else None,
        _release(ctx, choice.version, "--to"),
    )


def release_order(ctx: Context, env: str) -> list[str]:
    """Versions in the order they first went live in `env`."""
    deps = repo.list_deployments(ctx.engine, env, 100_000)
    return d.release_order([(x["kind"], x["to_version"], x["status"]) for x in reversed(deps)])


def describe_change(live: dict[str, Any] | None, target: dict[str, Any]) -> list[str]:
    def val(r: dict[str, Any] | None, k: str) -> str:
        return str(r[k]) if r and r[k] else "-"

    rows = [
        f"version: {val(live, 'version')} -> {target['version']}",
        f"commit:  {val(live, 'git_commit')[:12]} -> {val(target, 'git_commit')[:12]}",
        f"sha256:  {val(live, 'sha256')[:12]} -> {target['sha256'][:12]}",
    ]
    same = live is not None and live["config_sha256"] == target["config_sha256"]
    rows.append("config:  " + ("unchanged" if same else "differs (rollwise.yaml at release time)"))
    return rows


def describe_hosts(ctx: Context, env: str) -> list[str]:
    """On a fleet, the hosts a deploy or rollback of `env` touches."""
    target = ctx.env(env).target
    if target.type != "ssh":
        return []
    return [
        f"hosts:   {len(target.hosts)}: "
        + ", ".join(f"{h.label} ({h.address})" for h in target.hosts)
    ]


def _check_window(
    ctx: Context,
    environment: Environment,
    state: dict[str, Any],
    target: str,
    force_reason: str | None,
) -> None:
    """R21: past the environment's rollback window a rollback that runs down migrations
    needs an explicit, recorded override."""
    env, window_h = environment.name, environment.config.rollback_window_h
    live_for_h = (time.time() - float(state.get("updated_at") or time.time())) / 3600
    if live_for_h <= window_h:
        return
    if not force_reason:
        ctx.emit(
            d.ROLLBACK,
            reasons.REFUSED,
            env=env,
            version=target,
            reason=f"rollback window closed ({live_for_h:.1f} h > {window_h:g} h)",
        )
        raise RollwiseError(
            f"{env}: {state['live_version']} has been live {live_for_h:.1f} h, past the "
            f"rollback window of {window_h:g} h; rolling back to {target} would run down "
            "migrations and drop what was written to the new schema since",
            where=f"environments.{env}.rollback_window_h",
            hint="fix forward with a new release, or override: rollwise rollback --force "
            "--reason '...' (recorded in the audit log)",
        )
    ctx.emit(
        d.ROLLBACK,
        "forced",
        env=env,
        version=target,
        reason=f"past the rollback window ({live_for_h:.1f} h > {window_h:g} h): {force_reason}",
    )


def describe_schema(
    ctx: Context, env: str, live: dict[str, Any] | None, target: dict[str, Any]
) -> tuple[list[str], dict[str, int]]:
    """What a rollback to `target` does to the database schema, with the SQL it runs, and
    the values it drops (by table or column; kept in parked files first)."""
    environment = ctx.environment(env)
    change, path = schema.rollback_change_for(
        ctx, environment, live["version"] if live else None, target
    )
    if change.action != "down" or live is None:
        return schema.describe(change, []), {}
    sql = schema.preview_down(ctx, environment, live["version"], target, path)
    dropped = schema.data_dropped(ctx, environment, path)
    return schema.describe(change, sql, dropped, schema.parked_dir(environment)), {
        k: v for k, v in dropped.items() if v
    }


def rollback(
    ctx: Context,
    env: str,
    to: str | None,
    lock_wait: float = 0.0,
    reason: str | None = None,
    force_reason: str | None = None,
) -> Outcome:
    """Roll back to `to` or the newest known-good release. While a deployment is running in
    another live process, ask it to roll back instead (it moves traffic back at once)."""
    if to is None and (asked := _ask_running(ctx, env, pg.ROLLBACK, reason)):
        return asked
    _, target = rollback_plan(ctx, env, to)
    return deploy(
        ctx,
        env,
        target["version"],
        kind=d.ROLLBACK,
        lock_wait=lock_wait,
        force_reason=force_reason,
        reason=reason,
    )


def running(ctx: Context, env: str) -> dict[str, Any] | None:
    """The deployment a live process is running in `env`, if any."""
    ctx.env(env)
    dep = repo.active_deployment(ctx.engine, env)
    lock = current(ctx.engine, env)
    alive = lock is not None and not lock.expired and not holder_dead(lock.holder)
    return dep if dep is not None and alive else None


def _ask_running(ctx: Context, env: str, what: str, reason: str | None) -> Outcome | None:
    """Pass a request to the process running the environment's deployment, if one is."""
    dep, lock = running(ctx, env), current(ctx.engine, env)
    if dep is None or lock is None:
        return None
    if what == pg.ROLLBACK and dep["kind"] == d.ROLLBACK:  # never undo a rollback by asking
        return Outcome(
            f"{env}: a rollback to {dep['to_version']} is already in progress "
            f"(deployment {dep['id']}); nothing to do",
            {"deployment": dep["id"]},
            changed=False,
        )
    actor = f"{ctx.actor} ({reason})" if reason else ctx.actor
    repo.request(ctx.engine, dep["id"], what, actor[:128])
    ctx.emit(
        what,
        "requested",
        env=env,
        version=dep["to_version"],
        reason=reason,
        data={"deployment": dep["id"]},
    )
    return Outcome(
        f"{env}: asked {lock.holder} to {what} deployment {dep['id']} "
        f"({dep['kind']} to {dep['to_version']})",
        {"deployment": dep["id"], "requested": what},
    )


def promote(ctx: Context, env: str, full: bool = False) -> Outcome:
    """End the current canary pause (or, with `full`, every remaining one)."""
    asked = _ask_running(ctx, env, pg.PROMOTE_FULL if full else pg.PROMOTE, None)
    if asked is None:
        ctx.emit("promote", reasons.REFUSED, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        raise NotFound(
            f"{env}: no deployment in progress; nothing to promote",
            hint="`rollwise status` shows what is running; `rollwise deploy` starts a rollout",
        )
    return asked


def abort(ctx: Context, env: str) -> Outcome:
    environment = ctx.environment(env)
    dep = repo.active_deployment(ctx.engine, env)
    if dep is None:
        ctx.emit("abort", reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: no deployment in progress; nothing to abort", changed=False)
    if asked := _ask_running(ctx, env, pg.ABORT, None):
        return asked
    with Lease(ctx.engine, env, holder_id(ctx.actor)) as lease:
        repo.request(ctx.engine, dep["id"], pg.ABORT, ctx.actor)
        msg = machine.recover(ctx, environment, lease)
    return Outcome(f"{env}: {msg}")


def status(ctx: Context, env: str | None) -> dict[str, Any]:
    """Each environment's state. Reads only: an interrupted deployment or a dead agent is
    reported with what `rollwise recover` will do, never acted on here."""
    out: dict[str, Any] = {"app": ctx.config.app, "environments": {}}
    for name in [env] if env else list(ctx.config.environments):
        out["environments"][name] = _env_status(ctx, ctx.environment(name))
    return out


def logs(ctx: Context, env: str, instance: str | None, lines: int) -> list[dict[str, Any]]:
    """The last lines of each instance's log (or the named one's), from where it runs.
    Reads only."""
    environment = ctx.environment(env)
    found = environment.target.instances()
    if instance is not None:
        found = [i for i in found if i.name == instance]
        if not found:
            raise NotFound(
                f"{env}: no instance {instance!r}",
                where="--instance",
                hint="`rollwise status` lists the instances",
            )
    return [
        {
            "instance": i.name,
            "version": i.version,
            "host": i.host,
            "port": i.port,
            "alive": i.alive,
            "log": environment.target.logs(i.name, d.Endpoint(i.host, i.port), lines),
        }
        for i in found
    ]


def recover(ctx: Context, env: str, lock_wait: float = 0.0) -> Outcome:
    """Finish or undo a deployment whose process died (traffic split by a canary goes back
    to the stable release), and bring a dead agent back."""
    environment = ctx.environment(env)
    if (dep := running(ctx, env)) is not None:
        raise LockHeld(
            f"{env}: deployment {dep['id']} is running in a live process; nothing to recover",
            where=f"environment {env}",
            hint="`rollwise abort` or `rollwise rollback` asks it to stop",
        )
    with Lease(ctx.engine, env, holder_id(ctx.actor), lock_wait) as lease:
        msg = machine.recover(ctx, environment, lease)
    if msg is None:
        ctx.emit("recover", reasons.NOOP, env=env, reason=reasons.NOTHING_IN_PROGRESS)
        return Outcome(f"{env}: nothing to recover", changed=False)
    return Outcome(f"{env}: {msg}", {"env": env, "recovered": msg})


def _interrupted(
    ctx: Context, env: str, dep: dict[str, Any] | None, agent_up: bool, live: str | None
) -> str | None:
    """What is left undone, in words, with the command that deals with it."""
    if dep is not None and running(ctx, env) is None:
        at, switched = machine.interrupted_at(ctx, dep["id"])
        action = (
            "finishes it"
            if switched
            else f"undoes it (traffic back on {dep['from_version'] or 'nothing'})"
        )
        return (
            f"deployment {dep['id']} ({dep['kind']} to {dep['to_version']}) was "
            f"interrupted at step {at}; `rollwise recover --env {env}` {action}"
        )
    if live and not agent_up:
        return (
            f"the agent of {env} is not running, so nothing serves {live}; `rollwise "
            f"recover --env {env}` starts it with its instances"
        )
    return None


def _health(
    ctx: Context, instances: list[Any], weights: dict[str, int], cluster: bool = False
) -> dict[str, Any]:
    """Each serving instance's health endpoint, asked once now: healthy only if all answer
    2xx. In a cluster (out of reach from here) its readiness probes answer for it."""
    import httpx

    cfg = ctx.config.health
    serving = [i for i in instances if weights.get(i.name, 0) > 0]
    result: dict[str, str] = {}
    # plain HTTP: no TLS context to build (tens of ms per client with the CA bundle)
    with httpx.Client(timeout=cfg.timeout_s, verify=False) as http:
        for i in serving:
            if cluster:
                result[i.name] = "ready" if i.alive else "not ready"
                continue
            try:
                r = http.get(d.Endpoint(i.host, i.port).url(cfg.path))
                result[i.name] = str(r.status_code)
            except httpx.HTTPError as e:
                result[i.name] = f"no answer ({type(e).__name__})"
    ok = bool(serving) and all(v.startswith("2") or v == "ready" for v in result.values())
    return {"ok": ok, "path": cfg.path, "instances": result}


def _env_status(ctx: Context, environment: Environment) -> dict[str, Any]:
    env = environment.name
    state = repo.env_state(ctx.engine, env)
    lock = current(ctx.engine, env)
    dep = repo.active_deployment(ctx.engine, env)
    done = sorted(repo.done_steps(ctx.engine, dep["id"])) if dep else []
    last = repo.list_deployments(ctx.engine, env, 1)
    cluster = environment.target.type == "kubernetes"  # runs no agent: the cluster does
    agent_up = cluster or AgentClient(environment.dir, env).alive() is not None
    try:
        instances, unreachable = environment.target.instances() if agent_up else [], None
    except RollwiseError as e:  # a fleet host that does not answer: reported, not skipped
        instances, unreachable = [], str(e)
    weights = environment.router.weights() if agent_up else {}
    interrupted = _interrupted(ctx, env, dep, agent_up, state["live_version"]) or unreachable
    health = _health(ctx, instances, weights, cluster) if state["live_version"] else None
    return {
        "live_version": state["live_version"],
        "healthy": bool(health and health["ok"]) and interrupted is None,
        "health": health,
        "instances": [vars(i) for i in instances],
        "agent": "cluster" if cluster else "running" if agent_up else "not running",
        "router": environment.config.router.listen,
        "weights": weights,
        "lock": None
        if lock is None or lock.expired
        else {"holder": lock.holder, "token": lock.token, "expires_at": lock.expires_at},
        "in_progress": None
        if dep is None
        else {
            "id": dep["id"],
            "kind": dep["kind"],
            "to": dep["to_version"],
            "steps_done": done,
            "step": _current_step(ctx, dep["id"]),
            "interrupted": interrupted is not None,
            "on_recovery": "resume" if d.SWITCH in done else "roll back",
        },
        "interrupted": interrupted,
        "last_deployment": dep_summary(last[0]) if last else None,
        "marks": {m["version"]: m["mark"] for m in repo.get_marks(ctx.engine, env)},
        "strategy": environment.config.strategy.type,
        "analysis": decisions(ctx, env, dep["id"] if dep else last[0]["id"] if last else None),
    }


def _current_step(ctx: Context, dep_id: int) -> str | None:
    """The step the deployment's journal last wrote about (running, done or failed)."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    return str(rows[-1]["step"]) if rows else None


def decisions(ctx: Context, env: str, dep_id: int | None) -> list[dict[str, Any]]:
    """The analysis decisions of a deployment, with the numbers behind them."""
    if dep_id is None:
        return []
    rows = audit.iter_events(ctx.engine, env, limit=50, action="analysis")
    return [
        {
            "step": r["data"].get("step"),
            "decision": r["outcome"],
            "reason": r["reason"],
            "at": r["ts"],
            "measurements": r["data"].get("measurements", []),
        }
        for r in rows
        if r["data"].get("deployment") == dep_id
    ]


def dep_summary(dep: dict[str, Any]) -> dict[str, Any]:
    return {
        k: dep[k]
        for k in (
            "id",
            "env",
            "kind",
            "from_version",
            "to_version",
            "status",
            "reason",
            "actor",
            "created_at",
            "updated_at",
        )
    }


def history(ctx: Context, env: str | None, limit: int) -> list[dict[str, Any]]:
    if env:
        ctx.env(env)
    return [dep_summary(dep) for dep in repo.list_deployments(ctx.engine, env, limit)]


def backup_create(ctx: Context, env: str, reason: str) -> Outcome:
    environment = ctx.environment(env)
    _database(ctx, environment)
    info = schema.take_backup(ctx, environment, reason)
    if info["backup"] is None:
        return Outcome(f"{env}: nothing to back up: {info['skipped']}", info, changed=False)
    return Outcome(
        f"{env}: backup {info['backup']} taken ({info['size']} bytes, {info['tables']} tables)",
        info,
    )


def backup_list(ctx: Context, env: str) -> list[dict[str, Any]]:
    from rollwise.data import backups

    return [m.as_dict() for m in backups.manifests(schema.backups_dir(ctx.environment(env)))]


def backup_verify(ctx: Context, env: str, backup_id: str | None) -> Outcome:
    """Restore into a scratch database and compare with the source at backup time."""
    from rollwise.data import backups

    environment = ctx.environment(env)
    url, folder = _database(ctx, environment), schema.backups_dir(environment)
    m = backups.get(folder, backup_id) if backup_id else _newest(environment)
    try:
        info = backups.verify(m, folder, url)
    except RollwiseError as e:
        ctx.emit("backup_verify", reasons.ERROR, env=env, reason=str(e), data={"id": m.id})
        raise
    ctx.emit("backup_verify", reasons.OK, env=env, data=info)
    return Outcome(
        f"{env}: backup {m.id} verified: restored {info['tables']} tables, "
        f"{info['rows']} rows, identical to the source at backup time "
        f"({info['restore_s']} s)",
        info,
    )


def backup_loss(ctx: Context, env: str, backup_id: str) -> dict[str, int]:
    from rollwise.data import backups

    environment = ctx.environment(env)
    m = backups.get(schema.backups_dir(environment), backup_id)
    return backups.loss(m, _database(ctx, environment))


RESTORE_THEN = ("migrate", "release")


def restore_plan(ctx: Context, env: str, backup_id: str, then: str = "migrate") -> dict[str, Any]:
    return _restore_plan(ctx, ctx.environment(env), backup_id, then)


def _restore_plan(
    ctx: Context, environment: Environment, backup_id: str, then: str
) -> dict[str, Any]:
    """What a restore does besides the data: the backup's release and schema, the live
    ones, and what follows (`migrate`: the restored data goes up to the live release's
    schema; `release`: the backup's release is deployed on it). Refuses a plan that would
    leave code and schema apart."""
    from rollwise.data import backups

    _database(ctx, environment)
    m = backups.get(schema.backups_dir(environment), backup_id)
    live = repo.env_state(ctx.engine, environment.name)["live_version"]
    live_rel = repo.get_release(ctx.engine, live) if live else None
    plan = {
        "backup": m.id,
        "backup_release": m.release,
        "backup_schema": m.schema[-1] if m.schema else None,
        "live": live,
        "live_schema": ((live_rel or {}).get("schema") or {}).get("version"),
        "then": then,
    }
    if live is None:
        return plan | {"then": "nothing serves yet: the data only"}
    if then == "release":
        if m.release is None:
            raise RollwiseError(
                f"backup {m.id} does not record the release live when it was taken",
                where="--then release",
                hint="use --then migrate; nothing was changed",
            )
        _release(ctx, m.release, "--then release")
        return plan
    known = {x["version"] for x in ((live_rel or {}).get("schema") or {}).get("migrations", [])}
    if unknown := [v for v in m.schema or [] if v not in known]:
        raise RollwiseError(
            f"backup {m.id} holds schema {', '.join(unknown)}, which the live release {live} "
            "does not have: its data cannot be migrated up to the live schema",
            where=f"backup {m.id}",
            hint=f"`--then release` restores and runs "
            f"{m.release or 'the release it was taken under'} on it; nothing was changed",
        )
    return plan


def backup_restore(
    ctx: Context, env: str, backup_id: str, lock_wait: float = 0.0, then: str = "migrate"
) -> Outcome:
    """Under the environment's lock: put the database back as it was at the backup
    (all or nothing), bring code and schema together again (`then`), and check that the
    live release answers its health check."""
    from rollwise.data import backups

    environment = ctx.environment(env)
    url, folder = _database(ctx, environment), schema.backups_dir(environment)
    m = backups.get(folder, backup_id)
    with Lease(ctx.engine, env, holder_id(ctx.actor), lock_wait) as lease:
        machine.recover(ctx, environment, lease)
        plan = _restore_plan(ctx, environment, backup_id, then)
        lost = backups.loss(m, url)
        backups.restore(m, folder, url)
        ctx.emit(
            "backup_restore", reasons.OK, env=env, data={"id": m.id, "lost": lost, "plan": plan}
        )
        after = _after_restore(ctx, environment, m.release, plan, lease)
    health = _serving_health(ctx, environment) if plan["live"] else None
    data = {"id": m.id, "lost": lost, "plan": plan, "after": after, "health": health}
    if health is not None and not health["ok"]:
        raise HealthCheckFailed(
            f"{env}: database restored from backup {m.id}, but the live release does not "
            f"answer its health check: {health['instances']}",
            where=f"environment {env}",
            hint=f"`rollwise status --env {env}` shows it; restore with `--then release` or "
            "roll back to the release the backup was taken under",
        )
    return Outcome(f"{env}: database restored from backup {m.id}; {after['summary']}", data)


def _after_restore(
    ctx: Context, environment: Environment, release: str | None, plan: dict[str, Any], lease: Lease
) -> dict[str, Any]:
    live = plan["live"]
    if live is None:
        return {"summary": "nothing is deployed"}
    if plan["then"] == "migrate":
        up = schema.upgrade(ctx, environment, live, live)
        return up | {
            "summary": f"schema brought up to {live}'s: applied {len(up['applied'])} migration(s)"
        }
    rel = _release(ctx, str(release))
    state = repo.env_state(ctx.engine, environment.name)
    _run(ctx, environment, d.DEPLOY, rel, state, lease, None, f"restore of backup {plan['backup']}")
    return {"summary": f"{rel['version']} (the release the backup was taken under) serves"}


def _serving_health(ctx: Context, environment: Environment) -> dict[str, Any]:
    return _health(
        ctx,
        environment.target.instances(),
        environment.router.weights(),
        environment.target.type == "kubernetes",
    )


def _database(ctx: Context, environment: Environment) -> str:
    url = schema.database_url(ctx, environment)
    if url is None:
        raise ConfigError(
            f"environment {environment.name!r} has no database (and `migrations`)",
            where=str(ctx.config_path),
            hint="add `database: {url: ...}` to the environment",
        )
    return url


def _newest(environment: Environment) -> Any:
    from rollwise.data import backups

    ms = backups.manifests(schema.backups_dir(environment))
    if not ms:
        raise NotFound(f"{environment.name}: no backup yet", hint="`rollwise backup create`")
    return ms[-1]


def incident_list(ctx: Context, env: str | None) -> list[inc.Incident]:
    """Every rollback as an incident, newest first (`env`: one environment's)."""
    if env:
        ctx.env(env)
    return inc.incidents(
        repo.list_deployments(ctx.engine, env, 10_000_000),
        list(audit.iter_events(ctx.engine, env, action=inc.ACTION)),
    )


def incident(ctx: Context, incident_id: str) -> inc.Incident:
    every = incident_list(ctx, None)
    found = next((i for i in every if i.id == incident_id.upper()), None)
    if found is None:
        known = ", ".join(i.id for i in every[:10]) or "none yet"
        raise NotFound(
            f"no incident {incident_id!r}",
            where="incident",
            hint=f"newest incidents: {known} (`rollwise incident list`)",
        )
    return found


def incident_show(ctx: Context, incident_id: str) -> dict[str, Any]:
    """The incident with its timeline and the evidence of the decision."""
    i = incident(ctx, incident_id)
    journal = [
        row
        for dep in {i.deployment, i.bad_deployment} - {None}
        for row in repo.journal_rows(ctx.engine, int(dep or 0))
    ]
    decisions = list(audit.iter_events(ctx.engine, i.env, action="analysis"))
    return {
        **i.as_dict(),
        "timeline": inc.timeline(i, journal, decisions),
        "evidence": inc.evidence(i, decisions),
    }


def incident_close(ctx: Context, incident_id: str, root_cause: str, fix: str) -> Outcome:
    """Close with its root cause and the release that fixes it forward (in the audit log)."""
    i = incident(ctx, incident_id)
    if i.status == "closed":
        raise RollwiseError(
            f"{i.id} was closed by {i.closed_by}: {i.root_cause}",
            where="incident",
            hint="a closed incident stays closed",
        )
    if not root_cause.strip():
        raise UsageError("--root-cause is empty", hint="say what went wrong, in a sentence")
    if repo.get_release(ctx.engine, fix) is None:
        raise NotFound(
            f"release {fix} does not exist",
            where="--fix",
            hint="create the fix-forward release first: rollwise release create",
        )
    if fix == i.bad_version:
        raise UsageError(
            f"--fix {fix} is the release the incident marked bad",
            hint="name the release that fixes it forward",
        )
    ctx.emit(
        inc.ACTION,
        "closed",
        env=i.env,
        version=fix,
        reason=root_cause,
        data={"incident": i.id, "root_cause": root_cause, "fix": fix, "bad_version": i.bad_version},
    )
    return Outcome(
        f"{i.id} closed: {root_cause} (fixed forward by {fix})", {"incident": i.id, "fix": fix}
    )
