"""Kubernetes manifests as plain data, built from a release and an environment
(docs/kubernetes.md): a Deployment and a Service per version, and the traffic split between
the live version and a new one, as Gateway API HTTPRoute `backendRefs` weights or as
ingress-nginx canary annotations. Tested by equality and against the published Kubernetes
schemas; applied with the official client (server-side apply, field manager `rollwise`).

A version's Deployment and Service are named by the version, so a rollback re-applies the
retained release's own manifests and moves the weights back; nothing depends on a
Deployment's rollout history. The split is named by role: the HTTPRoute `<app>-<env>`, or the
Ingresses `<app>-<env>` (primary) and `<app>-<env>-canary`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rollwise.errors import ConfigError

LABEL = "rollwise.io"


@dataclass(frozen=True)
class KubeRelease:
    """What the manifests of one version need."""

    app: str
    env: str
    version: str
    image: str  # name@sha256:... (a registry digest: nodes pull it)
    namespace: str = "default"
    replicas: int = 1
    port: int = 8000
    health_path: str = "/health"
    env_vars: dict[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()  # keys of the Secret `<app>-<env>` (values never here)
    memory: str | None = None
    cpus: float | None = None
    instance: str | None = None  # the deployment's instance name, when deploys drive it

    @property
    def annotations(self) -> dict[str, str]:
        """Which instance of which version (the version unslugged) a Deployment runs; a new
        instance of the same version changes the pod template, so pods roll."""
        if self.instance is None:
            return {}
        return {f"{LABEL}/instance": self.instance, f"{LABEL}/version": self.version}

    @property
    def name(self) -> str:
        return service_name(self.app, self.env, self.version)

    @property
    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL}/app": self.app,
            f"{LABEL}/env": self.env,
            f"{LABEL}/version": slug(self.version),
        }


def service_name(app: str, env: str, version: str) -> str:
    """A version's Deployment and Service: stock-prod-1-5-0."""
    return f"{app}-{env}-{slug(version)}"


def slug(version: str) -> str:
    """A version as a DNS-1123 label part: 1.4.0+build.7 -> 1-4-0-build-7."""
    return re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")[:40]


def quantity(memory: str) -> str:
    """`image.memory` (256m, 1g: podman's units) as a Kubernetes quantity (256Mi, 1Gi)."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)", memory.lower()).groups()  # type: ignore[union-attr]
    return number + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit]


def deployment(r: KubeRelease) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "PORT", "value": str(r.port)},
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "ROLLWISE_VERSION", "value": r.version},
        {"name": "ROLLWISE_ENV", "value": r.env},
    ]
    env += [{"name": k, "value": v} for k, v in sorted(r.env_vars.items())]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": f"{r.app}-{r.env}", "key": k}}}
        for k in sorted(r.secret_names)
    ]
    limits = {
        **({"memory": quantity(r.memory)} if r.memory else {}),
        **({"cpu": f"{round(r.cpus * 1000)}m"} if r.cpus else {}),
    }
    probe = {"httpGet": {"path": r.health_path, "port": r.port}, "periodSeconds": 2}
    container: dict[str, Any] = {
        "name": r.app,
        "image": r.image,
        "ports": [{"containerPort": r.port, "name": "http"}],
        "env": env,
        "readinessProbe": probe,
    }
    if limits:
        container["resources"] = {"limits": limits}
    notes = {"annotations": r.annotations} if r.annotations else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": r.name, "namespace": r.namespace, "labels": r.labels, **notes},
        "spec": {
            "replicas": r.replicas,
            "selector": {"matchLabels": r.labels},
            "template": {
                "metadata": {"labels": r.labels, **notes},
                "spec": {"containers": [container]},
            },
        },
    }


def service(r: KubeRelease) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": r.name, "namespace": r.namespace, "labels": r.labels},
        "spec": {
            "selector": r.labels,
            "ports": [{"name": "http", "port": 80, "targetPort": r.port}],
        },
    }


def http_route(
    app: str, env: str, namespace: str, gateway: str, hostnames: list[str], weights: dict[str, int]
) -> dict[str, Any]:
    """Gateway API: one rule whose backendRefs are the versions' Services, by weight."""
    refs = [
        {"name": service_name(app, env, v), "port": 80, "weight": w} for v, w in weights.items()
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": f"{app}-{env}",
            "namespace": namespace,
            "labels": {f"{LABEL}/app": app, f"{LABEL}/env": env},
        },
        "spec": {
            "parentRefs": [{"name": gateway}],
            **({"hostnames": hostnames} if hostnames else {}),
            "rules": [{"backendRefs": refs}],
        },
    }


CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
CANARY_TOTAL = "nginx.ingress.kubernetes.io/canary-weight-total"


def ingress(
    app: str, env: str, namespace: str, hostnames: list[str], version: str, canary: int | None
) -> dict[str, Any]:
    """ingress-nginx: the primary Ingress `<app>-<env>` (canary None) or the canary Ingress
    `<app>-<env>-canary` taking `canary` percent, both to `version`'s Service. Named by role,
    not version: ingress-nginx honours one canary per host and path and ignores a canary
    without a primary, so a switch moves the primary's backend while the canary holds 100%."""
    name = f"{app}-{env}" + ("" if canary is None else "-canary")
    notes = {} if canary is None else {CANARY: "true", CANARY_WEIGHT: str(canary)}
    paths = [
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {
                "service": {"name": service_name(app, env, version), "port": {"number": 80}}
            },
        }
    ]
    rules = [{"host": h, "http": {"paths": paths}} for h in hostnames] or [
        {"http": {"paths": paths}}
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {f"{LABEL}/app": app, f"{LABEL}/env": env},
            **({"annotations": notes} if notes else {}),
        },
        "spec": {"ingressClassName": "nginx", "rules": rules},
    }


def nginx_ingresses(
    app: str,
    env: str,
    namespace: str,
    hostnames: list[str],
    live: str,
    new: str | None,
    percent: int,
) -> list[dict[str, Any]]:
    """ingress-nginx: the primary Ingress to the live version, and the canary Ingress to the
    new one with `canary-weight` (percent) on the same hosts."""
    out = [ingress(app, env, namespace, hostnames, live, None)]
    if new is not None and new != live:
        out.append(ingress(app, env, namespace, hostnames, new, percent))
    return out


def manifests(
    new: KubeRelease,
    live: str | None,
    percent: int,
    *,
    traffic: str,
    gateway: str = "",
    hostnames: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Everything to apply for `new` taking `percent` of the traffic beside `live` (the
    live version's own Deployment and Service are already there)."""
    if not 0 <= percent <= 100:
        raise ValueError("percent is 0 to 100")
    objects = [deployment(new), service(new)]
    if traffic == "gateway-api":
        weights = (
            {live: 100 - percent, new.version: percent}
            if live is not None and live != new.version
            else {new.version: 100}
        )
        objects.append(
            http_route(new.app, new.env, new.namespace, gateway, list(hostnames), weights)
        )
    elif traffic == "ingress-nginx":
        objects += nginx_ingresses(
            new.app,
            new.env,
            new.namespace,
            list(hostnames),
            live or new.version,
            new.version if live else None,
            percent,
        )
    else:
        raise ValueError(f"traffic {traffic!r}: gateway-api or ingress-nginx")
    return objects


def validate(objects: list[dict[str, Any]], version: str) -> list[str]:
    """Problems found by the published Kubernetes schemas (strict: no unknown field), one
    per object; kinds those schemas do not hold (HTTPRoute, a CRD) are skipped by name."""
    import kubernetes_validate as kv

    problems = []
    for obj in objects:
        if obj["apiVersion"].startswith("gateway.networking.k8s.io/"):
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {e.message}")
    return problems


def pullable(meta: dict[str, Any], version: str) -> str:
    """The registry digest (`name@sha256:...`) nodes pull a release's image by; an image
    known only to this machine (`localhost/...`) has none."""
    for d in meta.get("repo_digests", []):
        if "@sha256:" in d and not d.startswith("localhost/"):
            return str(d)
    raise ConfigError(
        f"release {version}'s image {str(meta['id'])[:19]} has no registry digest: "
        "nodes cannot pull it",
        where=f"release {version}",
        hint="push the image to a registry and make releases from it with "
        "`image: {ref: registry/name@sha256:...}`",
    )


def apply(objects: list[dict[str, Any]], context: str | None = None) -> list[str]:
    """Server-side apply of every object (field manager `rollwise`); returns `Kind/name` of
    each. Needs a reachable cluster (KUBECONFIG)."""
    from rollwise.kubeapi import Cluster

    cluster = Cluster(context)
    for obj in objects:
        cluster.apply(obj)
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
