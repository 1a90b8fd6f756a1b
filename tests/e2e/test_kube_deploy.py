"""`target: {type: kubernetes}`: `rollwise deploy` and `rollback` drive a cluster through the
same state machine as every other target. Each release is its own Deployment and Service
(server-side apply, field manager rollwise) of the image digest the release recorded; a
canary moves the HTTPRoute's backendRefs weights step by step; failed analysis moves them
back and deletes the new Deployment; a rollback re-applies the retained release's objects.

The official client talks to tests/kubeserver.py through a kubeconfig: no API server can run
where these tests run (test_kube_live.py runs where KUBECONFIG names a real cluster)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise.errors import ExitCode
from tests.conftest import Project
from tests.e2e import test_containers as single
from tests.kubeserver import FakeCluster, kubeconfig, serve

base_image = single.base_image  # the busybox base, imported on this machine once per module
APP = single.APP
REF = f"registry.example.com/shop/{APP}"
VERSIONS = ("1.0.0", "1.1.0")


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    fake = FakeCluster()
    server, url = serve(fake)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", url)))
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, base_image: dict[str, str]
) -> Iterator[list[str]]:
    """The example's image for 1.0.0 and 1.1.0, named for a registry (as a pull from it
    names them): a release made from such a name records the digest nodes pull."""
    root = tmp_path_factory.mktemp("images") / "shop"
    single.copy_example(root)
    for v in VERSIONS:
        (root / "VERSION").write_text(v + "\n")
        subprocess.run(
            ["podman", "build", "-q", "-t", f"{REF}:{v}", "-f", "Containerfile", "."],
            cwd=root,
            env={**os.environ, **base_image},
            check=True,
            capture_output=True,
            timeout=180,
        )
    yield [f"{REF}:{v}" for v in VERSIONS]
    subprocess.run(
        ["podman", "rmi", *[f"{REF}:{v}" for v in VERSIONS]],
        env={**os.environ, **base_image},
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def shop(
    tmp_path: Path,
    base_image: dict[str, str],
    images: list[str],
    cluster: FakeCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    """1.0.0 and 1.1.0 released; 1.0.0 live on the cluster."""
    settings = {"namespace": "shop", "gateway": "public", "port": 8080}
    return released(tmp_path / "shop", settings, base_image, images, monkeypatch)


def released(
    root: Path,
    kubernetes: dict[str, Any],
    base_image: dict[str, str],
    images: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    """The example with `kubernetes` settings, 1.0.0 and 1.1.0 released, 1.0.0 deployed."""
    single.copy_example(root)
    cfg = yaml.safe_load((root / "rollwise.yaml").read_text())
    cfg["app"] = APP
    cfg["stop"] = {"drain_timeout_s": 1, "grace_s": 1}
    cfg["health"] = {"path": "/cgi-bin/health", "interval_s": 0.1, "ready_timeout_s": 10}
    cfg["environments"]["dev"] = {
        "target": {"type": "kubernetes"},
        "kubernetes": kubernetes,
        "secrets": ["MARKETPLACE_TOKEN"],  # in the cluster's Secret: no value here
        "strategy": {
            "type": "canary",
            "steps": [{"weight": 20}, {"weight": 50}, {"weight": 100}],
            "pause_s": 0.2,
            "bake_s": 0,
        },
        "analysis": {"interval_s": 0.2},
    }
    monkeypatch.setenv("CONTAINERS_CONF", base_image["CONTAINERS_CONF"])
    p = Project(root)
    for v, ref in zip(VERSIONS, images, strict=True):
        cfg["image"] = {"ref": ref}
        (root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        p.write_version(v)
        p.cli("release", "create", "--version", v, check=True)
    p.cli("deploy", "1.0.0", "--env", "dev", check=True)
    return p


def route_weights(fake: FakeCluster) -> list[dict[str, int]]:
    """Each HTTPRoute applied, as Service -> weight."""
    return [
        {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
        for route in fake.applies("HTTPRoute")
    ]


def deployments(fake: FakeCluster) -> dict[str, Any]:
    return {o["metadata"]["name"]: o for o in fake.objects.values() if o["kind"] == "Deployment"}


def svc(version: str) -> str:
    return f"{APP}-dev-{version.replace('.', '-')}"


def test_a_canary_moves_route_weights_step_by_step_and_a_rollback_reapplies_the_old_release(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given 1.0.0 live on the cluster
    assert list(deployments(cluster)) == [svc("1.0.0")]
    first = deployments(cluster)[svc("1.0.0")]
    container = first["spec"]["template"]["spec"]["containers"][0]
    image = container["image"]
    assert image.startswith(f"{REF}@sha256:")
    assert {
        "name": "MARKETPLACE_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": f"{APP}-dev", "key": "MARKETPLACE_TOKEN"}},
    } in container["env"]

    # When 1.1.0 is deployed as a canary
    shop.cli("deploy", "1.1.0", "--env", "dev", check=True)

    # Then the route took 20%, 50%, then all of it, and 1.0.0's objects are gone
    assert route_weights(cluster) == [
        {svc("1.0.0"): 1},
        {svc("1.0.0"): 4, svc("1.1.0"): 1},
        {svc("1.0.0"): 1, svc("1.1.0"): 1},
        {svc("1.1.0"): 1},
    ]
    assert list(deployments(cluster)) == [svc("1.1.0")]
    applies = [c for c in cluster.calls if c.method == "PATCH"]
    assert all(c.query == {"fieldManager": ["rollwise"], "force": ["true"]} for c in applies)
    status = single.status(shop)
    assert status["live_version"] == "1.1.0"
    assert [i["version"] for i in status["instances"]] == ["1.1.0"]
    assert status["healthy"] is True

    # When rolled back: 1.0.0's own objects come back, with the digest its release recorded
    shop.cli("rollback", "--env", "dev", "--yes", check=True)
    assert route_weights(cluster)[-1] == {svc("1.0.0"): 1}
    back = deployments(cluster)
    assert list(back) == [svc("1.0.0")]
    assert back[svc("1.0.0")]["spec"]["template"]["spec"]["containers"][0]["image"] == image
    logs = shop.cli("logs", "--env", "dev", check=True).stdout
    assert f"== pod {svc('1.0.0')}-0 ==" in logs


def test_failed_analysis_moves_the_weights_back_and_deletes_the_canary(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given a check that fails (as a Prometheus error-rate query over the canary would)
    shop.configure(
        analysis={
            "interval_s": 0.2,
            "checks": [{"type": "command", "name": "errors", "run": "exit 1"}],
        }
    )
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode != 0
    assert "errors" in res.stderr + res.stdout
    assert route_weights(cluster)[-2:] == [{svc("1.0.0"): 4, svc("1.1.0"): 1}, {svc("1.0.0"): 1}]
    assert list(deployments(cluster)) == [svc("1.0.0")]
    status = single.status(shop)
    assert status["live_version"] == "1.0.0"


def test_pods_that_crash_fail_the_health_step_with_their_reason_and_nothing_switches(
    shop: Project, cluster: FakeCluster
) -> None:
    cluster.crashing.add("1-1-0")
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode == ExitCode.HEALTH, res.stderr
    assert f"pod {svc('1.1.0')}-0 CrashLoopBackOff" in res.stderr
    assert {json.dumps(w) for w in route_weights(cluster)} == {json.dumps({svc("1.0.0"): 1})}
    assert list(deployments(cluster)) == [svc("1.0.0")]


def test_a_cluster_that_does_not_answer_is_named_before_anything_is_recorded(
    shop: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = json.loads(shop.cli("history", "--env", "dev", "--json", check=True).stdout)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "gone", "http://127.0.0.1:9")))
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode != 0
    assert "the Kubernetes API at http://127.0.0.1:9 does not answer" in res.stderr
    after = json.loads(shop.cli("history", "--env", "dev", "--json", check=True).stdout)
    assert after == before and len(before) == 1


def test_a_controller_killed_mid_canary_is_put_back_by_recover(
    shop: Project, cluster: FakeCluster
) -> None:
    # Given a deploy killed (kill -9) once the route sends half the requests to 1.1.0
    killed = shop.cli(
        "deploy", "1.1.0", "--env", "dev", env={"ROLLWISE_FAILPOINT": "canary:50:after"}
    )
    assert killed.returncode == -9
    split = single.status(shop)
    assert split["interrupted"] and split["live_version"] == "1.0.0"
    assert route_weights(cluster)[-1] == {svc("1.0.0"): 1, svc("1.1.0"): 1}
    assert set(deployments(cluster)) == {svc("1.0.0"), svc("1.1.0")}

    # When recovered, Then the route is back on 1.0.0 and 1.1.0's objects are gone
    shop.cli("recover", "--env", "dev", check=True)
    assert route_weights(cluster)[-1] == {svc("1.0.0"): 1}
    assert list(deployments(cluster)) == [svc("1.0.0")]
    s = single.status(shop)
    assert s["live_version"] == "1.0.0" and s["healthy"] and not s["interrupted"]
