"""Targets and routers are built by the controller's registry, from `type` in the config."""

from pathlib import Path

import pytest

from rollwise.config.schema import EnvironmentConfig, RouterConfig, TargetConfig
from rollwise.controller.registry import make_router, make_target
from rollwise.errors import ConfigError
from rollwise.targets.local import LocalTarget
from rollwise.traffic.haproxy import HAProxyRouter


def test_given_a_type_then_the_registry_builds_its_backend(tmp_path: Path) -> None:
    assert isinstance(make_target(EnvironmentConfig(), tmp_path, "prod", lambda v: {}), LocalTarget)
    router = RouterConfig(type="haproxy", admin="/run/haproxy.sock")
    assert isinstance(make_router(router, tmp_path, "prod"), HAProxyRouter)


def test_given_an_unknown_target_type_then_a_config_error_names_the_key(tmp_path: Path) -> None:
    cfg = EnvironmentConfig(target=TargetConfig.model_construct(type="ssh"))
    with pytest.raises(ConfigError) as e:
        make_target(cfg, tmp_path, "prod", lambda v: {})
    assert (e.value.message, e.value.where) == ("unknown type 'ssh'",
                                                "environments.prod.target.type")
    assert "local" in e.value.hint
