"""Purge an environment's caches after a switch (see rollwise.data.caches)."""

from __future__ import annotations

from typing import Any

from rollwise import reasons
from rollwise.controller.context import Context, Environment
from rollwise.data import caches
from rollwise.errors import RollwiseError


def configured(env: Environment) -> bool:
    c = env.config.caches
    return bool(c.redis or c.cdn)


def purge(ctx: Context, env: Environment, version: str, previous: str | None) -> dict[str, Any]:
    """Delete the Redis patterns and call the CDN webhooks; raises on the first failure."""
    cfg = env.config.caches
    out: dict[str, Any] = {"redis": {}, "cdn": []}
    for r in cfg.redis:
        out["redis"] |= caches.purge_redis(ctx.url(env.name, r), r.patterns)
    payload = {"app": ctx.config.app, "env": env.name, "version": version, "previous": previous}
    for c in cfg.cdn:
        token = ctx.secret(env.name, c.token_secret) if c.token_secret else None
        out["cdn"].append(
            {"url": c.url, "status": caches.call_cdn(c.url, payload, token, c.timeout_s)}
        )
    ctx.emit("purge", reasons.OK, env=env.name, version=version, data=out)
    return out


def purge_quietly(
    ctx: Context, env: Environment, version: str, previous: str | None
) -> dict[str, Any] | None:
    """For rollbacks: a failed purge is recorded, never a reason to undo the rollback."""
    if not configured(env):
        return None
    try:
        return purge(ctx, env, version, previous)
    except RollwiseError as e:
        ctx.emit("purge", reasons.ERROR, env=env.name, version=version, reason=str(e))
        return {"error": str(e)}


def static_warnings(ctx: Context, source: Any) -> list[str]:
    dirs = {e.caches.static_dir for e in ctx.config.environments.values() if e.caches.static_dir}
    return [
        f"{d}/{name}: no content hash in the name; browsers and CDNs may serve the old "
        "file after a deploy or rollback"
        for d in sorted(dirs)
        for name in caches.unhashed(source / d)
    ]
