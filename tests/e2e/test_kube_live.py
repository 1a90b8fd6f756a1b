"""Against a real cluster, where KUBECONFIG points at one (none can run on the machines this
project is tested on: this is the one test that skips in CI, with this message)."""

from __future__ import annotations

import os
import time

import pytest

from rollwise import kube, kubeapi


def cluster() -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip(
            "no Kubernetes cluster: set KUBECONFIG to one (kind, k3s, a test "
            "cluster) and `pip install -e '.[kubernetes]'` to run this test"
        )


def test_server_side_apply_of_a_release_and_its_rollback_weights():
    cluster()
    api = kubeapi.Cluster()
    ns = f"rollwise-test-{int(time.time())}"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    created = api._call(
        "POST", "/api/v1/namespaces", body=namespace, content_type="application/json"
    )
    assert created[0] == 201, created
    try:
        new = kube.KubeRelease(
            app="stock",
            env="test",
            version="1.1.0",
            namespace=ns,
            image="registry.k8s.io/pause@sha256:"
            "7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
        )
        objects = kube.manifests(new, None, 100, traffic="ingress-nginx", hostnames=("stock.test",))
        assert kube.apply(objects) == [
            "Deployment/stock-test-1-1-0",
            "Service/stock-test-1-1-0",
            "Ingress/stock-test-1-1-0",
        ]
        got = api.get(kubeapi.path("apps/v1", "Deployment", ns, "stock-test-1-1-0"))
        assert got is not None
        managers = {m["manager"] for m in got["metadata"]["managedFields"]}
        assert kubeapi.FIELD_MANAGER in managers
        assert got["spec"]["template"]["spec"]["containers"][0]["image"] == new.image
    finally:
        api._call("DELETE", f"/api/v1/namespaces/{ns}")
