"""Sticky clients and header routes in a real canary deploy driven by the CLI: rollwise.yaml's
`router.sticky` and `router.canary_headers` reach the embedded router through the deploy."""

from __future__ import annotations

import http.client
from collections import Counter

from tests.helpers import FAST, run_in_background, status, wait_for


def version(router: str, headers: dict[str, str]) -> str:
    host, port = router.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("x-version") or ""
    finally:
        conn.close()


def test_given_a_canary_with_sticky_carts_then_each_cart_keeps_its_version(project):
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    router = status(project)["router"]
    project.configure(
        router={
            "listen": router,
            "sticky": {"cookie": "cart"},
            "canary_headers": [{"header": "X-Canary", "values": ["always"]}],
        },
        strategy={"type": "canary", "steps": [30, 100], "pause_s": 120},
        analysis=FAST,
    )
    deploy = run_in_background(project, "deploy", "1.1.0")
    wait_for(project, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    carts = {
        f"c{i}": [version(router, {"Cookie": f"cart=c{i}"}) for _ in range(8)] for i in range(40)
    }
    assert all(len(set(seen)) == 1 for seen in carts.values()), carts  # no flipping
    shares = Counter(seen[0] for seen in carts.values())
    assert set(shares) == {"1.0.0", "1.1.0"} and 3 <= shares["1.1.0"] <= 25, shares
    assert {version(router, {"X-Canary": "always"}) for _ in range(20)} == {"1.1.0"}
    project.cli("abort", check=True)
    deploy.communicate(timeout=120)
    assert deploy.returncode != 0
    back = {c: version(router, {"Cookie": f"cart={c}"}) for c in carts}
    assert set(back.values()) == {"1.0.0"}  # the canary's carts came back with its weight
