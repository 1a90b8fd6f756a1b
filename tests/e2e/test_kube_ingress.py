"""`kubernetes.traffic: ingress-nginx`: deploys, canaries, automatic rollbacks, rollbacks and
recover split traffic with the primary Ingress `<app>-<env>` and the canary Ingress
`<app>-<env>-canary` (`canary-weight`), through the same state machine as gateway-api.

The fake API (tests/kubeserver.py) records after every Ingress change where ingress-nginx
would send requests (`served`: Service -> percent), so these tests see each split the
cluster went through, including that no moment served nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.e2e import test_containers as single
from tests.e2e.test_kube_deploy import (
    APP,
    base_image,
    cluster,
    deployments,
    images,
    released,
    svc,
)
from tests.kubeserver import FakeCluster

__all__ = ["base_image", "cluster", "images"]  # fixtures, used by name

CANARY = "nginx.ingress.kubernetes.io/canary-weight"


@pytest.fixture
def shop(
    tmp_path: Path,
    base_image: dict[str, str],
    images: list[str],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    """1.0.0 and 1.1.0 released; 1.0.0 live on the cluster behind ingress-nginx."""
    settings = {
        "namespace": "shop",
        "traffic": "ingress-nginx",
        "hostnames": ["shop.example.com"],
        "port": 8080,
    }
    return released(tmp_path / "shop", settings, base_image, images, monkeypatch)


def splits(fake: FakeCluster) -> list[dict[str, int]]:
    """Each split ingress-nginx served, consecutive repeats once."""
    out: list[dict[str, int]] = []
    for s in fake.served:
        if not out or out[-1] != s:
            out.append(s)
    return out


def ingresses(fake: FakeCluster) -> dict[str, tuple[str, dict[str, Any]]]:
    """Ingress name -> (the Service it sends to, its ingress-nginx annotations)."""
    return {
        name: (
            i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
            {
                k: v
                for k, v in (i["metadata"].get("annotations") or {}).items()
                if k.startswith("nginx.")
            },
        )
        for name, i in fake.ingresses().items()
    }


def test_given_ingress_nginx_when_a_canary_runs_then_its_weight_steps_up_and_the_primary_moves(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given 1.0.0 live through the primary Ingress alone
    assert ingresses(cluster) == {f"{APP}-dev": (svc("1.0.0"), {})}

    # When 1.1.0 is deployed as a canary
    shop.cli("deploy", "1.1.0", "--env", "dev", check=True)

    # Then ingress-nginx served 20%, 50%, then all to 1.1.0, never nothing
    assert splits(cluster) == [
        {svc("1.0.0"): 100},
        {svc("1.0.0"): 80, svc("1.1.0"): 20},
        {svc("1.0.0"): 50, svc("1.1.0"): 50},
        {svc("1.1.0"): 100},
    ]
    canaries = [
        (i["metadata"].get("annotations") or {}).get(CANARY) for i in cluster.applies("Ingress")
    ]
    assert [c for c in canaries if c is not None] == ["20", "50", "100"]
    # And the primary now sends to 1.1.0, the canary Ingress and 1.0.0's objects are gone
    assert ingresses(cluster) == {f"{APP}-dev": (svc("1.1.0"), {})}
    assert list(deployments(cluster)) == [svc("1.1.0")]
    status = single.status(shop)
    assert status["live_version"] == "1.1.0" and status["healthy"] is True


def test_given_ingress_nginx_when_analysis_fails_then_the_canary_goes_and_the_old_one_serves(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given a check that fails
    shop.configure(
        analysis={
            "interval_s": 0.2,
            "checks": [{"type": "command", "name": "errors", "run": "exit 1"}],
        }
    )
    # When 1.1.0 is deployed
    res = shop.cli("deploy", "1.1.0", "--env", "dev")

    # Then the first step's 20% is taken back and 1.1.0 is gone
    assert res.returncode != 0 and "errors" in res.stderr + res.stdout
    assert splits(cluster)[-2:] == [{svc("1.0.0"): 80, svc("1.1.0"): 20}, {svc("1.0.0"): 100}]
    assert ingresses(cluster) == {f"{APP}-dev": (svc("1.0.0"), {})}
    assert list(deployments(cluster)) == [svc("1.0.0")]
    assert single.status(shop)["live_version"] == "1.0.0"


def test_given_ingress_nginx_when_rolled_back_then_the_previous_release_serves_again(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given 1.1.0 live after a canary
    image = deployments(cluster)[svc("1.0.0")]["spec"]["template"]["spec"]["containers"][0]
    shop.cli("deploy", "1.1.0", "--env", "dev", check=True)
    cluster.served.clear()

    # When rolled back
    shop.cli("rollback", "--env", "dev", "--yes", check=True)

    # Then 1.0.0's own objects are back and take every request, never nothing on the way
    assert splits(cluster)[-1] == {svc("1.0.0"): 100}
    assert {} not in cluster.served
    assert ingresses(cluster) == {f"{APP}-dev": (svc("1.0.0"), {})}
    back = deployments(cluster)
    assert list(back) == [svc("1.0.0")]
    assert back[svc("1.0.0")]["spec"]["template"]["spec"]["containers"][0] == image
    status = single.status(shop)
    assert status["live_version"] == "1.0.0" and status["healthy"] is True


def test_given_ingress_nginx_when_the_controller_is_killed_mid_canary_then_recover_puts_it_back(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given a deploy killed (kill -9) once the canary takes half the requests
    killed = shop.cli(
        "deploy", "1.1.0", "--env", "dev", env={"ROLLWISE_FAILPOINT": "canary:50:after"}
    )
    assert killed.returncode == -9
    assert splits(cluster)[-1] == {svc("1.0.0"): 50, svc("1.1.0"): 50}
    assert single.status(shop)["interrupted"]

    # When recovered, Then 1.0.0 takes every request and the canary Ingress is gone
    shop.cli("recover", "--env", "dev", check=True)
    assert splits(cluster)[-1] == {svc("1.0.0"): 100}
    assert ingresses(cluster) == {f"{APP}-dev": (svc("1.0.0"), {})}
    assert list(deployments(cluster)) == [svc("1.0.0")]
    s = single.status(shop)
    assert s["live_version"] == "1.0.0" and s["healthy"] and not s["interrupted"]
