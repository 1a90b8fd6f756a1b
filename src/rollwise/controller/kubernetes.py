"""`rollwise kube`: a release's Kubernetes objects for an environment, checked against the
published schemas, and applied to a cluster (docs/kubernetes.md)."""

from __future__ import annotations

from typing import Any

from rollwise import artifacts, containers, kube
from rollwise.config.schema import KubernetesConfig
from rollwise.controller.context import Context
from rollwise.controller.ops import release_record
from rollwise.errors import ConfigError, RollwiseError
from rollwise.store import repo


def settings(ctx: Context, env: str) -> KubernetesConfig:
    cfg = ctx.env(env).kubernetes
    if cfg is None:
        raise ConfigError(
            f"environment {env!r} has no `kubernetes` settings",
            where=f"environments.{env}.kubernetes",
            hint="add `kubernetes: {namespace: shop, gateway: public}` (docs/kubernetes.md)",
        )
    return cfg


def release(ctx: Context, env: str, version: str) -> kube.KubeRelease:
    """The release as Kubernetes needs it: its image by registry digest."""
    cfg, env_cfg = settings(ctx, env), ctx.env(env)
    rel = release_record(ctx, version)
    meta = containers.read_archive(
        artifacts.artifact_path(ctx.artifacts_dir(), rel["sha256"]), rel["version"]
    )
    plain = {**ctx.config.run.env, **env_cfg.env}
    image = ctx.config.image
    return kube.KubeRelease(
        app=ctx.config.app,
        env=env,
        version=rel["version"],
        image=kube.pullable(meta, rel["version"]),
        namespace=cfg.namespace,
        replicas=env_cfg.instances,
        port=cfg.port,
        health_path=ctx.config.health.path,
        env_vars=plain,
        secret_names=tuple(env_cfg.secrets),
        memory=image.memory if image else None,
        cpus=image.cpus if image else None,
    )


def manifests(
    ctx: Context, env: str, version: str, percent: int, live: str | None = None
) -> list[dict[str, Any]]:
    """The objects for `version` taking `percent` of traffic beside the live release (or
    `live`), checked against the published schemas."""
    cfg = settings(ctx, env)
    if live is None:
        live = repo.env_state(ctx.engine, env)["live_version"]
    objects = kube.manifests(
        release(ctx, env, version),
        live,
        percent,
        traffic=cfg.traffic,
        gateway=cfg.gateway,
        hostnames=tuple(cfg.hostnames),
    )
    if problems := kube.validate(objects, cfg.schema_version):
        raise RollwiseError(
            "the manifests do not pass the Kubernetes schemas: " + "; ".join(problems),
            where=f"environments.{env}.kubernetes",
            hint="this is a rollwise bug if the settings are valid",
        )
    return objects


def apply(ctx: Context, env: str, version: str, percent: int) -> list[str]:
    objects = manifests(ctx, env, version, percent)
    done = kube.apply(objects, settings(ctx, env).context)
    ctx.emit(
        "kube-apply", "ok", env=env, version=version, data={"percent": percent, "objects": done}
    )
    return done
