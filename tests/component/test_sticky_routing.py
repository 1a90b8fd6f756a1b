"""Sticky clients and canary header rules, the same scenarios against the embedded router
(in a real agent) and a real HAProxy configured by `backend_config`. v1 is the stable
version, v2 the canary (registered last)."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from bench.switch import backend, builtin, haproxy

from rollwise.ports import free_port
from rollwise.traffic.base import Backend, TrafficRouter
from tests.conftest import require

RULES = {
    "sticky": {"cookie": "cart"},
    "canary_headers": [
        {"header": "X-Canary", "values": ["always"]},
        {"header": "X-Staff", "values": ["alice", "bob"]},
    ],
}
CARTS = [f"cart-{i}" for i in range(100)]


@pytest.fixture(params=["builtin", "haproxy"])
def routed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TrafficRouter, str, list[Backend]]]:
    bs = [Backend(f"{v}-sticky", v, "127.0.0.1", free_port()) for v in ("v1", "v2")]
    with ExitStack() as stack:
        if request.param == "haproxy":
            require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
            for b in bs:
                stack.enter_context(backend(b, tmp_path / f"{b.version}.log"))
            router, port = stack.enter_context(haproxy(tmp_path, bs, RULES))
        else:
            router, port = stack.enter_context(builtin(tmp_path, bs, rules=RULES))
        yield router, f"http://127.0.0.1:{port}/", bs


def versions(
    url: str, carts: list[str], rounds: int = 1, headers: dict[str, str] | None = None
) -> dict[str, set[str]]:
    """Which versions answered each cart, over `rounds` requests per cart."""
    seen: dict[str, set[str]] = {}
    with httpx.Client(timeout=5) as client:
        for n in range(rounds):  # a new order each round: round robin alone cannot pass
            for cart in random.Random(n).sample(carts, len(carts)):
                r = client.post(
                    url, content=b"{}", headers={"cookie": f"cart={cart}", **(headers or {})}
                )
                assert r.status_code == 200
                seen.setdefault(cart, set()).add(r.headers["x-version"])
    return seen


def test_given_weights_10_90_then_each_cart_stays_on_one_version(routed):
    router, url, (v1, v2) = routed
    router.set_weights({v1.name: 90, v2.name: 10})

    seen = versions(url, CARTS, rounds=10)

    assert all(len(vs) == 1 for vs in seen.values()), seen
    placed = Counter(vs.pop() for vs in seen.values())
    assert placed["v2"] > 0 and placed["v1"] > placed["v2"], placed


def test_given_a_canary_header_then_every_matching_request_goes_to_the_canary(routed):
    router, url, (v1, v2) = routed
    router.set_weights({v1.name: 90, v2.name: 10})

    forced = versions(url, CARTS, headers={"X-Canary": "always"})
    staff = versions(url, ["s1", "s2", "s3"], rounds=10, headers={"X-Staff": "bob"})
    others = versions(url, CARTS, headers={"X-Staff": "mallory"})

    assert Counter(v for vs in forced.values() for v in vs) == {"v2": len(CARTS)}
    assert Counter(v for vs in staff.values() for v in vs) == {"v2": 3}
    assert "v1" in {v for vs in others.values() for v in vs}  # not on the list: weights


def test_given_new_weights_then_assigned_carts_stay_until_their_version_loses_its_weight(routed):
    router, url, (v1, v2) = routed
    router.set_weights({v1.name: 90, v2.name: 10})
    before = versions(url, CARTS)

    router.set_weights({v1.name: 50, v2.name: 50})
    after = versions(url, CARTS, rounds=3)
    router.set_weights({v1.name: 1})  # the canary is rolled back
    rolled_back = versions(url, CARTS)

    assert after == before
    assert set().union(*rolled_back.values()) == {"v1"}
