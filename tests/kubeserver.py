"""A Kubernetes API server's HTTP surface as rollwise uses it, on loopback: server-side apply
(PATCH with `application/apply-patch+yaml`), get, list by label selector, delete, pod logs
and /version; a Deployment's pods become ready `ready_after` seconds after its spec changed,
or wait in CrashLoopBackOff when its version is in `crashing`. Ingresses (networking.k8s.io/v1)
are kept like every object, and after each change to one the split ingress-nginx would serve
is recorded (`served`): the oldest primary Ingress wins a host and path, one canary beside
it, a canary without a primary serves nothing. No API server can run on the machines these
tests run on; the official client talks to this one through a kubeconfig."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class FakeCluster:
    ready_after: float = 0.3
    crashing: set[str] = field(default_factory=set)  # version labels whose pods crash
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> object
    changed: dict[str, float] = field(default_factory=dict)  # path -> when its spec changed
    calls: list[Call] = field(default_factory=list)
    served: list[dict[str, int]] = field(default_factory=list)  # Service -> percent, per change
    created: int = 0  # creationTimestamp, as a counter: ingress-nginx orders Ingresses by it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def applies(self, kind: str) -> list[dict[str, Any]]:
        """Bodies of the server-side applies of `kind`, in order."""
        return [
            c.body
            for c in self.calls
            if c.method == "PATCH" and isinstance(c.body, dict) and c.body.get("kind") == kind
        ]

    def apply(self, where: str, body: dict[str, Any]) -> dict[str, Any]:
        old = self.objects.get(where)
        obj = json.loads(json.dumps(body))
        generation = (old or {}).get("metadata", {}).get("generation", 0)
        if old is None or old.get("spec") != obj.get("spec"):
            generation += 1
            self.changed[where] = time.monotonic()
        obj["metadata"]["generation"] = generation
        obj["metadata"]["managedFields"] = [{"manager": "rollwise", "operation": "Apply"}]
        if old is None:
            self.created += 1
        obj["metadata"]["creationTimestamp"] = (old or obj)["metadata"].get(
            "creationTimestamp", f"2026-01-01T00:00:{self.created:02d}Z"
        )
        self.objects[where] = obj
        if obj["kind"] == "Ingress":
            self.served.append(self.nginx())
        return self.view(where)

    def delete(self, where: str) -> bool:
        gone = self.objects.pop(where, None)
        if gone is not None and gone["kind"] == "Ingress":
            self.served.append(self.nginx())
        return gone is not None

    def ingresses(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects.values() if o["kind"] == "Ingress"}

    def nginx(self) -> dict[str, int]:
        """Service -> percent of requests, as ingress-nginx routes the Ingresses now (one host
        and path): the oldest primary wins; the oldest canary beside it takes `canary-weight`
        percent; with no primary nothing is served ({})."""
        order = sorted(
            self.ingresses().values(),
            key=lambda i: (i["metadata"]["creationTimestamp"], i["metadata"]["name"]),
        )
        main = [i for i in order if not _canary(i)]
        if not main:
            return {}
        canary = next((i for i in order if _canary(i)), None)
        share = int(canary["metadata"]["annotations"][_WEIGHT]) if canary else 0
        out = {_backend(main[0]): 100 - share}
        if canary is not None:
            out[_backend(canary)] = out.get(_backend(canary), 0) + share
        return {k: v for k, v in out.items() if v > 0}

    def view(self, where: str) -> dict[str, Any]:
        obj = json.loads(json.dumps(self.objects[where]))
        if obj["kind"] == "Deployment":
            obj["status"] = self._status(where, obj)
        return obj

    def _crashing(self, obj: dict[str, Any]) -> bool:
        return obj["metadata"]["labels"].get("rollwise.io/version") in self.crashing

    def _status(self, where: str, obj: dict[str, Any]) -> dict[str, Any]:
        n = obj["spec"]["replicas"]
        up = not self._crashing(obj) and time.monotonic() - self.changed[where] >= self.ready_after
        return {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n if up else 0,
            "availableReplicas": n if up else 0,
        }

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        out = []
        for d in self.objects.values():
            if d["kind"] != "Deployment" or d["metadata"]["namespace"] != namespace:
                continue
            state = (
                {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
                if self._crashing(d)
                else {"running": {}}
            )
            for i in range(d["spec"]["replicas"]):
                out.append(
                    {
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{d['metadata']['name']}-{i}",
                            "namespace": namespace,
                            "labels": d["spec"]["template"]["metadata"]["labels"],
                        },
                        "status": {"containerStatuses": [{"name": "app", "state": state}]},
                    }
                )
        return out

    def collection(self, where: str, selector: str) -> list[dict[str, Any]]:
        want = dict(kv.split("=", 1) for kv in selector.split(",") if kv)
        parts = where.strip("/").split("/")  # api/v1/namespaces/ns/pods
        if parts[-1] == "pods":
            items = self.pods(parts[-2])
        else:
            items = [self.view(p) for p in self.objects if p.rsplit("/", 1)[0] == where]
        return [
            i
            for i in items
            if all((i["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        ]


_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"


def _canary(ingress: dict[str, Any]) -> bool:
    notes = ingress["metadata"].get("annotations") or {}
    return notes.get("nginx.ingress.kubernetes.io/canary") == "true"


def _backend(ingress: dict[str, Any]) -> str:
    return str(ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"])


def serve(cluster: FakeCluster) -> tuple[ThreadingHTTPServer, str]:
    """Start the API on a free loopback port; returns the server and its URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            size = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(size)) if size else None
            ctype = self.headers.get("Content-Type", "")
            with cluster.lock:
                cluster.calls.append(Call(method, url.path, query, ctype, body))
                code, out = self._answer(method, url.path, query, ctype, body)
            self._send(code, out)

        def _answer(
            self, method: str, where: str, query: dict[str, list[str]], ctype: str, body: Any
        ) -> tuple[int, Any]:
            gone = {"kind": "Status", "message": f"{where} not found", "code": 404}
            if where == "/version":
                return 200, {"gitVersion": "v1.37.0-fake"}
            if method == "PATCH":
                if ctype != "application/apply-patch+yaml" or query.get("fieldManager") != [
                    "rollwise"
                ]:
                    return 415, {"kind": "Status", "message": f"not an apply: {ctype} {query}"}
                return 200, cluster.apply(where, body)
            if method == "GET" and where.endswith("/log"):
                name = where.rsplit("/", 2)[-2]
                lines = int(query.get("tailLines", ["10"])[0])
                return 200, "".join(f"{name} line {i}\n" for i in range(lines))
            if method == "GET" and where in cluster.objects:
                return 200, cluster.view(where)
            if method == "GET" and "labelSelector" in query:
                return 200, {"items": cluster.collection(where, query["labelSelector"][0])}
            if method == "DELETE" and cluster.delete(where):
                return 200, {"kind": "Status", "status": "Success"}
            return 404, gone

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": url}}],
                "users": [{"name": "rollwise", "user": {"token": "test-token"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "rollwise"}}],
                "current-context": "test",
            }
        )
    )
    return path
