"""Caches follow the code: after a switch, delete the configured Redis key patterns (SCAN +
UNLINK in batches, so a shared instance is never blocked or flushed) and call CDN purge
webhooks. Static assets should carry a content hash in their names; `unhashed` finds those
that do not."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

from rollwise import retry
from rollwise.errors import RollwiseError

BATCH = 500
# a hex hash (app.3f2a9c1b.js) or a bundler's base64url one with a digit (main-BfT3xk2q.css)
HASHED = re.compile(
    r"[.\-_][0-9a-fA-F]{8,}[.\-_]|"
    r"[.\-_](?=[0-9a-zA-Z_\-]*\d)[0-9a-zA-Z_\-]{8,}\.(?:min\.)?[a-z0-9]+$"
)
STATIC_EXT = {
    ".js",
    ".css",
    ".mjs",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".svg",
    ".webp",
    ".woff",
    ".woff2",
    ".ttf",
    ".ico",
    ".map",
}


def purge_redis(url: str, patterns: list[str]) -> dict[str, int]:
    """Keys deleted per pattern."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        out = {}
        for pattern in patterns:
            deleted, batch = 0, []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= BATCH:
                    deleted += int(client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(client.unlink(*batch))
            out[pattern] = deleted
        return out
    except redis.RedisError as e:
        raise RollwiseError(
            f"redis {_redact(url)}: {e}",
            where="caches.redis",
            hint="check the URL and that Redis runs",
        ) from None
    finally:
        client.close()


def call_cdn(
    url: str, payload: dict[str, Any], token: str | None, timeout: float, sleep: Any = time.sleep
) -> int:
    """POST the purge; retried (it is idempotent) on 429 and 5xx, after the Retry-After the
    CDN asks for or a doubling back-off."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = retry.call(
            lambda: httpx.post(url, json=payload, headers=headers, timeout=timeout),
            attempts=4,
            on_error=lambda e: isinstance(e, httpx.HTTPError),
            again=lambda r: r.status_code == 429 or r.status_code >= 500,
            sleep=sleep,
        )
    except httpx.HTTPError as e:
        last = str(e) or type(e).__name__
    else:
        if r.status_code < 400:
            return r.status_code
        last = f"HTTP {r.status_code}"
    raise RollwiseError(
        f"CDN purge {url} failed: {last}",
        where="caches.cdn",
        hint="purge by hand; the deploy itself is done",
    )


def unhashed(folder: Path) -> list[str]:
    """Static files whose names carry no content hash (browsers and CDNs would keep serving
    the old file after a deploy or rollback)."""
    if not folder.is_dir():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in STATIC_EXT and not HASHED.search(p.name)
    )


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)
