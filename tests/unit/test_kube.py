"""Kubernetes objects as plain data: equality, and the published schemas (strict)."""

from __future__ import annotations

import copy
import json
import re

import pytest
from pydantic import ValidationError

from rollwise import kube, kubeapi
from rollwise.config.schema import EnvironmentConfig, KubernetesConfig
from rollwise.errors import RollwiseError
from rollwise.traffic.base import Backend
from rollwise.traffic.kubernetes import KubeRouter

DIGEST = "registry.example.com/shop/stock@sha256:" + "ab" * 32


def rel(version: str, **kw) -> kube.KubeRelease:
    return kube.KubeRelease(
        app="stock",
        env="prod",
        version=version,
        image=DIGEST,
        namespace="shop",
        replicas=3,
        port=8080,
        health_path="/health",
        env_vars={"LOG_LEVEL": "info"},
        secret_names=("DB_PASSWORD",),
        memory="256m",
        cpus=0.5,
        **kw,
    )


def test_a_canary_at_ten_percent_is_a_deployment_a_service_and_route_weights():
    objects = kube.manifests(
        rel("1.5.0"),
        "1.4.2",
        10,
        traffic="gateway-api",
        gateway="public",
        hostnames=("stock.example.com",),
    )
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "HTTPRoute"]
    labels = {"rollwise.io/app": "stock", "rollwise.io/env": "prod", "rollwise.io/version": "1-5-0"}
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert objects[0]["metadata"] == {
        "name": "stock-prod-1-5-0",
        "namespace": "shop",
        "labels": labels,
    }
    assert objects[0]["spec"]["replicas"] == 3
    assert container == {
        "name": "stock",
        "image": DIGEST,
        "ports": [{"containerPort": 8080, "name": "http"}],
        "env": [
            {"name": "PORT", "value": "8080"},
            {"name": "HOST", "value": "0.0.0.0"},
            {"name": "ROLLWISE_VERSION", "value": "1.5.0"},
            {"name": "ROLLWISE_ENV", "value": "prod"},
            {"name": "LOG_LEVEL", "value": "info"},
            {
                "name": "DB_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "stock-prod", "key": "DB_PASSWORD"}},
            },
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 2},
        "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
    }
    assert objects[1]["spec"] == {
        "selector": labels,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    assert objects[2] == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "stock-prod",
            "namespace": "shop",
            "labels": {"rollwise.io/app": "stock", "rollwise.io/env": "prod"},
        },
        "spec": {
            "parentRefs": [{"name": "public"}],
            "hostnames": ["stock.example.com"],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "stock-prod-1-4-2", "port": 80, "weight": 90},
                        {"name": "stock-prod-1-5-0", "port": 80, "weight": 10},
                    ]
                }
            ],
        },
    }


def test_a_rollback_reapplies_the_older_release_and_moves_every_weight_back():
    objects = kube.manifests(rel("1.4.2"), "1.5.0", 100, traffic="gateway-api", gateway="public")
    assert objects[0]["metadata"]["name"] == "stock-prod-1-4-2"
    assert objects[2]["spec"]["rules"] == [
        {
            "backendRefs": [
                {"name": "stock-prod-1-5-0", "port": 80, "weight": 0},
                {"name": "stock-prod-1-4-2", "port": 80, "weight": 100},
            ]
        }
    ]
    first = kube.manifests(rel("1.0.0"), None, 100, traffic="gateway-api", gateway="g")
    assert first[2]["spec"]["rules"][0]["backendRefs"] == [
        {"name": "stock-prod-1-0-0", "port": 80, "weight": 100}
    ]


def nginx(name: str, version: str, notes: dict | None = None, hosts=("stock.example.com",)):
    """An Ingress as ingress-nginx reads it, written out in full."""
    paths = [
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": f"stock-prod-{version}", "port": {"number": 80}}},
        }
    ]
    rules = [{"host": h, "http": {"paths": paths}} for h in hosts] or [{"http": {"paths": paths}}]
    meta = {
        "name": name,
        "namespace": "shop",
        "labels": {"rollwise.io/app": "stock", "rollwise.io/env": "prod"},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {**meta, **({"annotations": notes} if notes else {})},
        "spec": {"ingressClassName": "nginx", "rules": rules},
    }


def canary(percent: int) -> dict[str, str]:
    return {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": str(percent),
    }


def test_ingress_nginx_gets_a_primary_to_the_live_version_and_a_weighted_canary_to_the_new():
    objects = kube.manifests(
        rel("1.5.0"),
        "1.4.2",
        25,
        traffic="ingress-nginx",
        hostnames=("stock.example.com", "stock.example.org"),
    )
    hosts = ("stock.example.com", "stock.example.org")
    assert objects[2:] == [
        nginx("stock-prod", "1-4-2", hosts=hosts),
        nginx("stock-prod-canary", "1-5-0", canary(25), hosts=hosts),
    ]
    first = kube.manifests(rel("1.0.0"), None, 100, traffic="ingress-nginx")
    assert first[2:] == [nginx("stock-prod", "1-0-0", hosts=())]
    assert kube.validate(first, "1.37.0") == []


def test_every_object_passes_the_published_schemas_and_a_broken_one_is_named():
    for traffic in ("gateway-api", "ingress-nginx"):
        objects = kube.manifests(
            rel("1.5.0+build.7"),
            "1.4.2",
            10,
            traffic=traffic,
            gateway="public",
            hostnames=("stock.example.com",),
        )
        assert kube.validate(objects, "1.37.0") == []
    broken = kube.deployment(rel("1.5.0"))
    broken["spec"]["replicas"] = "three"
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    problems = kube.validate([broken], "1.37.0")
    assert len(problems) == 1 and problems[0].startswith("Deployment stock-prod-1-5-0: ")


@pytest.mark.parametrize(
    ("given", "k8s"),
    [("256m", "256Mi"), ("1g", "1Gi"), ("512k", "512Ki"), ("1048576", "1048576"), ("64M", "64Mi")],
)
def test_memory_limits_become_kubernetes_quantities(given, k8s):
    assert kube.quantity(given) == k8s


def test_versions_become_dns_labels():
    assert kube.slug("1.5.0+build.7") == "1-5-0-build-7"
    assert kube.slug("2.0.0-RC.1") == "2-0-0-rc-1"


class Routes:
    """A KubeApi that keeps applied objects by path (pure logic: what the router reads back)
    and the applies and deletes in order."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.done: list[tuple[str, str]] = []  # ("apply" | "delete", name)
        self.applied: list[dict] = []

    def apply(self, obj: dict) -> dict:
        self.objects[kubeapi.path_of(obj)] = copy.deepcopy(obj)
        self.applied.append(copy.deepcopy(obj))
        self.done.append(("apply", obj["metadata"]["name"]))
        return obj

    def get(self, path: str) -> dict | None:
        return self.objects.get(path)

    def delete(self, path: str) -> None:
        if self.objects.pop(path, None) is not None:
            self.done.append(("delete", path.rsplit("/", 1)[-1]))


def router(api: Routes, traffic: str = "gateway-api") -> KubeRouter:
    settings = KubernetesConfig.model_validate(
        {"namespace": "shop", "gateway": "public", "traffic": traffic, "hostnames": HOSTS}
    )
    return KubeRouter(settings, "stock", "prod", lambda context: api)  # type: ignore[arg-type,return-value]


HOSTS = ["stock.example.com"]


def test_given_canary_weights_then_the_route_weights_services_and_reads_back_per_instance():
    api = Routes()
    r = router(api)
    r.register([Backend("1.0.0-a-0", "1.0.0", "shop.svc", 80)])
    r.register([Backend("1.1.0-b-0", "1.1.0", "shop.svc", 80)])
    r.set_weights({"1.0.0-a-0": 4, "1.1.0-b-0": 1})
    route = api.objects["/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/stock-prod"]
    assert route["spec"]["hostnames"] == HOSTS
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "stock-prod-1-0-0", "port": 80, "weight": 4},
        {"name": "stock-prod-1-1-0", "port": 80, "weight": 1},
    ]
    # a new process knows the backends from the route itself
    assert router(api).weights() == {"1.0.0-a-0": 4, "1.1.0-b-0": 1}
    again = router(api)
    again.set_weights({"1.0.0-a-0": 1})
    assert again.weights() == {"1.0.0-a-0": 1}


def test_given_a_route_changed_outside_rollwise_then_its_services_weights_read_back():
    api = Routes()
    r = router(api)
    r.register([Backend("1.0.0-a-0", "1.0.0", "shop.svc", 80)])
    r.set_weights({"1.0.0-a-0": 1})
    route = next(iter(api.objects.values()))
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 0  # kubectl edit
    assert r.weights() == {"stock-prod-1-0-0": 0}  # not what rollwise set: a switch fails verified


PRIMARY = "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/stock-prod"
CANARY = PRIMARY + "-canary"
OLD, NEW = (
    Backend("1.0.0-a-0", "1.0.0", "shop.svc", 80),
    Backend("1.1.0-b-0", "1.1.0", "shop.svc", 80),
)


def said(weights: dict[str, int]) -> dict[str, str]:
    """The notes rollwise leaves on the primary Ingress."""
    versions = {OLD.name: OLD.version, NEW.name: NEW.version}
    return {
        "rollwise.io/weights": json.dumps(weights, sort_keys=True),
        "rollwise.io/backends": json.dumps({n: versions[n] for n in weights}, sort_keys=True),
    }


def test_given_ingress_nginx_when_the_canary_steps_up_then_only_its_weight_moves():
    # Given 1.0.0 live through the primary Ingress
    api = Routes()
    r = router(api, "ingress-nginx")
    r.register([OLD])
    r.set_weights({OLD.name: 1})
    assert api.objects == {PRIMARY: nginx("stock-prod", "1-0-0", said({OLD.name: 1}))}

    # When 1.1.0 takes 20% then 50%, Then the canary Ingress carries the percent
    r.register([NEW])
    for weights, percent in (({OLD.name: 4, NEW.name: 1}, 20), ({OLD.name: 1, NEW.name: 1}, 50)):
        api.done.clear()
        r.set_weights(weights)
        assert api.done == [("apply", "stock-prod-canary"), ("apply", "stock-prod")]
        assert api.objects == {
            PRIMARY: nginx("stock-prod", "1-0-0", said(weights)),
            CANARY: nginx("stock-prod-canary", "1-1-0", canary(percent)),
        }
        assert kube.validate(list(api.objects.values()), "1.37.0") == []
        assert router(api, "ingress-nginx").weights() == weights  # read back by a new process


def test_given_ingress_nginx_when_switched_then_the_canary_takes_all_before_the_primary_moves():
    api = Routes()
    r = router(api, "ingress-nginx")
    r.register([OLD, NEW])
    r.set_weights({OLD.name: 1, NEW.name: 1})
    api.applied.clear()
    api.done.clear()

    r.set_weights({NEW.name: 1})

    assert api.applied == [
        nginx("stock-prod-canary", "1-1-0", canary(100)),
        nginx("stock-prod", "1-1-0", said({NEW.name: 1})),
    ]
    assert api.done[-1] == ("delete", "stock-prod-canary")
    assert api.objects == {PRIMARY: nginx("stock-prod", "1-1-0", said({NEW.name: 1}))}
    assert r.weights() == {NEW.name: 1}
    # moving every request back (failed analysis, recover) deletes the canary, primary stays
    r.set_weights({OLD.name: 1, NEW.name: 1})
    r.set_weights({NEW.name: 1})
    assert api.objects == {PRIMARY: nginx("stock-prod", "1-1-0", said({NEW.name: 1}))}


def test_given_ingress_nginx_changed_outside_rollwise_then_the_cluster_split_reads_back():
    api = Routes()
    r = router(api, "ingress-nginx")
    r.register([OLD, NEW])
    r.set_weights({OLD.name: 4, NEW.name: 1})
    api.objects[CANARY]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = (
        "70"
    )
    assert r.weights() == {"stock-prod-1-0-0": 30, "stock-prod-1-1-0": 70}
    # a deploy killed after the canary took 100% and before the primary moved
    api.objects[CANARY]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = (
        "100"
    )
    assert r.weights() == {"stock-prod-1-1-0": 100}
    r.set_weights({OLD.name: 1})  # recover: back on the primary's version
    assert r.weights() == {OLD.name: 1} and CANARY not in api.objects


def test_given_ingress_nginx_then_three_versions_at_once_are_refused_naming_the_limit():
    api = Routes()
    r = router(api, "ingress-nginx")
    r.register([OLD, NEW, Backend("1.2.0-c-0", "1.2.0", "shop.svc", 80)])
    with pytest.raises(RollwiseError, match="two versions at most"):
        r.set_weights({OLD.name: 1, NEW.name: 1, "1.2.0-c-0": 1})
    assert api.objects == {}


def test_a_kubernetes_target_routes_by_its_cluster_and_is_judged_by_prometheus():
    cfg = EnvironmentConfig.model_validate(
        {"target": {"type": "kubernetes"}, "kubernetes": {"namespace": "shop"}}
    )
    assert (cfg.router.type, cfg.analysis.router.enabled) == ("kubernetes", False)
    bad = {
        "analysis": ({"router": {"enabled": True}}, "rollwise's router does not see"),
        "router": ({"type": "haproxy", "admin": "/run/h.sock"}, "the cluster routes"),
    }
    for key, (value, message) in bad.items():
        raw = {"target": {"type": "kubernetes"}, "kubernetes": {"namespace": "shop"}, key: value}
        with pytest.raises(ValidationError, match=message):
            EnvironmentConfig.model_validate(raw)
    nginx_deploys = {"namespace": "shop", "traffic": "ingress-nginx"}
    raw = {"target": {"type": "kubernetes"}, "kubernetes": nginx_deploys}
    assert EnvironmentConfig.model_validate(raw).kubernetes.traffic == "ingress-nginx"  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="needs `kubernetes` settings"):
        EnvironmentConfig.model_validate({"target": {"type": "kubernetes"}})
    with pytest.raises(ValidationError, match=re.escape("needs `target: {type: kubernetes}`")):
        EnvironmentConfig.model_validate({"router": {"type": "kubernetes"}})


def test_api_paths_follow_the_group_of_each_kind():
    assert kubeapi.path("v1", "Service", "shop", "a") == "/api/v1/namespaces/shop/services/a"
    assert kubeapi.path("apps/v1", "Deployment", "shop") == (
        "/apis/apps/v1/namespaces/shop/deployments"
    )
    assert kubeapi.selector({"b": "2", "a": "1"}) == "a=1,b=2"
