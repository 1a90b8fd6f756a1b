"""End to end: caches purged after each switch, on the machine's real Redis and a CDN webhook
over real HTTP."""

from __future__ import annotations

import json
import uuid

from tests.component.test_caches import REDIS, Cdn, cdn, redis_client  # noqa: F401 (fixtures)
from tests.helpers import incident_of, status


def test_given_caches_when_deploying_and_rolling_back_then_purged_after_each_switch(
    project,
    redis_client,  # noqa: F811
    cdn,  # noqa: F811
):
    ns = f"rollwise-e2e-{uuid.uuid4().hex[:8]}"
    project.configure(
        caches={"redis": [{"url": REDIS, "patterns": [f"{ns}:price:*"]}], "cdn": [{"url": cdn}]}
    )
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)

    def fill() -> None:
        for i in range(20):
            redis_client.set(f"{ns}:price:{i}", i)
        redis_client.set(f"{ns}:session:1", 1)

    try:
        fill()
        project.cli("deploy", "1.1.0", check=True)
        assert list(redis_client.scan_iter(match=f"{ns}:price:*")) == []
        assert redis_client.get(f"{ns}:session:1") == b"1"
        fill()
        project.cli("rollback", check=True)
        assert list(redis_client.scan_iter(match=f"{ns}:price:*")) == []
        sent = [body for _, body in Cdn.calls]
        assert {"version": "1.1.0", "previous": "1.0.0"}.items() <= sent[-2].items()
        assert {"version": "1.0.0", "previous": "1.1.0", "env": "dev"}.items() <= sent[-1].items()
        # a rollback is never undone by a cache that cannot be purged: recorded, not fatal
        why = f"{incident_of(project, '1.1.0')}: retry"
        project.cli("deploy", "1.1.0", "--force", "--reason", why, check=True)
        project.configure(
            caches={"redis": [{"url": "redis://127.0.0.1:1/0", "patterns": [f"{ns}:price:*"]}]}
        )
        project.cli("rollback", check=True)
        events = [
            json.loads(x) for x in project.cli("audit", "export", check=True).stdout.splitlines()
        ]
        assert [e["outcome"] for e in events if e["action"] == "purge"][-3:] == [
            "ok",
            "ok",
            "error",
        ]
        assert status(project)["live_version"] == "1.0.0"
    finally:
        for key in redis_client.scan_iter(match=f"{ns}:*"):
            redis_client.unlink(key)
