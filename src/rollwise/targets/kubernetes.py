"""Kubernetes target: a release runs as its own Deployment and Service (kube.py builds them
as plain data), applied with server-side apply. `instances` is the Deployment's replicas, so
a release has one instance here: its Deployment, annotated with the instance's name.

Readiness is the Deployment's: every replica updated and ready. A pod that cannot start
(image not pullable, crash loop, a Secret key missing) fails the health step at once, with
the pod's reason. Secrets are `secretKeyRef`s to the Secret `<app>-<env>`: their values stay
in the cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollwise import artifacts, containers, kube
from rollwise.config.schema import HealthConfig, ImageConfig, KubernetesConfig
from rollwise.domain import Endpoint
from rollwise.errors import HealthCheckFailed, NotFound
from rollwise.kubeapi import KubeApi, path
from rollwise.private import close_tree
from rollwise.secrets import Secret
from rollwise.targets.base import InstanceInfo

# what a pod waits on that no retry fixes: fail the health step at once
STUCK = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
SET_BY_DEPLOYMENT = {"PORT", "HOST", "ROLLWISE_VERSION", "ROLLWISE_ENV", "ROLLWISE_SHARED_DIR"}
INSTANCE = f"{kube.LABEL}/instance"
VERSION = f"{kube.LABEL}/version"


class KubeTarget:
    type = "kubernetes"

    def __init__(
        self,
        settings: KubernetesConfig,
        app: str,
        env: str,
        env_dir: Path,
        replicas: int,
        image: ImageConfig | None,
        health_path: str,
        connect: Callable[[str | None], KubeApi],
    ) -> None:
        self.settings, self.app, self.env, self.env_dir = settings, app, env, env_dir
        self.replicas, self.image, self.health_path = replicas, image, health_path
        self._connect = connect
        self._api: KubeApi | None = None

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = self._connect(self.settings.context)
        return self._api

    @property
    def host(self) -> str:
        return f"{self.settings.namespace}.svc"

    def ensure(self) -> bool:
        self.api.version()  # the cluster answers (or Unreachable, naming it)
        return False

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        """Unpack the release here (for migrations and hooks) and note the digest its
        image is pulled by."""
        release = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(release)
        image = kube.pullable(containers.read(release, version), version)
        self._images().mkdir(parents=True, exist_ok=True)
        (self._images() / f"{kube.slug(version)}.json").write_text(json.dumps({"image": image}))
        return release

    def _images(self) -> Path:
        return self.env_dir / "kube"

    def _image(self, version: str) -> str:
        note = self._images() / f"{kube.slug(version)}.json"
        if not note.is_file():
            raise NotFound(
                f"release {version} was not prepared for Kubernetes here",
                where=str(note),
                hint="deploy it again: its files and image digest are prepared first",
            )
        return str(json.loads(note.read_text())["image"])

    def endpoints(self, n: int) -> list[Endpoint]:
        """One: a release's Deployment runs `instances` replicas behind its Service."""
        return [Endpoint(self.host, 80)]

    def release(self, name: str, version: str, env: dict[str, str | Secret]) -> kube.KubeRelease:
        return kube.KubeRelease(
            app=self.app,
            env=self.env,
            version=version,
            image=self._image(version),
            namespace=self.settings.namespace,
            replicas=self.replicas,
            port=self.settings.port,
            health_path=self.health_path,
            env_vars={
                k: v for k, v in env.items() if isinstance(v, str) and k not in SET_BY_DEPLOYMENT
            },
            secret_names=tuple(sorted(k for k, v in env.items() if isinstance(v, Secret))),
            memory=self.image.memory if self.image else None,
            cpus=self.image.cpus if self.image else None,
            instance=name,
        )

    def start(
        self,
        name: str,
        version: str,
        endpoint: Endpoint,
        command: str,
        env: dict[str, str | Secret],
    ) -> None:
        r = self.release(name, version, env)
        self.api.apply(kube.deployment(r))
        self.api.apply(kube.service(r))

    def _deployments(self) -> list[dict[str, Any]]:
        labels = {f"{kube.LABEL}/app": self.app, f"{kube.LABEL}/env": self.env}
        where = path("apps/v1", "Deployment", self.settings.namespace)
        return self.api.list(where, labels)

    def _of(self, name: str) -> dict[str, Any] | None:
        for d in self._deployments():
            if (d["metadata"].get("annotations") or {}).get(INSTANCE) == name:
                return d
        return None

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        deadline = time.monotonic() + health.ready_timeout_s
        while True:
            d = self._of(name)
            if d is not None and ready(d):
                return
            if d is not None and (why := self._stuck(d)):
                raise HealthCheckFailed(
                    f"instance {name}: {why}",
                    where=f"Deployment {self.settings.namespace}/{d['metadata']['name']}",
                    hint="fix the image or its settings; nothing was switched",
                )
            if time.monotonic() >= deadline:
                raise HealthCheckFailed(
                    f"instance {name} was not ready within {health.ready_timeout_s:g}s: "
                    + (progress(d) if d else "its Deployment is gone"),
                    where=f"namespace {self.settings.namespace}",
                    hint="see `rollwise logs` and the Deployment's events "
                    "(kubectl describe); nothing was switched",
                )
            time.sleep(health.interval_s)

    def _pods(self, d: dict[str, Any]) -> list[dict[str, Any]]:
        where = path("v1", "Pod", self.settings.namespace)
        return self.api.list(where, d["spec"]["selector"]["matchLabels"])

    def _stuck(self, d: dict[str, Any]) -> str | None:
        for pod in self._pods(d):
            for c in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (c.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in STUCK:
                    msg = waiting.get("message", "")
                    return f"pod {pod['metadata']['name']} {waiting['reason']}: {msg}".rstrip(": ")
        return None

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        """Delete the instance's Deployment and Service; one a newer instance of the same
        version has taken over (a restart) stays."""
        d = self._of(name)
        if d is None:
            return
        meta = d["metadata"]
        self.api.delete(path("apps/v1", "Deployment", meta["namespace"], meta["name"]))
        self.api.delete(path("v1", "Service", meta["namespace"], meta["name"]))

    def instances(self) -> list[InstanceInfo]:
        out = []
        for d in self._deployments():
            notes = d["metadata"].get("annotations") or {}
            if INSTANCE in notes:
                out.append(
                    InstanceInfo(notes[INSTANCE], notes[VERSION], self.host, 80, ready(d), 0, "")
                )
        return out

    def logs(self, name: str, endpoint: Endpoint, lines: int) -> str:
        d = self._of(name)
        if d is None:
            return ""
        ns = self.settings.namespace
        return "".join(
            f"== pod {p['metadata']['name']} ==\n"
            + self.api.log(path("v1", "Pod", ns, p["metadata"]["name"]), lines)
            for p in self._pods(d)
        )


def ready(d: dict[str, Any]) -> bool:
    """Every replica of the Deployment's current spec is updated and ready."""
    want, status = d["spec"].get("replicas", 1), d.get("status") or {}
    return bool(
        status.get("observedGeneration", 0) >= d["metadata"].get("generation", 1)
        and status.get("updatedReplicas", 0) >= want
        and status.get("readyReplicas", 0) >= want
    )


def progress(d: dict[str, Any]) -> str:
    status = d.get("status") or {}
    conditions = "; ".join(
        f"{c.get('type')}: {c.get('message', '')}" for c in status.get("conditions") or []
    )
    return f"{status.get('readyReplicas', 0)} of {d['spec'].get('replicas', 1)} replicas ready" + (
        f" ({conditions})" if conditions else ""
    )
