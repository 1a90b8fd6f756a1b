"""Traffic on Kubernetes, split one of two ways (`kubernetes.traffic`):

- `gateway-api`: the HTTPRoute `<app>-<env>` whose backendRefs are the versions' Services,
  weighted (`RouteSplit`).
- `ingress-nginx`: the primary Ingress `<app>-<env>` to the live version's Service and the
  canary Ingress `<app>-<env>-canary` to the new one with `canary-weight` percent
  (`IngressSplit`). ingress-nginx honours one canary per host and path and serves nothing
  from a canary without a primary, so two versions at most take requests, and a switch
  first gives the canary 100%, then points the primary at the new version, then deletes
  the canary: at every moment one primary and at most one canary.

The object rollwise writes last (the route, the primary Ingress) carries the weights rollwise
set per instance in annotations, so they read back as set; objects changed by someone else
read back as their Services' weights, and the switch that expected rollwise's fails verified.

The cluster drains: a Deployment's pods leave their Service's endpoints before they stop.
Requests are counted by the cluster's metrics (Prometheus), not here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from rollwise import kube
from rollwise.config.schema import KubernetesConfig
from rollwise.errors import RollwiseError
from rollwise.kubeapi import KubeApi, path
from rollwise.traffic.base import Backend

WEIGHTS = f"{kube.LABEL}/weights"
BACKENDS = f"{kube.LABEL}/backends"


class Split(Protocol):
    """How one kind of cluster object splits requests between versions' Services."""

    def noted(self, api: KubeApi) -> dict[str, Any] | None:
        """The object that carries rollwise's notes (WEIGHTS, BACKENDS), if there is one."""

    def write(self, api: KubeApi, per_version: dict[str, int], notes: dict[str, str]) -> None:
        """Route by `per_version` (relative weights), leaving `notes` on the noted object."""

    def routed(self, api: KubeApi, noted: dict[str, Any]) -> dict[str, int]:
        """Service name -> weight, as the cluster routes now (`noted`: as `noted` read it)."""

    def expect(self, per_service: dict[str, int]) -> dict[str, int]:
        """What `routed` reads when the cluster routes by `per_service` as rollwise set it."""


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
        self._split: Split = (
            IngressSplit(settings, app, env)
            if settings.traffic == "ingress-nginx"
            else RouteSplit(settings, app, env)
        )

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = self._connect(self.settings.context)
        return self._api

    def register(self, backends: list[Backend]) -> None:
        self._versions |= {b.name: b.version for b in backends}

    def set_weights(self, weights: dict[str, int]) -> None:
        known = {**notes(self._split.noted(self.api), BACKENDS), **self._versions}
        per_version: dict[str, int] = {}
        for name, w in weights.items():
            per_version[known[name]] = per_version.get(known[name], 0) + w
        said = {
            WEIGHTS: json.dumps(weights, sort_keys=True),
            BACKENDS: json.dumps({n: known[n] for n in weights}, sort_keys=True),
        }
        self._split.write(self.api, per_version, said)

    def weights(self) -> dict[str, int]:
        noted = self._split.noted(self.api)
        if noted is None:
            return {}
        routed = self._split.routed(self.api, noted)
        said, versions = notes(noted, WEIGHTS), notes(noted, BACKENDS)
        per_service: dict[str, int] = {}
        for name, w in said.items():
            svc = kube.service_name(self.app, self.env, versions.get(name, ""))
            per_service[svc] = per_service.get(svc, 0) + int(w)
        expected = self._split.expect(per_service)
        return {k: int(v) for k, v in said.items()} if expected == routed else routed

    def drain(self, name: str, timeout: float) -> int:
        return 0  # the cluster drains a pod before it stops it

    def remove(self, name: str) -> None:
        self._versions.pop(name, None)

    def metrics(self) -> dict[str, Any]:
        return {}


class RouteSplit:
    """Gateway API: one HTTPRoute rule, a weighted backendRef per version."""

    def __init__(self, settings: KubernetesConfig, app: str, env: str) -> None:
        self.settings, self.app, self.env = settings, app, env
        self.where = path(
            "gateway.networking.k8s.io/v1", "HTTPRoute", settings.namespace, f"{app}-{env}"
        )

    def noted(self, api: KubeApi) -> dict[str, Any] | None:
        return api.get(self.where)

    def write(self, api: KubeApi, per_version: dict[str, int], notes: dict[str, str]) -> None:
        s = self.settings
        obj = kube.http_route(
            self.app, self.env, s.namespace, s.gateway, list(s.hostnames), per_version
        )
        obj["metadata"]["annotations"] = notes
        api.apply(obj)

    def routed(self, api: KubeApi, noted: dict[str, Any]) -> dict[str, int]:
        return {
            r["name"]: r.get("weight", 1)
            for rule in noted["spec"].get("rules", [])
            for r in rule.get("backendRefs", [])
        }

    def expect(self, per_service: dict[str, int]) -> dict[str, int]:
        return per_service


class IngressSplit:
    """ingress-nginx: the primary Ingress and at most one canary Ingress, by percent."""

    def __init__(self, settings: KubernetesConfig, app: str, env: str) -> None:
        self.settings, self.app, self.env = settings, app, env
        ns, name = settings.namespace, f"{app}-{env}"
        self.primary = path("networking.k8s.io/v1", "Ingress", ns, name)
        self.canary = path("networking.k8s.io/v1", "Ingress", ns, f"{name}-canary")

    def _ingress(self, version: str, canary: int | None) -> dict[str, Any]:
        s = self.settings
        return kube.ingress(self.app, self.env, s.namespace, list(s.hostnames), version, canary)

    def noted(self, api: KubeApi) -> dict[str, Any] | None:
        return api.get(self.primary)

    def write(self, api: KubeApi, per_version: dict[str, int], notes: dict[str, str]) -> None:
        serving = self._serving(per_version)
        if not serving:  # nothing to send requests to, as an HTTPRoute with no backendRefs
            api.delete(self.canary)
            api.delete(self.primary)
            return
        for obj in self.plan(backend(api.get(self.primary)), serving, notes):
            api.apply(obj)
        if len(serving) == 1:
            api.delete(self.canary)

    def _serving(self, per_version: dict[str, int]) -> dict[str, int]:
        serving = {v: w for v, w in per_version.items() if w > 0}
        if len(serving) > 2:
            raise RollwiseError(
                f"ingress-nginx splits requests between two versions at most, not "
                f"{len(serving)} ({', '.join(serving)})",
                where=f"Ingress {self.settings.namespace}/{self.app}-{self.env}",
                hint="ingress-nginx honours one canary Ingress per host and path: finish or "
                "abort the running canary first",
            )
        return serving

    def plan(
        self, now: str | None, serving: dict[str, int], notes: dict[str, str]
    ) -> list[dict[str, Any]]:
        """The Ingresses to apply, in order, to go from the primary sending to Service `now`
        to `serving` (one or two versions). The version the primary sends to stays primary;
        otherwise the canary takes every request before the primary moves, so no moment has
        two primaries or a canary without one."""
        names = {kube.service_name(self.app, self.env, v): v for v in serving}
        first = names.get(now or "") or max(serving, key=lambda v: serving[v])
        other = next((v for v in serving if v != first), None)
        primary = self._ingress(first, None)
        primary["metadata"]["annotations"] = notes
        steps = []
        if now is not None and now not in names:  # a switch: the canary takes all first
            steps += [self._ingress(first, 100), primary]
        if other is not None:
            steps.append(self._ingress(other, round(100 * serving[other] / sum(serving.values()))))
        if not steps or steps[-1] is not primary:
            steps.append(primary)  # last: its notes say what the cluster now routes
        return steps

    def routed(self, api: KubeApi, noted: dict[str, Any]) -> dict[str, int]:
        main, canary = backend(noted), api.get(self.canary)
        if main is None:
            return {}
        share = percent(canary)
        out = {main: 100 - share}
        if canary is not None and (svc := backend(canary)) is not None:
            out[svc] = out.get(svc, 0) + share
        return {k: v for k, v in out.items() if v > 0}

    def expect(self, per_service: dict[str, int]) -> dict[str, int]:
        total = sum(per_service.values())
        if total <= 0:
            return {}
        shares = {k: round(100 * w / total) for k, w in per_service.items()}
        return {k: v for k, v in shares.items() if v > 0}


def backend(ingress: dict[str, Any] | None) -> str | None:
    """The Service an Ingress's first path sends to."""
    if ingress is None:
        return None
    for rule in ingress["spec"].get("rules") or []:
        for p in (rule.get("http") or {}).get("paths") or []:
            return str(p["backend"]["service"]["name"])
    return None


def percent(canary: dict[str, Any] | None) -> int:
    """The share of requests ingress-nginx sends to a canary Ingress (0 when it is none)."""
    notes = (canary or {"metadata": {}})["metadata"].get("annotations") or {}
    if notes.get(kube.CANARY) != "true":
        return 0
    weight, total = number(notes.get(kube.CANARY_WEIGHT)), number(notes.get(kube.CANARY_TOTAL), 100)
    return min(100, round(100 * weight / total)) if total > 0 else 0


def number(text: str | None, default: int = 0) -> int:
    """An annotation's integer; one ingress-nginx could not read counts as `default`."""
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def notes(obj: dict[str, Any] | None, key: str) -> dict[str, Any]:
    if obj is None:
        return {}
    raw = (obj["metadata"].get("annotations") or {}).get(key)
    return dict(json.loads(raw)) if raw else {}
