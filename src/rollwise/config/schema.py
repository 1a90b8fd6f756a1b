"""The `rollwise.yaml` schema. Field descriptions become docs/config.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
LISTEN_RE = re.compile(r"^(?P<host>[0-9a-zA-Z.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildConfig(Strict):
    command: str | None = Field(
        None,
        description="Shell command run in `source` before packaging (for example `npm ci && "
        "npm run build`). A non-zero exit stops `release create`.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: [".git", ".rollwise", ".venv", "__pycache__", "*.pyc"],
        description="Glob patterns (matched against each path part) left out of the artifact.",
    )


class RunConfig(Strict):
    command: str = Field(
        description="Command that starts one instance, run in the unpacked release directory. "
        "`{port}` is replaced by the instance's port, which is also in `$PORT`.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for every instance."
    )


class HealthConfig(Strict):
    path: str = Field("/health", description="HTTP path that answers 2xx when ready.")
    timeout_s: float = Field(2.0, gt=0, description="Timeout of one health request.")
    interval_s: float = Field(0.2, gt=0, description="Pause between health requests.")
    ready_timeout_s: float = Field(
        30.0, gt=0, description="How long a new instance may take to become ready."
    )
    successes: int = Field(
        2, ge=1, description="Consecutive successful health requests needed to be ready."
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/', for example /health")
        return v


class StopConfig(Strict):
    drain_timeout_s: float = Field(
        15.0, ge=0, description="How long to wait for in-flight requests on an old instance."
    )
    grace_s: float = Field(
        10.0, ge=0, description="How long an instance may take to exit after SIGTERM."
    )


class RouterConfig(Strict):
    type: Literal["builtin", "haproxy", "caddy"] = Field(
        "builtin",
        description="`builtin`: rollwise's embedded router (started by rollwise). `haproxy`: "
        "an HAProxy you run, driven through its runtime API. `caddy`: a Caddy you run, driven "
        "through its admin API.",
    )
    listen: str = Field(
        "127.0.0.1:8080",
        description="Address clients use (`host:port`). The builtin router listens here.",
    )
    admin: str | None = Field(
        None,
        description="haproxy: path of the admin socket (`stats socket ... level admin`). "
        "caddy: admin API URL, for example http://127.0.0.1:2019.",
    )
    backend: str = Field(
        "rollwise", description="haproxy: backend name; caddy: `@id` of the reverse_proxy."
    )
    slots: list[str] = Field(
        default_factory=lambda: ["blue", "green"],
        description="haproxy: server names in the backend that rollwise points at instances.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        m = LISTEN_RE.match(v)
        if not m or not 0 < int(m["port"]) < 65536:
            raise ValueError("must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:8080")
        return v

    @model_validator(mode="after")
    def _admin(self) -> RouterConfig:
        if self.type != "builtin" and not self.admin:
            raise ValueError(f"router type {self.type!r} needs `admin`")
        return self

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class TargetConfig(Strict):
    type: Literal["local"] = Field(
        "local", description="`local`: instances run as processes on this machine."
    )


class EnvironmentConfig(Strict):
    target: TargetConfig = Field(default_factory=TargetConfig, description="Where code runs.")
    router: RouterConfig = Field(
        default_factory=RouterConfig, description="Who sends requests to instances."
    )
    instances: int = Field(1, ge=1, le=64, description="Instances of the app per release.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for this environment."
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of secrets injected as environment variables; values come from "
        "`ROLLWISE_SECRET_<NAME>` or the environment's encrypted secrets file.",
    )


class HooksConfig(Strict):
    pre_deploy: list[str] = Field(
        default_factory=list,
        description="Shell commands run in the release directory before the new instances "
        "start. A failure stops the deploy; nothing is switched.",
    )
    post_deploy: list[str] = Field(
        default_factory=list,
        description="Shell commands run after traffic is switched. A failure switches traffic "
        "back to the previous release.",
    )


def _env_names(v: dict[str, EnvironmentConfig]) -> dict[str, EnvironmentConfig]:
    for name in v:
        if not NAME_RE.match(name):
            raise ValueError(f"environment name {name!r} must match {NAME_RE.pattern}")
    if not v:
        raise ValueError("needs at least one environment, e.g. `dev: {}`")
    return v


class ProjectConfig(Strict):
    app: Annotated[str, Field(pattern=NAME_RE.pattern)] = Field(
        description="Application name: lower case letters, digits and '-'."
    )
    source: str = Field(".", description="Directory packaged into releases, relative to the file.")
    build: BuildConfig = Field(default_factory=BuildConfig, description="How to build.")
    run: RunConfig = Field(description="How to run one instance.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Readiness check.")
    stop: StopConfig = Field(default_factory=StopConfig, description="Draining and stopping.")
    keep_releases: int = Field(
        5,
        ge=3,
        description="Releases kept on disk (at least 3). Older ones are removed, never the "
        "live release, a rollback target or the last known-good release of any environment.",
    )
    hooks: HooksConfig = Field(default_factory=HooksConfig, description="Deploy hooks.")
    environments: dict[str, EnvironmentConfig] = Field(
        default_factory=lambda: {"dev": EnvironmentConfig()},
        description="Environments by name (dev, staging, prod...), each isolated.",
    )

    _check_envs = field_validator("environments")(_env_names)

    @model_validator(mode="after")
    def _distinct_listen(self) -> ProjectConfig:
        seen: dict[str, str] = {}
        for name, env in self.environments.items():
            other = seen.setdefault(env.router.listen, name)
            if other != name:
                raise ValueError(
                    f"environments {other!r} and {name!r} both listen on {env.router.listen}; "
                    "environments are isolated and need their own router address"
                )
        return self
