"""Cache purge against the machine's real Redis; CDN webhooks over real HTTP."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from rollwise.data.caches import call_cdn, purge_redis, unhashed
from rollwise.errors import RollwiseError
from tests.conftest import require

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.RedisError:
        require(
            False,
            "Redis on 127.0.0.1:6379",
            "start it: redis-server --daemonize yes --port 6379 --save ''",
        )
    yield client
    client.close()


def test_given_patterns_when_purging_then_only_matching_keys_go_in_batches(redis_client):
    ns = f"rollwise-test-{uuid.uuid4().hex[:8]}"
    with redis_client.pipeline() as p:
        for i in range(1200):
            p.set(f"{ns}:price:{i}", i)
        for i in range(5):
            p.set(f"{ns}:session:{i}", i)
        p.execute()
    try:
        got = purge_redis(REDIS, [f"{ns}:price:*", f"{ns}:nothing:*"])
        assert got == {f"{ns}:price:*": 1200, f"{ns}:nothing:*": 0}
        assert list(redis_client.scan_iter(match=f"{ns}:price:*")) == []
        assert len(list(redis_client.scan_iter(match=f"{ns}:session:*"))) == 5
    finally:
        for key in redis_client.scan_iter(match=f"{ns}:*"):
            redis_client.unlink(key)


def test_an_unreachable_redis_is_a_clear_error_without_the_password():
    with pytest.raises(RollwiseError, match="redis") as e:
        purge_redis("redis://:s3cret@127.0.0.1:1/0", ["x:*"])
    assert "s3cret" not in str(e.value)


class Cdn(BaseHTTPRequestHandler):
    """Answers 429 twice (the second time with Retry-After: 3), then 204; keeps what it was
    sent."""

    calls: ClassVar[list[tuple[str, dict[str, object]]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.calls.append((self.headers.get("authorization", ""), body))
        self.send_response(429 if len(self.calls) <= 2 else 204)
        if len(self.calls) == 2:
            self.send_header("retry-after", "3")
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def cdn():
    Cdn.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Cdn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/purge"
    server.shutdown()
    server.server_close()


def test_cdn_purge_posts_the_release_backs_off_on_429_and_sends_the_token(cdn):
    waits: list[float] = []
    payload = {"app": "order-sync", "env": "prod", "version": "1.1.0", "previous": "1.0.0"}
    assert call_cdn(cdn, payload, "tok", 5, sleep=waits.append) == 204
    assert Cdn.calls == [("Bearer tok", payload)] * 3
    assert waits == [0.5, 3.0]  # its own back-off, then the CDN's Retry-After


def test_static_assets_without_a_content_hash_are_named(tmp_path):
    for name in ("app.3f2a9c1b.js", "main-BfT3xk2q.css", "logo.png", "index.html", "img/hero.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert unhashed(tmp_path) == ["img/hero.jpg", "logo.png"]
