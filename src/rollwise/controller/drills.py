"""Runs a drill plan (rollwise.drill) through the ordinary deploy, rollback and alert paths,
then measures it from what they recorded and stores the result as a `drill` event in the
audit log.

The drill release is registered from an existing release's artifact (`<base>+drill.<n>`), so
the release the user deploys next is never marked bad by a rehearsal; it is retired (pruned)
when the drill ends. Its fault is injected by wrapping `run.command` in this operation's
copy of the configuration (never the file on disk), for instances of the drill release
only.
"""

from __future__ import annotations

import contextlib
import secrets as pysecrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rollwise import artifacts, audit, loadgen, reasons
from rollwise import drill as dr
from rollwise.config.schema import TargetConfig
from rollwise.controller import ops, schema
from rollwise.controller.context import Context, Environment
from rollwise.errors import ConfigError, NotFound, RollwiseError, UsageError
from rollwise.store import repo

Say = Callable[[str], None]
MAX_ROWS = 500_000  # per table: compared row by row below it
LOAD_LIMIT_S = 600.0
AFTER_S = 0.5  # load kept on the restored release after the drill's end, to see it serve
ALERT_WAIT_S = 120.0


@dataclass(frozen=True)
class Options:
    faults: tuple[str, ...] = ()
    load_rps: float = 50.0
    release: str | None = None
    hold_s: float = 2.0
    load_request: tuple[str, str] = ("POST", "/orders")
    force_reason: str | None = None


def plan_for(ctx: Context, environment: Environment, scenario: str, o: Options) -> dr.Plan:
    """The plan of a drill of `scenario` on the environment as it is now."""
    env = environment.name
    live = repo.env_state(ctx.engine, env)["live_version"]
    if live is None:
        raise NotFound(
            f"{env}: nothing is deployed; a drill rolls back to the live release",
            where=f"environment {env}",
            hint=f"deploy a release first: rollwise deploy VERSION --env {env}",
        )
    fault = dr.Fault.parse(list(o.faults)) if o.faults else None
    cfg = environment.config.objectives
    return dr.make_plan(
        scenario,
        env,
        live=live,
        base=_base(ctx, env, scenario, live, o.release),
        number=dr.next_number([r["version"] for r in repo.list_releases(ctx.engine, True)]),
        fault=fault,
        load_rps=o.load_rps,
        objectives=dr.Objectives(cfg.restore_s, cfg.detect_s, cfg.traffic_back_s),
        hold_s=o.hold_s,
        load_request=o.load_request,
    )


def _base(ctx: Context, env: str, scenario: str, live: str, release: str | None) -> str:
    """The release the drill release copies: the live one for a fault; for a rollback or a
    migration, `--release` or the newest release made after the live one and not marked bad
    (a failing migration falls back to the live release)."""
    if release is not None:
        return str(ops.release_record(ctx, release)["version"])
    if scenario in (dr.BAD_CANARY, dr.ALERT):
        return live
    bad = {m["version"] for m in repo.get_marks(ctx.engine, env) if m["mark"] == reasons.BAD}
    rels = repo.list_releases(ctx.engine)
    built = next((float(r["built_at"]) for r in rels if r["version"] == live), 0.0)
    newer = [
        r["version"]
        for r in rels
        if float(r["built_at"]) > built
        and r["version"] not in bad
        and not dr.is_drill_version(r["version"])
    ]
    if newer:
        return str(newer[-1])
    if scenario == dr.FAILING_MIGRATION:
        return live
    raise NotFound(
        f"{env}: no release newer than the live {live} to deploy and roll back",
        where="--release",
        hint="create the next release (rollwise release create) or name one with --release",
    )


def run(ctx: Context, env: str, scenario: str, o: Options, say: Say) -> dict[str, Any]:
    """Run a drill on `env` and return its report (also stored in the audit log)."""
    environment = ctx.environment(env)
    forced = _guard(ctx, environment, o.force_reason)
    _check_target(environment, scenario)
    plan = plan_for(ctx, environment, scenario, o)
    if plan.failing_migration:
        _check_sql_migrations(ctx, environment)
    say(
        f"{plan.id} on {env}: {scenario}: {plan.version} (the code of {plan.base}"
        + (f", fault {plan.fault.describe()}" if plan.fault else "")
        + (", one more migration that fails halfway" if plan.failing_migration else "")
        + f"); {plan.live} must serve again"
    )
    ctx.emit(
        dr.ACTION, dr.STARTED, env=env, version=plan.version, reason=scenario, data={"id": plan.id}
    )
    runner = Runner(ctx, environment, plan, say)
    try:
        runner.go()
    except RollwiseError as e:
        ctx.emit(dr.ACTION, reasons.ERROR, env=env, version=plan.version, reason=e.message)
        raise
    finally:
        runner.close()
    result = runner.measure(forced)
    outcome = dr.PASSED if result["passed"] else dr.FAILED
    ctx.emit(dr.ACTION, outcome, env=env, version=plan.version, reason=summary(result), data=result)
    return result


def _guard(ctx: Context, environment: Environment, force_reason: str | None) -> str | None:
    env = environment.name
    try:
        forced = dr.refuse_production(env, environment.config.production, force_reason)
    except RollwiseError as e:
        ctx.emit(dr.ACTION, reasons.REFUSED, env=env, reason=e.message)
        raise
    if not forced:
        return None
    ctx.emit(
        dr.ACTION, "forced", env=env, reason=f"drill on a production environment: {force_reason}"
    )
    return force_reason


def _check_target(environment: Environment, scenario: str) -> None:
    target = environment.config.target
    if scenario in (dr.BAD_CANARY, dr.ALERT) and not _runs_processes(target):
        kind = "ssh with runtime: container" if target.type == "ssh" else repr(target.type)
        raise ConfigError(
            f"{environment.name}: faults are injected by wrapping the run command of the "
            f"drill's instances; target {kind} runs images, not the run command",
            where=f"environments.{environment.name}.target",
            hint=f"rehearse {scenario} on an environment with a local target or SSH hosts "
            "(runtime: process); manual-rollback and failing-migration run on any target",
        )


def _runs_processes(target: TargetConfig) -> bool:
    """Instances run `run.command` (on this machine or through a host's agent)."""
    return target.type == "local" or (target.type == "ssh" and target.runtime == "process")


def faults_python(target: TargetConfig, app: str, env: str) -> list[str]:
    """How the drill's instances start `python -m rollwise.faults` where they run: this
    interpreter on this machine; on SSH hosts, the hosts' Python with the modules
    `rollwise hosts setup` copied there (the agent's own PYTHONPATH, named, not inherited)."""
    if target.type != "ssh":
        return [sys.executable]
    from rollwise.targets.ssh import Layout  # as the registry does: asyncssh when needed

    layout = Layout(target, app, env)
    return ["env", f"PYTHONPATH={layout.lib}", layout.python]


def _check_sql_migrations(ctx: Context, environment: Environment) -> None:
    cfg = ctx.config.migrations
    if cfg is None or cfg.type != "sql" or schema.database_url(ctx, environment) is None:
        raise ConfigError(
            f"{environment.name}: the failing-migration drill adds a SQL migration to a "
            "release; this project has "
            + ("no database" if cfg is not None else "no `migrations`")
            + ("" if cfg is None or cfg.type == "sql" else f" of type sql (it has {cfg.type})"),
            where=str(ctx.config_path),
            hint="rehearse it on an environment with `database` and `migrations: {type: sql}`",
        )


class Runner:
    """One drill run: its steps in order, the load and webhook it started, and what it saw."""

    def __init__(self, ctx: Context, environment: Environment, plan: dr.Plan, say: Say) -> None:
        self.ctx, self.environment, self.plan, self.say = ctx, environment, plan, say
        self.url = schema.database_url(ctx, environment)
        self.started_at = time.time()
        self.first_id = max(
            (d["id"] for d in repo.list_deployments(ctx.engine, plan.env, 1)), default=0
        )
        self.load: loadgen.Load | None = None
        self.load_stopped = False
        self.webhook: Webhook | None = None
        self.alarm: Alarm | None = None
        self.before: dict[str, dr.TableState] | None = None
        self.after: dict[str, dr.TableState] | None = None
        self.errors: list[str] = []
        self.retired = False

    def go(self) -> None:
        steps: dict[str, Callable[[], None]] = {
            dr.SNAPSHOT_BEFORE: self.snapshot_before,
            dr.RELEASE: self.register,
            dr.LOAD: self.start_load,
            dr.WEBHOOK: self.serve_webhook,
            dr.DEPLOY: self.deploy,
            dr.WRITE: self.write,
            dr.ROLLBACK: self.roll_back,
            dr.STOP_LOAD: self.stop_load,
            dr.SNAPSHOT_AFTER: self.snapshot_after,
            dr.RETIRE: self.retire,
        }
        for step in self.plan.steps:
            steps[step]()

    def close(self) -> None:
        """Whatever the drill started stops, even when a step failed."""
        if self.alarm:
            self.alarm.stop()
        if self.webhook:
            self.webhook.stop()
        self.stop_load()
        if not self.retired:
            with contextlib.suppress(RollwiseError):
                self.retire()

    # steps

    def snapshot_before(self) -> None:
        if self.url is not None:
            self.before = read_tables(self.url)
            rows = sum(len(t.rows) for t in self.before.values())
            self.say(f"  tables before: {len(self.before)} ({rows} rows)")

    def register(self) -> None:
        register(self.ctx, self.environment, self.plan)

    def start_load(self) -> None:
        router = self.environment.config.router
        method, path = self.plan.load_request
        self.load = loadgen.Load(
            router.host,
            router.port,
            self.plan.load_rps,
            method=method,
            path=path,
            max_duration_s=LOAD_LIMIT_S,
        ).start()
        self.say(f"  load: {self.plan.load_rps:g} req/s of {method} {path} to {router.listen}")
        time.sleep(self.plan.hold_s)

    def serve_webhook(self) -> None:
        self.webhook = Webhook(self.ctx.root).start()
        assert self.load is not None and self.plan.alert is not None
        self.alarm = Alarm(self.load, self.plan, self.webhook).start()
        self.say(
            f"  alerts: {self.webhook.url}/hooks/generic, fired by the drill's error-rate rule"
        )

    def deploy(self) -> None:
        ctx = self.ctx if self.plan.fault is None else drill_context(self.ctx, self.plan)
        reason = f"{self.plan.id}: {self.plan.scenario}"
        try:
            self.say(ops.deploy(ctx, self.plan.env, self.plan.version, reason=reason).message)
        except RollwiseError as e:
            if not self._deployed():
                raise  # refused before it started (a lock held, a busy port): no rehearsal
            self.say(f"  {self.plan.version} stopped: {e.message.splitlines()[0]}")
        if self.plan.expect == reasons.ROLLED_BACK and self._live() == self.plan.version:
            self._wait_for_alert()
        if self.plan.scenario != dr.MANUAL_ROLLBACK and self._live() == self.plan.version:
            self.say(f"  the fault was not caught: rolling {self.plan.version} back")
            ops.rollback(
                self.ctx, self.plan.env, self.plan.live, reason=f"{self.plan.id}: not caught"
            )

    def _wait_for_alert(self) -> None:
        """The alert scenario's canary may go live before the alert fires: the webhook then
        rolls the environment back in the background."""
        if self.alarm is None:
            return
        deadline = time.monotonic() + ALERT_WAIT_S
        while time.monotonic() < deadline and self._live() == self.plan.version:
            time.sleep(0.2)

    def write(self) -> None:
        self.say(f"  writing under load on {self.plan.version} for {self.plan.hold_s:g} s")
        time.sleep(self.plan.hold_s)

    def roll_back(self) -> None:
        self.ctx.emit(
            dr.ACTION,
            dr.ASKED,
            env=self.plan.env,
            version=self.plan.version,
            data={"id": self.plan.id},
        )
        reason = f"{self.plan.id}: manual rollback"
        self.say(ops.rollback(self.ctx, self.plan.env, self.plan.live, reason=reason).message)

    def stop_load(self) -> None:
        if self.load is not None and not self.load_stopped:
            self.load_stopped = True
            time.sleep(AFTER_S)
            self.load.stop()

    def snapshot_after(self) -> None:
        if self.url is not None:
            self.after = read_tables(self.url)

    def retire(self) -> None:
        self.retired = True
        retire(self.ctx, self.environment, self.plan)

    # measure

    def _deployed(self) -> bool:
        deps = repo.list_deployments(self.ctx.engine, self.plan.env, 20)
        return any(d["id"] > self.first_id and d["to_version"] == self.plan.version for d in deps)

    def _live(self) -> str | None:
        live = repo.env_state(self.ctx.engine, self.plan.env)["live_version"]
        return str(live) if live else None

    def measure(self, forced: str | None) -> dict[str, Any]:
        ctx, plan = self.ctx, self.plan
        deps = [
            d
            for d in reversed(repo.list_deployments(ctx.engine, plan.env, 1000))
            if d["id"] > self.first_id
        ]
        journal = [row for d in deps for row in repo.journal_rows(ctx.engine, d["id"])]
        events = [
            e
            for action in ("analysis", "rollback", dr.ACTION)
            for e in audit.iter_events(ctx.engine, plan.env, limit=2000, action=action)
            if float(e["ts"]) >= self.started_at
        ]
        m = dr.moments(plan, deps, journal, events)
        bad = next(d for d in deps if d["kind"] == "deploy" and d["to_version"] == plan.version)
        results = self.load.results if self.load else []
        load = [(r.sent_at, r.status, r.version) for r in results]
        data = None
        if self.before is not None and self.after is not None:
            acked = sum(1 for r in results if r.status == 201)
            data = dr.compare(self.before, self.after, acked, dr.parked(journal))
        return dr.report(
            plan,
            m,
            status=bad["status"],
            live_after=self._live(),
            journal=journal,
            load=load,
            data=data,
            started_at=self.started_at,
            ended_at=time.time(),
            forced=forced,
            extra={
                "deployments": [d["id"] for d in deps],
                "alert": self.alarm.fired if self.alarm else None,
            },
        )


def drill_context(ctx: Context, plan: dr.Plan) -> Context:
    """This operation's copy of the configuration: `run.command` behind the fault wrapper
    (for the drill release's instances only) and, for the alert scenario, analysis in dry
    run. The file on disk is not touched."""
    assert plan.fault is not None
    cfg = ctx.config
    env_cfg = cfg.environments[plan.env]
    python = faults_python(env_cfg.target, cfg.app, plan.env)
    command = dr.wrapped_command(cfg.run.command, plan.fault, plan.version, python, cfg.health.path)
    if plan.analysis_dry_run:
        env_cfg = env_cfg.model_copy(
            update={"analysis": env_cfg.analysis.model_copy(update={"dry_run": True})}
        )
    changed = cfg.model_copy(
        update={
            "run": cfg.run.model_copy(update={"command": command}),
            "environments": {**cfg.environments, plan.env: env_cfg},
        }
    )
    return replace(ctx, config=changed)


# --- the drill release ---------------------------------------------------------------------


def register(ctx: Context, environment: Environment, plan: dr.Plan) -> None:
    """Record the drill release: the base release's artifact, or, for a failing migration,
    a copy of it with one more migration."""
    base = ops.release_record(ctx, plan.base)
    sha, size, db_schema = base["sha256"], int(base["size"]), base["schema"]
    if plan.failing_migration:
        sha, size, db_schema = _with_failing_migration(ctx, environment, base)
    repo.add_release(
        ctx.engine,
        artifacts.ReleaseMeta(
            app=ctx.config.app,
            version=plan.version,
            sha256=sha,
            size=size,
            git_commit=base["git_commit"],
            built_at=artifacts.now(),
            builder=artifacts.builder(),
            changelog=f"{plan.id}: {plan.scenario} drill of {plan.base}",
            config_sha256=base["config_sha256"],
            schema=db_schema,
        ),
    )
    ctx.emit(
        "release",
        reasons.OK,
        version=plan.version,
        git_commit=base["git_commit"],
        reason=f"{plan.id}: drill release of {plan.base}",
        data={"sha256": sha, "size": size, "drill": plan.id, "base": plan.base},
    )


def _with_failing_migration(
    ctx: Context, environment: Environment, base: dict[str, Any]
) -> tuple[str, int, dict[str, Any] | None]:
    from sqlalchemy.engine import make_url

    cfg = ctx.config.migrations
    assert cfg is not None and cfg.type == "sql"
    url = schema.database_url(ctx, environment)
    assert url is not None
    artifact = artifacts.verify(ctx.artifacts_dir(), base["sha256"], base["version"])
    with tempfile.TemporaryDirectory(prefix="rollwise-drill-") as tmp:
        tree = artifacts.unpack(artifact, base["sha256"], Path(tmp, "release"))
        (tree / artifacts.MARKER).unlink()
        folder = tree / str(cfg.dir)
        folder.mkdir(parents=True, exist_ok=True)
        number = _next_migration(folder)
        up, down = dr.failing_migration_sql(make_url(url).get_backend_name())
        (folder / f"{number}_{dr.FAIL_MIGRATION_NAME}.up.sql").write_text(up)
        (folder / f"{number}_{dr.FAIL_MIGRATION_NAME}.down.sql").write_text(down)
        db_schema, _ = schema.release_schema(ctx, tree)
        sha, size, _ = artifacts.pack(
            artifacts.Tree(tree), ctx.config.build.exclude, ctx.artifacts_dir()
        )
    return sha, size, db_schema


def _next_migration(folder: Path) -> str:
    """The next migration number, as wide as the folder's (0003 after 0002)."""
    numbers = [p.name.split("_", 1)[0] for p in folder.glob("*.up.sql")]
    numbers = [n for n in numbers if n.isdigit()]
    width = max((len(n) for n in numbers), default=4)
    return str(max((int(n) for n in numbers), default=0) + 1).zfill(width)


def retire(ctx: Context, environment: Environment, plan: dr.Plan) -> None:
    """The drill release leaves the release list (pruned), with its own artifact and
    unpacked copy; it stays in the history and the audit log."""
    rel = repo.get_release(ctx.engine, plan.version)
    if rel is None or rel["pruned"]:
        return
    if repo.env_state(ctx.engine, plan.env)["live_version"] == plan.version:
        raise RollwiseError(
            f"{plan.id}: {plan.version} still serves {plan.env}; not retired",
            where=f"environment {plan.env}",
            hint=f"rollwise rollback --to {plan.live} --env {plan.env}",
        )
    repo.set_pruned(ctx.engine, plan.version)
    others = {r["sha256"] for r in repo.list_releases(ctx.engine) if r["version"] != plan.version}
    if rel["sha256"] not in others:
        artifacts.artifact_path(ctx.artifacts_dir(), rel["sha256"]).unlink(missing_ok=True)
    shutil.rmtree(environment.release_dir(plan.version), ignore_errors=True)
    ctx.emit("prune", reasons.OK, version=plan.version, reason=f"{plan.id}: drill release")


# --- the app's tables ---------------------------------------------------------------------


def read_tables(url: str) -> dict[str, dr.TableState]:
    """Every table of the app's database with its rows (by primary key)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return {name: _table(conn, name) for name in names}
    finally:
        engine.dispose()


def _table(conn: Any, name: str) -> dr.TableState:
    import sqlalchemy as sa

    table = sa.Table(name, sa.MetaData(), autoload_with=conn)
    count = int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    if count > MAX_ROWS:
        raise UsageError(
            f"table {name} has {count} rows; a drill compares tables row by row up to {MAX_ROWS}",
            where="database",
            hint="rehearse on an environment with a smaller copy of the data",
        )
    columns = tuple(c.name for c in table.columns)
    keys = [columns.index(c.name) for c in table.primary_key.columns] or list(range(len(columns)))
    rows = {}
    for r in conn.execute(sa.select(table)):
        values = tuple(repr(v) for v in r)
        rows["\x1f".join(values[i] for i in keys)] = values
    return dr.TableState(columns, rows)


# --- the alert path -----------------------------------------------------------------------


class Webhook:
    """`rollwise serve`'s alert endpoint, on a free loopback port in this process, with a
    token of its own."""

    def __init__(self, root: Path) -> None:
        import uvicorn

        from rollwise.api.alerts import make_app
        from rollwise.api.limits import Limits
        from rollwise.ports import free_port

        self.token = pysecrets.token_hex(24)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        app = make_app(root, self.token, Limits(), f"127.0.0.1:{port}")
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Webhook:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RollwiseError("the drill's alert webhook did not start within 10 s")
        return self

    def send(self, env: str, reason: str) -> dict[str, Any]:
        import httpx

        r = httpx.post(
            f"{self.url}/hooks/generic",
            json={"env": env, "reason": reason},
            headers={"authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        return {"status": r.status_code, "answer": r.json()}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Alarm:
    """The drill's monitoring: watches the load's answers and sends one alert to the webhook
    once the plan's rule holds."""

    def __init__(self, load: loadgen.Load, plan: dr.Plan, webhook: Webhook) -> None:
        self.load, self.plan, self.webhook = load, plan, webhook
        self.fired: dict[str, Any] | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> Alarm:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=35)

    def _watch(self) -> None:
        rule = self.plan.alert
        assert rule is not None
        deadline = time.monotonic() + LOAD_LIMIT_S
        while not self._stop.wait(0.1) and time.monotonic() < deadline:
            now = time.time()
            recent = [r for r in list(self.load.results) if r.sent_at >= now - rule.window_s]
            failed = sum(1 for r in recent if not 200 <= r.status < 300)
            if recent and failed >= rule.min_errors and failed / len(recent) >= rule.error_rate:
                reason = (
                    f"{self.plan.id}: {failed} of {len(recent)} requests failed in the last "
                    f"{rule.window_s:g} s"
                )
                self.fired = {"at": time.time(), "reason": reason}
                self.fired |= self.webhook.send(self.plan.env, reason)
                return


# --- reading drills back -------------------------------------------------------------------


def history(ctx: Context, env: str | None) -> list[dict[str, Any]]:
    """Every drill's result, newest first (`env`: one environment's)."""
    if env:
        ctx.env(env)
    return [
        e["data"] | {"actor": e["actor"], "seq": e["seq"]}
        for e in reversed(list(audit.iter_events(ctx.engine, env, action=dr.ACTION)))
        if e["outcome"] in (dr.PASSED, dr.FAILED)
    ]


def show(ctx: Context, drill_id: str) -> dict[str, Any]:
    every = history(ctx, None)
    found = next((d for d in every if d["id"] == drill_id.upper()), None)
    if found is None:
        known = ", ".join(d["id"] for d in every[:10]) or "none yet"
        raise NotFound(
            f"no drill {drill_id!r}",
            where="drill",
            hint=f"newest drills: {known} (`rollwise drill list`)",
        )
    return found


def summary(r: dict[str, Any]) -> str:
    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} s"

    return (
        f"{r['scenario']}: {'passed' if r['passed'] else 'failed'}: detected in "
        f"{s(r['detect_s'])}, traffic back in {s(r['traffic_back_s'])}, restored in "
        f"{s(r['restore_s'])}; {r['requests_failed']} of {r['requests_sent']} requests "
        f"failed; rows lost: {'-' if r['rows_lost'] is None else r['rows_lost']}"
    )
