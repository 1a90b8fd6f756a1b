"""Targets and routers are built by the controller's registry, from `type` in the config."""

from pathlib import Path

import pytest

from rollwise.config.schema import EnvironmentConfig, RouterConfig, TargetConfig
from rollwise.controller.registry import make_router, make_target
from rollwise.errors import ConfigError
from rollwise.targets.kubernetes import KubeTarget
from rollwise.targets.local import LocalTarget
from rollwise.targets.ssh import SSHTarget
from rollwise.traffic.haproxy import HAProxyRouter
from rollwise.traffic.kubernetes import KubeRouter


def test_given_a_type_then_the_registry_builds_its_backend(tmp_path: Path) -> None:
    local = make_target(EnvironmentConfig(), "app", tmp_path, "prod", lambda v: {})
    assert isinstance(local, LocalTarget)
    fleet = EnvironmentConfig(target=TargetConfig(type="ssh", hosts=[{"address": "10.0.0.2"}]))
    ssh = make_target(fleet, "app", tmp_path, "prod", lambda v: {})
    assert isinstance(ssh, SSHTarget) and ssh.layout.env_dir == "/srv/rollwise/app/prod"
    haproxy = EnvironmentConfig(router=RouterConfig(type="haproxy", admin="/run/haproxy.sock"))
    assert isinstance(make_router(haproxy, "app", tmp_path, "prod"), HAProxyRouter)
    cluster = EnvironmentConfig.model_validate(
        {"target": {"type": "kubernetes"}, "kubernetes": {"namespace": "shop"}}
    )
    kube = make_target(cluster, "app", tmp_path, "prod", lambda v: {})
    assert isinstance(kube, KubeTarget) and kube.host == "shop.svc"
    assert isinstance(make_router(cluster, "app", tmp_path, "prod"), KubeRouter)


def test_given_an_unknown_target_type_then_a_config_error_names_the_key(tmp_path: Path) -> None:
    # a type the schema would refuse, built without validation: deliberately bad input
    cfg = EnvironmentConfig(target=TargetConfig.model_construct(type="k8s"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        make_target(cfg, "app", tmp_path, "prod", lambda v: {})
    assert (e.value.message, e.value.where) == (
        "unknown type 'k8s'",
        "environments.prod.target.type",
    )
    assert "local" in e.value.hint
