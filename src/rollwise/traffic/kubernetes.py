"""Traffic on Kubernetes: the Gateway API HTTPRoute `<app>-<env>` whose backendRefs are the
versions' Services, weighted. The route carries the weights rollwise set per instance in an
annotation, so they read back as set; a route changed by someone else reads back as its
Services' weights, and the switch that expected rollwise's fails verified.

The cluster drains: a Deployment's pods leave their Service's endpoints before they stop.
Requests are counted by the cluster's metrics (Prometheus), not here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rollwise import kube
from rollwise.config.schema import KubernetesConfig
from rollwise.kubeapi import KubeApi, path
from rollwise.traffic.base import Backend

WEIGHTS = f"{kube.LABEL}/weights"
BACKENDS = f"{kube.LABEL}/backends"


class KubeRouter:
    type = "kubernetes"

    def __init__(
        self,
        settings: KubernetesConfig,
        app: str,
        env: str,
        connect: Callable[[str | None], KubeApi],
    ) -> None:
        self.settings, self.app, self.env = settings, app, env
        self._connect = connect
        self._api: KubeApi | None = None
        self._versions: dict[str, str] = {}  # backend name -> version

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = self._connect(self.settings.context)
        return self._api

    def _path(self) -> str:
        return path(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            self.settings.namespace,
            f"{self.app}-{self.env}",
        )

    def _route(self) -> dict[str, Any] | None:
        return self.api.get(self._path())

    def register(self, backends: list[Backend]) -> None:
        self._versions |= {b.name: b.version for b in backends}

    def set_weights(self, weights: dict[str, int]) -> None:
        route = self._route()
        known = {**notes(route, BACKENDS), **self._versions}
        per_version: dict[str, int] = {}
        for name, w in weights.items():
            per_version[known[name]] = per_version.get(known[name], 0) + w
        obj = kube.http_route(
            self.app,
            self.env,
            self.settings.namespace,
            self.settings.gateway,
            list(self.settings.hostnames),
            per_version,
        )
        obj["metadata"]["annotations"] = {
            WEIGHTS: json.dumps(weights, sort_keys=True),
            BACKENDS: json.dumps({n: known[n] for n in weights}, sort_keys=True),
        }
        self.api.apply(obj)

    def weights(self) -> dict[str, int]:
        route = self._route()
        if route is None:
            return {}
        refs = {
            r["name"]: r.get("weight", 1)
            for rule in route["spec"].get("rules", [])
            for r in rule.get("backendRefs", [])
        }
        said, versions = notes(route, WEIGHTS), notes(route, BACKENDS)
        expected: dict[str, int] = {}
        for name, w in said.items():
            svc = f"{self.app}-{self.env}-{kube.slug(versions.get(name, ''))}"
            expected[svc] = expected.get(svc, 0) + int(w)
        return {k: int(v) for k, v in said.items()} if expected == refs else refs

    def drain(self, name: str, timeout: float) -> int:
        return 0  # the cluster drains a pod before it stops it

    def remove(self, name: str) -> None:
        self._versions.pop(name, None)

    def metrics(self) -> dict[str, Any]:
        return {}


def notes(obj: dict[str, Any] | None, key: str) -> dict[str, Any]:
    if obj is None:
        return {}
    raw = (obj["metadata"].get("annotations") or {}).get(key)
    return dict(json.loads(raw)) if raw else {}
