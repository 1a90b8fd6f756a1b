"""Which class serves each `target.type` and `router.type`. The registry lives in the
controller that uses the backends, so an interface module (targets/base.py, traffic/base.py)
imports no implementation and no implementation imports its factory back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from rollwise.config.schema import EnvironmentConfig, ImageConfig, RouterConfig
from rollwise.errors import ConfigError
from rollwise.targets import Target
from rollwise.targets.base import EnvFor, HostReport
from rollwise.traffic import TrafficRouter

T = TypeVar("T")


def _listen(cfg: EnvironmentConfig) -> str | None:
    """Where the local agent's embedded router listens, when it is the router."""
    return cfg.router.listen if cfg.router.type == "builtin" else None


# Each builder imports its implementation when it is used: a command on a local environment
# never loads asyncssh, nor httpx for a router it does not have.


def _local(
    cfg: EnvironmentConfig,
    app: str,
    image: ImageConfig | None,
    env_dir: Path,
    env: str,
    env_for: EnvFor,
    report: HostReport,
) -> Target:
    from rollwise.targets.local import LocalTarget

    ports = cfg.target.ports.span if cfg.target.ports else None
    return LocalTarget(env_dir, env, _listen(cfg), env_for, ports)


def _ssh(
    cfg: EnvironmentConfig,
    app: str,
    image: ImageConfig | None,
    env_dir: Path,
    env: str,
    env_for: EnvFor,
    report: HostReport,
) -> Target:
    from rollwise.targets.ssh import Connections, SSHRunner, SSHTarget

    if cfg.target.runtime == "process":
        return SSHTarget(cfg.target, app, env_dir, env, _listen(cfg), env_for, report)
    from rollwise.targets.container import ContainerTarget

    image = _image(image, env)
    conns = Connections(cfg.target, env)
    return ContainerTarget(
        image,
        app,
        env_dir,
        env,
        _listen(cfg),
        env_for,
        [SSHRunner(conns, h, image) for h in cfg.target.hosts],
        report,
    )


def _container(
    cfg: EnvironmentConfig,
    app: str,
    image: ImageConfig | None,
    env_dir: Path,
    env: str,
    env_for: EnvFor,
    report: HostReport,
) -> Target:
    from rollwise.targets.container import ContainerTarget

    return ContainerTarget(_image(image, env), app, env_dir, env, _listen(cfg), env_for)


def _image(image: ImageConfig | None, env: str) -> ImageConfig:
    if image is None:  # the schema refuses a container environment without `image`
        raise ConfigError(
            f"environment {env!r} runs containers but the project has no `image`",
            where="image",
            hint="add `image: {build: Containerfile}`",
        )
    return image


def _builtin(cfg: RouterConfig, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.builtin import BuiltinRouter

    return BuiltinRouter(env_dir, env, cfg.listen, cfg)


def _haproxy(cfg: RouterConfig, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.haproxy import HAProxyRouter

    return HAProxyRouter(str(cfg.admin), cfg.backend, cfg.slots, env_dir, cfg)


def _caddy(cfg: RouterConfig, env_dir: Path, env: str) -> TrafficRouter:
    from rollwise.traffic.caddy import CaddyRouter

    return CaddyRouter(str(cfg.admin), cfg.backend, env_dir)


TARGETS: dict[
    str,
    Callable[[EnvironmentConfig, str, ImageConfig | None, Path, str, EnvFor, HostReport], Target],
] = {"local": _local, "ssh": _ssh, "container": _container}

ROUTERS: dict[str, Callable[[RouterConfig, Path, str], TrafficRouter]] = {
    "builtin": _builtin,
    "haproxy": _haproxy,
    "caddy": _caddy,
}


def make_target(
    cfg: EnvironmentConfig,
    app: str,
    env_dir: Path,
    env: str,
    env_for: EnvFor,
    report: HostReport = lambda *_: None,
    image: ImageConfig | None = None,
) -> Target:
    """`env_for(version)`: a version's instance environment, secrets resolved now;
    `report`: progress on each host of a fleet."""
    build = _pick(TARGETS, cfg.target.type, f"environments.{env}.target.type")
    return build(cfg, app, image, env_dir, env, env_for, report)


def make_router(cfg: RouterConfig, env_dir: Path, env: str) -> TrafficRouter:
    return _pick(ROUTERS, cfg.type, f"environments.{env}.router.type")(cfg, env_dir, env)


def _pick(registry: Mapping[str, T], name: str, key: str) -> T:
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(
            f"unknown type {name!r}", where=key, hint=f"types rollwise knows: {', '.join(registry)}"
        ) from None
