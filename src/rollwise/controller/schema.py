"""The app's database schema follows the release: migrate up before new code starts, down
after traffic is back on an older release (unless it works on the current schema)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from rollwise import domain as d
from rollwise import reasons
from rollwise.config.schema import MigrationsConfig
from rollwise.controller.context import Context, Environment
from rollwise.data import parking
from rollwise.data.alembic import AlembicRunner, scan_revisions, versions_dir
from rollwise.data.command import CommandRunner, release_version
from rollwise.data.migrations import (
    Migration,
    SchemaChange,
    UnknownRevision,
    down_path,
    dropped,
    lint,
    rollback_change,
    scan,
    up_path,
    version_key,
)
from rollwise.data.sqlrunner import MigrationFailed, SqlRunner
from rollwise.errors import ConfigError, RollwiseError
from rollwise.secrets import reveal_all
from rollwise.store import repo


class SchemaRunner(Protocol):
    """One runner per kind of migrations (`migrations.type`), bound to a release directory:
    what is applied, up, down, and the SQL a down would run."""

    @property
    def transactional_ddl(self) -> bool: ...
    def applied_versions(self, ms: list[Migration]) -> set[str]: ...
    def verified_applied(self, ms: list[Migration], recorded: dict[str, str]) -> set[str]: ...
    def upgrade(self, path: list[Migration]) -> list[str]: ...
    def downgrade(self, path: list[Migration], target: str | None = None) -> list[str]: ...
    def preview(self, path: list[Migration], target: str | None) -> list[str]: ...
    def close(self) -> None: ...


def scan_release(
    cfg: MigrationsConfig, release_dir: Path, env: dict[str, str] | None = None
) -> list[Migration]:
    """A release's migrations, oldest first, read without a database."""
    if cfg.type == "sql":
        return scan(_folder(release_dir / cfg.dir, "migrations.dir"))
    if cfg.type == "alembic":
        return scan_revisions(
            _folder(
                versions_dir(release_dir, cfg.layout, _alembic_path(cfg)),
                "migrations.dir"
                if cfg.layout == "flask"
                else "script_location in migrations.config",
            )
        )
    return release_version(release_dir, str(cfg.version), env or {}, cfg.timeout_s)


def _folder(path: Path, key: str) -> Path:
    """`path`, which must be a folder: a mistyped `migrations.dir` would otherwise deploy
    every release as one without migrations."""
    if not path.is_dir():
        raise ConfigError(
            f"the migrations folder {path} does not exist",
            where=key,
            hint="fix the path (relative to `source`), or create the folder: an "
            "empty one means no migrations yet",
        )
    return path


def _alembic_path(cfg: MigrationsConfig) -> str:
    return cfg.dir if cfg.layout == "flask" else cfg.config


def release_schema(ctx: Context, source: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """At `release create`: the migrations the release carries (refused when one has no
    down step or is misnamed) and warnings about destructive and irreversible ones."""
    cfg = ctx.config.migrations
    if cfg is None:
        return None, []
    ms = scan_release(cfg, source, cfg.env)
    if not ms:
        return None, []
    warnings = lint(ms) + [
        f"{m.file}: irreversible: a rollback across it needs a restore from backup"
        for m in ms
        if m.irreversible and cfg.type != "sql"
    ]
    return {
        "version": ms[-1].version,
        "floor": compatibility_floor(ms),
        "migrations": [m.summary() for m in ms],
    }, warnings


def compatibility_floor(ms: list[Migration]) -> str | None:
    """The oldest schema version whose code runs on this release's schema: below the
    release's trailing run of `expand` migrations (None: every older release's code does)."""
    for i in range(len(ms) - 1, -1, -1):
        if not ms[i].expand:
            return ms[i].version
    return None


def database_url(ctx: Context, env: Environment) -> str | None:
    """The database the environment migrates (None without `migrations` or `database`)."""
    return ctx.database_url(env.name) if ctx.config.migrations is not None else None


def _command_env(ctx: Context, env: Environment, version: str) -> dict[str, str]:
    assert ctx.config.migrations is not None
    return reveal_all(ctx.instance_env(env.name, version)) | ctx.config.migrations.env


def runner(ctx: Context, env: Environment, version: str) -> SchemaRunner:
    """The runner of `migrations.type` for the database of `env`, in `version`'s release."""
    url, cfg = database_url(ctx, env), ctx.config.migrations
    if url is None or cfg is None:
        raise ConfigError(f"environment {env.name!r} has no database", where=str(ctx.config_path))
    (env.dir / "shared").mkdir(parents=True, exist_ok=True)
    lock_s = env.config.database.lock_timeout_s  # type: ignore[union-attr]
    folder = env.release_dir(version)
    if cfg.type == "sql":
        return SqlRunner(url, lock_s, cfg.table_lock_timeout_s)
    env_vars = _command_env(ctx, env, version)
    if cfg.type == "alembic":
        return AlembicRunner(
            url,
            folder,
            cfg.layout,
            _alembic_path(cfg),
            cfg.command,
            env_vars,
            cfg.version_table,
            lock_s,
            cfg.timeout_s,
        )
    return CommandRunner(
        url,
        folder,
        str(cfg.version),
        str(cfg.current),
        str(cfg.up),
        str(cfg.down),
        cfg.preview,
        env_vars,
        cfg.transactional,
        lock_s,
        cfg.timeout_s,
    )


def release_migrations(ctx: Context, env: Environment, version: str) -> list[Migration]:
    """The migrations in a release's unpacked directory."""
    assert ctx.config.migrations is not None
    cfg = ctx.config.migrations
    env_vars = _command_env(ctx, env, version) if cfg.type == "command" else None
    return scan_release(cfg, env.release_dir(version), env_vars)


def _recorded(ctx: Context, version: str | None) -> dict[str, str]:
    """Checksums of the migrations a release carried, as recorded at `release create`."""
    rel = repo.get_release(ctx.engine, version) if version else None
    schema = (rel or {}).get("schema") or {}
    return {m["version"]: m["checksum"] for m in schema.get("migrations", [])}


def migrate_up(
    ctx: Context, env: Environment, plan: d.Plan, backup: str | None = None
) -> dict[str, Any]:
    """Before the new code starts: apply the release's pending migrations (edited applied
    ones refused first), under the database lock, in one transaction where the database
    allows. Where it does not (MySQL), a failure restores the pre-deploy backup."""
    return upgrade(ctx, env, plan.to_version, plan.from_version, backup)


def upgrade(
    ctx: Context, env: Environment, version: str, live: str | None, backup: str | None = None
) -> dict[str, Any]:
    """Bring the schema up to what `version` needs, checking applied migrations against the
    copies `live` recorded. `versions` (journaled) is exactly what this run applied."""
    ms = release_migrations(ctx, env, version)
    run = runner(ctx, env, version)
    try:
        path = up_path(ms, run.verified_applied(ms, _recorded(ctx, live)))
        done = run.upgrade(path)
    except MigrationFailed as e:
        if run.transactional_ddl or backup is None:
            raise
        _restore_after_failure(ctx, env, backup, e)
        raise
    finally:
        run.close()
    ctx.emit("migrate", reasons.OK, env=env.name, version=version, data={"applied": done})
    return {
        "applied": done,
        "versions": [m.version for m in path],
        "schema": ms[-1].version if ms else None,
    }


def undo_upgrade(
    ctx: Context, env: Environment, version: str, applied: list[str] | None, before: str | None
) -> dict[str, Any]:
    """Undo a deploy's migrate step: take down exactly the migrations it applied (`applied`,
    from its journal), or, if it was interrupted before recording them, those of `version`
    the release before it (`before`) does not hold. Never a path derived from anything
    else: a deploy that applied nothing is undone by doing nothing."""
    ms = release_migrations(ctx, env, version)
    ours = (
        set(applied)
        if applied is not None
        else {m.version for m in ms} - set(_recorded(ctx, before))
    )
    run = runner(ctx, env, version)
    try:
        now = {version_key(v) for v in run.applied_versions(ms)}
    finally:
        run.close()
    path = [m for m in reversed(ms) if m.version in ours and m.key in now]
    if not path:
        return {"schema": "unchanged", "reason": "the deploy applied no migration"}
    keys = [m.version for m in ms]
    first = keys.index(path[-1].version)
    return run_down(
        ctx, env, version, path, keys[first - 1] if first else None, f"undo of {version}"
    )


def migrate_down(
    ctx: Context, env: Environment, live: str, target: dict[str, Any]
) -> dict[str, Any]:
    change, path = rollback_change_for(ctx, env, live, target)
    if change.action == "restore":
        raise RollwiseError(
            f"schema: {change.reason}",
            where=f"environment {env.name}",
            hint="restore the database from the backup taken before that migration, then roll back",
        )
    if change.action != "down":
        return {"schema": change.action, "reason": change.reason}
    return run_down(
        ctx,
        env,
        live,
        path,
        (target.get("schema") or {}).get("version"),
        f"{live} to {target['version']}",
    )


def run_down(
    ctx: Context, env: Environment, version: str, path: list[Migration], to: str | None, label: str
) -> dict[str, Any]:
    """Park what `path` drops, then run it down to `to` with `version`'s runner."""
    if any(m.irreversible for m in path):
        bad = next(m.file for m in path if m.irreversible)
        raise RollwiseError(
            f"schema: {bad} is irreversible",
            where=f"environment {env.name}",
            hint="restore the database from the backup taken before it",
        )
    url = database_url(ctx, env)
    assert url is not None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + label.replace(" ", "-")
    parked = parking.park(url, _dropped(path), parked_dir(env), stamp)
    run = runner(ctx, env, version)
    try:
        done = run.downgrade(path, to)
    finally:
        run.close()
    ctx.emit(
        "migrate",
        "down",
        env=env.name,
        version=version,
        reason=label,
        data={"ran": done, "parked": parked},
    )
    return {"schema": "down", "ran": done, "versions": [m.version for m in path], "parked": parked}


def _restore_after_failure(
    ctx: Context, env: Environment, backup_id: str, e: RollwiseError
) -> None:
    from rollwise.data import backups

    url = database_url(ctx, env)
    assert url is not None
    folder = backups_dir(env)
    backups.restore(backups.get(folder, backup_id), folder, url)
    ctx.emit(
        "backup_restore",
        reasons.OK,
        env=env.name,
        reason="migration failed halfway",
        data={"id": backup_id},
    )
    e.hint = f"the database was restored from the pre-deploy backup {backup_id}"


def rollback_change_for(
    ctx: Context, env: Environment, live: str | None, target: dict[str, Any]
) -> tuple[SchemaChange, list[Migration]]:
    """What a rollback to `target` does to the schema, with the down path (its steps come
    from the live release, the one that applied those migrations). A path through a
    revision the live release does not hold is refused (UnknownRevision), never guessed."""
    if live is None or ctx.config.migrations is None or database_url(ctx, env) is None:
        return SchemaChange("none"), []
    ms = release_migrations(ctx, env, live)
    if not ms:
        return SchemaChange("none"), []
    run = runner(ctx, env, live)
    try:
        applied = run.applied_versions(ms)
    finally:
        run.close()
    floor = (target.get("schema") or {}).get("version")
    if ctx.config.migrations.type == "command":  # opaque versions: down to the target's
        path = [] if floor == ms[-1].version else down_path(ms, applied & {ms[-1].version}, None)
    else:
        try:
            path = down_path(ms, applied, floor)
        except UnknownRevision as e:
            raise UnknownRevision(
                f"cannot plan the schema from {live} to {target['version']}: {e.message}",
                where=f"release {live}",
                hint="nothing was changed; `rollwise rollback "
                "--to` an older release whose migrations the live release holds, or restore "
                "the database from a backup (`rollwise backup list`)",
            ) from None
    return rollback_change(path), path


def applied_now(ctx: Context, env: Environment, live: str | None) -> list[str]:
    """The migrations applied to the database, oldest first, as the live release knows
    them (none when nothing is live)."""
    if live is None or ctx.config.migrations is None:
        return []
    ms = release_migrations(ctx, env, live)
    run = runner(ctx, env, live)
    try:
        applied = run.applied_versions(ms)
    finally:
        run.close()
    order = {m.key: n for n, m in enumerate(ms)}
    return sorted(applied, key=lambda v: (order.get(version_key(v), len(order)), v))


def pending(ctx: Context, env: Environment, version: str, live: str | None) -> list[str]:
    """The migrations of `version` (unpacked) not applied to the database yet, once none
    of the applied ones was edited since `live` recorded it."""
    if ctx.config.migrations is None or database_url(ctx, env) is None:
        return []
    ms = release_migrations(ctx, env, version)
    if not ms:
        return []
    run = runner(ctx, env, version)
    try:
        return [m.version for m in up_path(ms, run.verified_applied(ms, _recorded(ctx, live)))]
    finally:
        run.close()


def preview_down(
    ctx: Context, env: Environment, live: str, target: dict[str, Any], path: list[Migration]
) -> list[str]:
    """The SQL the down path runs (Alembic: offline `--sql`)."""
    run = runner(ctx, env, live)
    try:
        return run.preview(path, (target.get("schema") or {}).get("version"))
    finally:
        run.close()


def backups_dir(env: Environment) -> Path:
    return env.dir / "backups"


def wants_backup(ctx: Context, env: Environment, migrating: bool) -> bool:
    db = env.config.database
    if db is None or database_url(ctx, env) is None:
        return False
    return db.backup == "always" or (db.backup == "migrations" and migrating)


def take_backup(ctx: Context, env: Environment, reason: str) -> dict[str, Any]:
    """A backup with its manifest, then retention (newest `keep_backups` kept)."""
    from rollwise.data import backups

    url = database_url(ctx, env)
    assert url is not None
    if not backups.has_data(url):
        ctx.emit(
            "backup", "skipped", env=env.name, reason=f"{reason}: the database has no table yet"
        )
        return {"backup": None, "skipped": "the database has no table yet"}
    folder = backups_dir(env)
    live = repo.env_state(ctx.engine, env.name)["live_version"]
    m = backups.create(
        url, folder, env.name, reason, release=live, schema=applied_now(ctx, env, live)
    )
    keep = env.config.database.keep_backups  # type: ignore[union-attr]
    for old in backups.manifests(folder)[:-keep]:
        (folder / old.file).unlink(missing_ok=True)
        (folder / f"{old.id}.json").unlink(missing_ok=True)
    ctx.emit(
        "backup",
        reasons.OK,
        env=env.name,
        reason=reason,
        data={
            "id": m.id,
            "size": m.size,
            "sha256": m.sha256,
            "tables": {t: v["rows"] for t, v in m.tables.items()},
        },
    )
    return {"backup": m.id, "size": m.size, "tables": len(m.tables)}


def _dropped(path: list[Migration]) -> list[tuple[str, str | None]]:
    return list(dict.fromkeys(t for m in path for t in dropped(m.down or "")))


def data_dropped(ctx: Context, env: Environment, path: list[Migration]) -> dict[str, int]:
    """What the down path drops that only the newer schema holds: non-empty values per
    dropped column, rows per dropped table."""
    url = database_url(ctx, env)
    assert url is not None
    return parking.count(url, _dropped(path))


def parked_dir(env: Environment) -> Path:
    return env.dir / "parked"


def describe(
    change: SchemaChange,
    sql: list[str],
    dropped_now: dict[str, int] | None = None,
    parked: Path | None = None,
) -> list[str]:
    """Lines for `rollwise rollback`: what happens to the schema, with the SQL, and the data
    that exists only in what it drops (kept in `parked` before the down path runs)."""
    if change.action == "none":
        return []
    rows = [f"schema:  {change.action}: {change.reason}"]
    rows += [f"  {line}" for line in (sql if change.action == "down" else [])]
    for where, n in (dropped_now or {}).items():
        rows.append(
            f"  dropped: {where}: {n} values written to the newer schema, kept in {parked}/ first"
        )
    return rows
