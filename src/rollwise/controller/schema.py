"""The app's database schema follows the release: migrate up before new code starts, down
after traffic is back on an older release (unless it works on the current schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollwise import domain as d
from rollwise import reasons
from rollwise.controller.context import Context
from rollwise.data.migrations import (
    Migration,
    SchemaChange,
    down_path,
    dropped,
    lint,
    rollback_change,
    scan,
    up_path,
)
from rollwise.data.sqlrunner import MigrationFailed, SqlRunner, check_applied
from rollwise.errors import ConfigError, RollwiseError


def release_schema(ctx: Context, source: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """At `release create`: the migrations the release carries (refused when one has no
    down step or is misnamed) and warnings about destructive ones."""
    if ctx.config.migrations is None:
        return None, []
    ms = scan(source / ctx.config.migrations.dir)
    if not ms:
        return None, []
    return ({"version": ms[-1].version, "migrations": [m.summary() for m in ms]}, lint(ms))


def database_url(ctx: Context, env: str) -> str | None:
    db = ctx.env(env).database
    if db is None or ctx.config.migrations is None:
        return None
    return ctx.url(env, db).replace("{shared}", str(ctx.env_dir(env) / "shared"))


def runner(ctx: Context, env: str) -> SqlRunner:
    url = database_url(ctx, env)
    if url is None:
        raise ConfigError(f"environment {env!r} has no database", where=str(ctx.config_path))
    (ctx.env_dir(env) / "shared").mkdir(parents=True, exist_ok=True)
    return SqlRunner(url, ctx.env(env).database.lock_timeout_s)  # type: ignore[union-attr]


def release_migrations(ctx: Context, env: str, version: str) -> list[Migration]:
    """The migrations in a release's unpacked directory."""
    assert ctx.config.migrations is not None
    folder = ctx.env_dir(env) / "releases" / version / ctx.config.migrations.dir
    return scan(folder)


def needs_migrations(ctx: Context, env: str, rel: dict[str, Any]) -> bool:
    return bool(rel.get("schema")) and database_url(ctx, env) is not None


def migrate_up(ctx: Context, plan: d.Plan, backup: str | None = None) -> dict[str, Any]:
    """Before the new code starts: apply the release's pending migrations (checksums of the
    applied ones checked first), under the database lock, in one transaction where the
    database allows. Where it does not (MySQL), a failure restores the pre-deploy backup."""
    ms = release_migrations(ctx, plan.env, plan.to_version)
    run = runner(ctx, plan.env)
    try:
        applied = run.applied()
        check_applied(applied, ms)
        path = up_path(ms, {a.version for a in applied}, ms[-1].version if ms else None)
        done = run.upgrade(path)
    except MigrationFailed as e:
        if run.transactional_ddl or backup is None:
            raise
        _restore_after_failure(ctx, plan.env, backup, e)
        raise
    finally:
        run.engine.dispose()
    ctx.emit("migrate", reasons.OK, env=plan.env, version=plan.to_version,
             data={"applied": done})
    return {"applied": done, "schema": ms[-1].version if ms else None}


def _restore_after_failure(ctx: Context, env: str, backup_id: str, e: RollwiseError) -> None:
    from rollwise.data import backups

    url = database_url(ctx, env)
    assert url is not None
    folder = backups_dir(ctx, env)
    backups.restore(backups.get(folder, backup_id), folder, url)
    ctx.emit("backup_restore", reasons.OK, env=env, reason="migration failed halfway",
             data={"id": backup_id})
    e.hint = f"the database was restored from the pre-deploy backup {backup_id}"


def rollback_change_for(ctx: Context, env: str, live: str | None, target: dict[str, Any]
                        ) -> tuple[SchemaChange, list[Migration]]:
    """What a rollback to `target` does to the schema, with the down path (its SQL comes from
    the live release, the one that applied those migrations)."""
    if live is None or ctx.config.migrations is None or database_url(ctx, env) is None:
        return SchemaChange("none"), []
    ms = release_migrations(ctx, env, live)
    if not ms:
        return SchemaChange("none"), []
    run = runner(ctx, env)
    try:
        applied = {a.version for a in run.applied()}
    finally:
        run.engine.dispose()
    floor = (target.get("schema") or {}).get("version")
    path = down_path(ms, applied, floor)
    return rollback_change(path), path


def migrate_down(ctx: Context, env: str, live: str, target: dict[str, Any]) -> dict[str, Any]:
    change, path = rollback_change_for(ctx, env, live, target)
    if change.action == "restore":
        raise RollwiseError(f"schema: {change.reason}", where=f"environment {env}",
                            hint="restore the database from the backup taken before that "
                            "migration, then roll back")
    if change.action != "down":
        return {"schema": change.action, "reason": change.reason}
    lost = data_lost(ctx, env, path)
    run = runner(ctx, env)
    try:
        done = run.downgrade(path)
    finally:
        run.engine.dispose()
    ctx.emit("migrate", "down", env=env, version=target["version"],
             data={"ran": done, "data_lost": lost})
    return {"schema": "down", "ran": done, "data_lost": lost}


def backups_dir(ctx: Context, env: str) -> Path:
    return ctx.env_dir(env) / "backups"


def wants_backup(ctx: Context, env: str, migrating: bool) -> bool:
    db = ctx.env(env).database
    if db is None or database_url(ctx, env) is None:
        return False
    return db.backup == "always" or (db.backup == "migrations" and migrating)


def take_backup(ctx: Context, env: str, reason: str) -> dict[str, Any]:
    """A backup with its manifest, then retention (newest `keep_backups` kept)."""
    from rollwise.data import backups

    url = database_url(ctx, env)
    assert url is not None
    if not backups.has_data(url):
        ctx.emit("backup", "skipped", env=env, reason=f"{reason}: the database has no table yet")
        return {"backup": None, "skipped": "the database has no table yet"}
    folder = backups_dir(ctx, env)
    m = backups.create(url, folder, env, reason)
    keep = ctx.env(env).database.keep_backups  # type: ignore[union-attr]
    for old in backups.manifests(folder)[:-keep]:
        (folder / old.file).unlink(missing_ok=True)
        (folder / f"{old.id}.json").unlink(missing_ok=True)
    ctx.emit("backup", reasons.OK, env=env, reason=reason,
             data={"id": m.id, "size": m.size, "sha256": m.sha256,
                   "tables": {t: v["rows"] for t, v in m.tables.items()}})
    return {"backup": m.id, "size": m.size, "tables": len(m.tables)}


def data_lost(ctx: Context, env: str, path: list[Migration]) -> dict[str, int]:
    """What the down path drops that only the newer schema holds: non-empty values per
    dropped column, rows per dropped table."""
    from sqlalchemy import text

    out: dict[str, int] = {}
    run = runner(ctx, env)
    try:
        with run.engine.connect() as conn:
            q = conn.dialect.identifier_preparer.quote
            for m in path:
                for table, column in dropped(m.down or ""):
                    sql = (f"SELECT count(*) FROM {q(table)}" if column is None else
                           f"SELECT count({q(column)}) FROM {q(table)}")
                    try:
                        n = int(conn.execute(text(sql)).scalar() or 0)
                    except Exception:
                        conn.rollback()
                        continue
                    out[table if column is None else f"{table}.{column}"] = n
    finally:
        run.engine.dispose()
    return out


def describe(change: SchemaChange, path: list[Migration], lost: dict[str, int] | None = None
             ) -> list[str]:
    """Lines for `rollwise rollback`: what happens to the schema, with the SQL and the data
    that exists only in what it drops."""
    if change.action == "none":
        return []
    rows = [f"schema:  {change.action}: {change.reason}"]
    for m in path if change.action == "down" else []:
        rows.append(f"  -- {m.file.replace('.up.', '.down.')}")
        rows += [f"  {line}" for line in (m.down or "").strip().splitlines()]
    for where, n in (lost or {}).items():
        rows.append(f"  data lost: {where}: {n} values written to the newer schema")
    return rows
