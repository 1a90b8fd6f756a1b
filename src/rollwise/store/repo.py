"""Reads and writes of rollwise's state: releases, marks, environments, deployments, journal."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from rollwise import reasons
from rollwise.artifacts import ReleaseMeta
from rollwise.errors import LockHeld
from rollwise.store.tables import deployments, environments, journal, locks, marks, releases


def add_release(engine: Engine, meta: ReleaseMeta) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(releases).values(
                version=meta.version,
                app=meta.app,
                sha256=meta.sha256,
                size=meta.size,
                git_commit=meta.git_commit,
                built_at=meta.built_at,
                builder=meta.builder,
                changelog=meta.changelog,
                config_sha256=meta.config_sha256,
                pruned=0,
                schema=meta.schema,
            )
        )


def get_release(engine: Engine, version: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(releases).where(releases.c.version == version)).mappings()
        first = row.first()
    return dict(first) if first else None


def list_releases(engine: Engine, include_pruned: bool = False) -> list[dict[str, Any]]:
    q = select(releases).order_by(releases.c.built_at)
    if not include_pruned:
        q = q.where(releases.c.pruned == 0)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def set_pruned(engine: Engine, version: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(releases).where(releases.c.version == version).values(pruned=1))


def set_mark(conn: Connection, env: str, version: str, mark: str, reason: str | None) -> None:
    conn.execute(marks.delete().where(marks.c.env == env, marks.c.version == version))
    conn.execute(
        insert(marks).values(env=env, version=version, mark=mark, at=time.time(), reason=reason)
    )


def get_marks(engine: Engine, env: str | None = None) -> list[dict[str, Any]]:
    q = select(marks).order_by(marks.c.at.desc())
    if env:
        q = q.where(marks.c.env == env)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def env_state(engine: Engine, env: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(environments).where(environments.c.env == env)).mappings()
        first = row.first()
    return dict(first) if first else {"env": env, "live_version": None, "instances": []}


def all_env_states(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(environments)).mappings()]


def set_env_state(conn: Connection, env: str, live: str | None, instances: list[Any]) -> None:
    conn.execute(environments.delete().where(environments.c.env == env))
    conn.execute(
        insert(environments).values(
            env=env, live_version=live, instances=instances, updated_at=time.time()
        )
    )


def create_deployment(engine: Engine, plan: dict[str, Any], actor: str) -> int:
    now = time.time()
    with engine.begin() as conn:
        res = conn.execute(
            insert(deployments).values(
                env=plan["env"],
                kind=plan["kind"],
                from_version=plan["from_version"],
                to_version=plan["to_version"],
                status=reasons.RUNNING,
                reason=None,
                plan=plan,
                actor=actor,
                created_at=now,
                updated_at=now,
            )
        )
        return int(res.inserted_primary_key[0])  # type: ignore[index]


def active_deployment(engine: Engine, env: str) -> dict[str, Any] | None:
    q = (
        select(deployments)
        .where(deployments.c.env == env, deployments.c.status.in_(reasons.ACTIVE_STATUSES))
        .order_by(deployments.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def get_deployment(engine: Engine, dep_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(select(deployments).where(deployments.c.id == dep_id)).mappings().one()
        )


def list_deployments(engine: Engine, env: str | None, limit: int) -> list[dict[str, Any]]:
    q = select(deployments).order_by(deployments.c.id.desc()).limit(limit)
    if env:
        q = q.where(deployments.c.env == env)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def fence(conn: Connection, env: str, token: int) -> None:
    """Refuse to write unless `token` still holds the environment's lock."""
    res = conn.execute(
        update(locks)
        .where(locks.c.env == env, locks.c.token == token)
        .values(expires_at=locks.c.expires_at)
    )
    if res.rowcount != 1:
        raise LockHeld(
            f"lost the lock of environment {env!r} (token {token}); another process took over",
            hint="run `rollwise status` to see who",
        )


def journal_write(
    engine: Engine,
    env: str,
    token: int,
    dep_id: int,
    step: str,
    phase: str,
    data: dict[str, Any] | None = None,
) -> None:
    with engine.begin() as conn:
        fence(conn, env, token)
        conn.execute(
            insert(journal).values(
                deployment_id=dep_id, step=step, phase=phase, at=time.time(), data=data or {}
            )
        )


def journal_rows(engine: Engine, dep_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(journal).where(journal.c.deployment_id == dep_id).order_by(journal.c.id)
            ).mappings()
        ]


def done_steps(engine: Engine, dep_id: int) -> set[str]:
    return {r["step"] for r in journal_rows(engine, dep_id) if r["phase"] == "done"}


def set_status(conn: Connection, dep_id: int, status: str, reason: str | None) -> None:
    conn.execute(
        update(deployments)
        .where(deployments.c.id == dep_id)
        .values(status=status, reason=reason, updated_at=time.time())
    )


def request(engine: Engine, dep_id: int, what: str, actor: str) -> None:
    """Ask the process running deployment `dep_id` to promote, abort or roll back."""
    with engine.begin() as conn:
        conn.execute(
            update(deployments)
            .where(deployments.c.id == dep_id)
            .values(request=what, request_by=actor, updated_at=time.time())
        )


def take_request(engine: Engine, dep_id: int) -> tuple[str, str] | None:
    """The pending request and who made it, cleared so it is acted on once."""
    with engine.begin() as conn:
        row = conn.execute(
            select(deployments.c.request, deployments.c.request_by).where(
                deployments.c.id == dep_id
            )
        ).first()
        if row is None or row.request is None:
            return None
        conn.execute(
            update(deployments)
            .where(deployments.c.id == dep_id)
            .values(request=None, request_by=None)
        )
        return str(row.request), str(row.request_by)


def pending_request(engine: Engine, dep_id: int) -> str | None:
    with engine.connect() as conn:
        row = conn.execute(select(deployments.c.request).where(deployments.c.id == dep_id)).first()
    return None if row is None or row.request is None else str(row.request)
