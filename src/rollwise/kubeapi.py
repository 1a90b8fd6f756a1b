"""The Kubernetes API as rollwise uses it: server-side apply, read, list, delete and pod logs
by path, through the official client's ApiClient (kubeconfig, auth, TLS). Paths are built
from plain data (`path`), so the same calls go to any API server that speaks the protocol."""

from __future__ import annotations

import json
from typing import Any, Protocol

from rollwise.errors import ConfigError, RollwiseError, Unreachable

FIELD_MANAGER = "rollwise"
PLURAL = {
    "Deployment": "deployments",
    "Service": "services",
    "HTTPRoute": "httproutes",
    "Ingress": "ingresses",
    "Pod": "pods",
}


def path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """/api/v1/namespaces/ns/services/name, /apis/apps/v1/namespaces/ns/deployments/name."""
    root = "apis" if "/" in api_version else "api"
    base = f"/{root}/{api_version}/namespaces/{namespace}/{PLURAL[kind]}"
    return f"{base}/{name}" if name else base


def path_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class KubeApi(Protocol):
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager `rollwise`, conflicts forced); the object as
        the server now has it."""

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when there is none."""

    def list(self, path: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """The objects of a collection `path` that carry `labels`."""

    def delete(self, path: str) -> None:
        """Delete the object at `path` (gone already: nothing to do)."""

    def log(self, path: str, lines: int) -> str:
        """The last `lines` lines of a pod's log."""

    def version(self) -> str:
        """The server's version (`/version`): the cluster answers."""


class Cluster:
    """A cluster reached through kubeconfig (`KUBECONFIG`, or ~/.kube/config), `context` or
    the current one."""

    def __init__(self, context: str | None = None) -> None:
        try:
            from kubernetes import client, config
        except ImportError:
            raise ConfigError(
                "the Kubernetes client is not installed",
                where="kubernetes",
                hint="pip install 'rollwise[kubernetes]'",
            ) from None
        try:
            config.load_kube_config(context=context)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as e:
            raise ConfigError(
                f"no usable kubeconfig: {e}",
                where=f"kubernetes.context {context}" if context else "KUBECONFIG",
                hint="point KUBECONFIG at the cluster's kubeconfig (or set "
                "`kubernetes.context` to one of its contexts)",
            ) from None
        self._api = client.ApiClient()
        self.host = self._api.configuration.host

    def _call(
        self,
        method: str,
        where: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json, */*"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=where,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self._api.call_api(m, url, header_params=headers, body=body)
        except (urllib3.exceptions.HTTPError, ApiException) as e:
            raise Unreachable(
                f"the Kubernetes API at {self.host} does not answer: {e}",
                where=f"{method} {where}",
                hint="check KUBECONFIG, the context and the network to the cluster",
            ) from None
        return resp.status, bytes(resp.read())  # type: ignore[no-untyped-call]

    def _ok(self, method: str, where: str, status: int, data: bytes) -> Any:
        if 200 <= status < 300:
            return json.loads(data) if data[:1] in (b"{", b"[") else data.decode()
        try:
            message = json.loads(data).get("message", "")
        except ValueError:
            message = data.decode(errors="replace")[:300]
        raise RollwiseError(
            f"the Kubernetes API refused {method} {where}: {status} {message}",
            where=f"cluster {self.host}",
            hint="check the objects' namespace exists and the kubeconfig user may "
            "manage Deployments, Services and HTTPRoutes or Ingresses there",
        )

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        where = path_of(obj)
        status, data = self._call(
            "PATCH",
            where,
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        out: dict[str, Any] = self._ok("PATCH", where, status, data)
        return out

    def get(self, where: str) -> dict[str, Any] | None:
        status, data = self._call("GET", where)
        if status == 404:
            return None
        out: dict[str, Any] = self._ok("GET", where, status, data)
        return out

    def list(self, where: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        status, data = self._call("GET", where, query=[("labelSelector", selector(labels))])
        items: list[dict[str, Any]] = self._ok("GET", where, status, data)["items"]
        return items

    def delete(self, where: str) -> None:
        status, data = self._call(
            "DELETE", where, body={"propagationPolicy": "Background"}, content_type=None
        )
        if status != 404:
            self._ok("DELETE", where, status, data)

    def log(self, where: str, lines: int) -> str:
        status, data = self._call("GET", f"{where}/log", query=[("tailLines", str(lines))])
        return str(self._ok("GET", f"{where}/log", status, data))

    def version(self) -> str:
        status, data = self._call("GET", "/version")
        return str(self._ok("GET", "/version", status, data).get("gitVersion", "?"))
