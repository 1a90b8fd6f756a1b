"""Which class serves each `target.type` and `router.type`. The registry lives in the
controller that uses the backends, so an interface module (targets/base.py, traffic/base.py)
imports no implementation and no implementation imports its factory back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rollwise.config.schema import EnvironmentConfig, ImageConfig, KubernetesConfig
from rollwise.errors import ConfigError
from rollwise.targets import Target
from rollwise.targets.base import EnvFor, HostReport
from rollwise.traffic import TrafficRouter

T = TypeVar("T")


def _listen(cfg: EnvironmentConfig) -> str | None:
    """Where the local agent's embedded router listens, when it is the router."""
    return cfg.router.listen if cfg.router.type == "builtin" else None


@dataclass(frozen=True)
class Spec:
    """What a target is built from: the environment's settings and the project's."""

    cfg: EnvironmentConfig
    app: str
    env: str
    env_dir: Path
    env_for: EnvFor
    report: HostReport
    image: ImageConfig | None
    health_path: str


# Each builder imports its implementation when it is used: a command on a local environment
# never loads asyncssh, nor httpx for a router it does not have.


def _local(s: Spec) -> Target:
    from rollwise.targets.local import LocalTarget

    ports = s.cfg.target.ports.span if s.cfg.target.ports else None
    return LocalTarget(s.env_dir, s.env, _listen(s.cfg), s.env_for, ports)


def _ssh(s: Spec) -> Target:
    from rollwise.targets.ssh import Connections, SSHRunner, SSHTarget

    cfg = s.cfg
    if cfg.target.runtime == "process":
        return SSHTarget(cfg.target, s.app, s.env_dir, s.env, _listen(cfg), s.env_for, s.report)
    from rollwise.targets.container import ContainerTarget

    image = _image(s.image, s.env)
    conns = Connections(cfg.target, s.env)
    return ContainerTarget(
        image,
        s.app,
        s.env_dir,
        s.env,
        _listen(cfg),
        s.env_for,
        [SSHRunner(conns, h, image) for h in cfg.target.hosts],
        s.report,
    )


def _container(s: Spec) -> Target:
    from rollwise.targets.container import ContainerTarget

    image = _image(s.image, s.env)
    return ContainerTarget(image, s.app, s.env_dir, s.env, _listen(s.cfg), s.env_for)


def _kubernetes(s: Spec) -> Target:
    from rollwise.kubeapi import Cluster
    from rollwise.targets.kubernetes import KubeTarget

    return KubeTarget(
        _cluster(s.cfg, s.env),
        s.app,
        s.env,
        s.env_dir,
        s.cfg.instances,
        s.image,
        s.health_path,
        Cluster,
    )


def _cluster(cfg: EnvironmentConfig, env: str) -> KubernetesConfig:
    if cfg.kubernetes is None:  # the schema refuses a Kubernetes target without them
        raise ConfigError(
            f"environment {env!r} has no `kubernetes` settings",
            where=f"environments.{env}.kubernetes",
            hint="add `kubernetes: {namespace: shop, gateway: public}`",
        )
    return cfg.kubernetes


def _image(image: ImageConfig | None, env: str) -> ImageConfig:
    if image is None:  # the schema refuses a container environment without `image`
        raise ConfigError(
            f"environment {env!r} runs containers but the project has no `image`",
            where="image",
            hint="add `image: {build: Containerfile}`",
        )
    return image


def _builtin(cfg: EnvironmentConfig, app: str, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.builtin import BuiltinRouter

    return BuiltinRouter(env_dir, env, cfg.router.listen, cfg.router)


def _haproxy(cfg: EnvironmentConfig, app: str, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.haproxy import HAProxyRouter

    r = cfg.router
    return HAProxyRouter(str(r.admin), r.backend, r.slots, env_dir, r)


def _caddy(cfg: EnvironmentConfig, app: str, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.caddy import CaddyRouter

    return CaddyRouter(str(cfg.router.admin), cfg.router.backend, env_dir)


def _route(cfg: EnvironmentConfig, app: str, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.kubeapi import Cluster
    from rollwise.traffic.kubernetes import KubeRouter

    return KubeRouter(_cluster(cfg, env), app, env, Cluster)


TARGETS: dict[str, Callable[[Spec], Target]] = {
    "local": _local,
    "ssh": _ssh,
    "container": _container,
    "kubernetes": _kubernetes,
}

ROUTERS: dict[str, Callable[[EnvironmentConfig, str, Path, str], TrafficRouter]] = {
    "builtin": _builtin,
    "haproxy": _haproxy,
    "caddy": _caddy,
    "kubernetes": _route,
}


def make_target(
    cfg: EnvironmentConfig,
    app: str,
    env_dir: Path,
    env: str,
    env_for: EnvFor,
    report: HostReport = lambda *_: None,
    image: ImageConfig | None = None,
    health_path: str = "/health",
) -> Target:
    """`env_for(version)`: a version's instance environment, secrets resolved now;
    `report`: progress on each host of a fleet."""
    build = _pick(TARGETS, cfg.target.type, f"environments.{env}.target.type")
    return build(Spec(cfg, app, env, env_dir, env_for, report, image, health_path))


def make_router(cfg: EnvironmentConfig, app: str, env_dir: Path, env: str) -> TrafficRouter:
    build = _pick(ROUTERS, cfg.router.type, f"environments.{env}.router.type")
    return build(cfg, app, env_dir, env)


def _pick(registry: Mapping[str, T], name: str, key: str) -> T:
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(
            f"unknown type {name!r}", where=key, hint=f"types rollwise knows: {', '.join(registry)}"
        ) from None
