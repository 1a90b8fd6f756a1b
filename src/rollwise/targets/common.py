"""What every target does the same way: wait until a new instance answers its health check,
and give instances a restarted agent restored their secrets again."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollwise import reasons
from rollwise.config.schema import HealthConfig
from rollwise.domain import Endpoint
from rollwise.errors import ConfigError, HealthCheckFailed
from rollwise.secrets import split
from rollwise.targets.base import EnvFor, InstanceInfo


def wait_ready(
    name: str, endpoint: Endpoint, health: HealthConfig, info: Callable[[], InstanceInfo | None]
) -> None:
    """Return when the instance at `endpoint` answers `health` enough times in a row; raise
    HealthCheckFailed when it exits (`info()` is what its agent says of it) or times out."""
    deadline = time.monotonic() + health.ready_timeout_s
    ok, last = 0, "no answer yet"
    while time.monotonic() < deadline:
        now = info()
        if now is None or (not now.alive and now.restarts > 0):
            raise HealthCheckFailed(
                f"instance {name} exited before it was ready ({last})",
                where=f"{now.log if now else name}",
                hint="read the instance log above; the previous version keeps serving",
            )
        at = endpoint if now.port == endpoint.port else Endpoint(endpoint.host, now.port)
        status, last = probe(at, health)  # the agent may have moved it to a free port
        ok = ok + 1 if 200 <= status < 300 else 0
        if ok >= health.successes:
            return
        time.sleep(health.interval_s)
    raise HealthCheckFailed(
        f"instance {name} was not ready within {health.ready_timeout_s:g} s: {last}",
        where=f"GET {endpoint.url(health.path)}",
        hint=f"{reasons.HEALTH_CHECK_FAILED}: nothing was switched; the previous version "
        "keeps serving. Raise health.ready_timeout_s if the app needs longer to start",
    )


def probe(endpoint: Endpoint, health: HealthConfig) -> tuple[int, str]:
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=health.timeout_s)
    try:
        conn.request("GET", health.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, f"HTTP {resp.status}"
    except OSError as e:
        return 0, str(e) or type(e).__name__
    finally:
        conn.close()


def resume(
    waiting: list[dict[str, Any]],
    env_for: EnvFor,
    env: str,
    call: Callable[[str, dict[str, str]], object],
) -> bool:
    """Give instances restored by a restarted agent their secrets (`call(name, secrets)`);
    True if any waited."""
    envs: dict[str, dict[str, str]] = {}
    for w in waiting:
        if w["version"] not in envs:
            envs[w["version"]] = split(env_for(w["version"]))[1]
        values = envs[w["version"]]
        if missing := [n for n in w["secrets"] if n not in values]:
            raise ConfigError(
                f"instance {w['name']} of {w['version']} ran with secret(s) "
                f"{', '.join(missing)}, which environment {env!r} no longer has",
                where=f"environments.{env}.secrets",
                hint="add them back, or deploy to replace the instance",
            )
        call(w["name"], {n: values[n] for n in w["secrets"]})
    return bool(waiting)


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file on this machine ("" when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))  # enough for any sane number of lines
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
