"""The explicit context every operation receives: config, paths, store, event bus, actor; and
the handle of the environment an operation acts on, resolved once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from rollwise import audit, checkpoints, fleetcache, notify, secrets
from rollwise.audit import Event
from rollwise.chain import actor
from rollwise.config.load import load_config_digest
from rollwise.config.schema import EnvironmentConfig, ProjectConfig, UrlOrSecret
from rollwise.controller.registry import make_router, make_target
from rollwise.errors import ConfigError
from rollwise.events import EventBus
from rollwise.private import private_dir
from rollwise.project import STATE_DIR, find_config
from rollwise.store.db import default_url, open_engine
from rollwise.targets import Target
from rollwise.traffic import TrafficRouter


@dataclass(frozen=True)
class Environment:
    """One environment as an operation sees it: its settings, its folder under
    `.rollwise/envs/`, and the target and router built for it from them."""

    name: str
    config: EnvironmentConfig
    dir: Path
    target: Target
    router: TrafficRouter

    def release_dir(self, version: str) -> Path:
        """Where a release is unpacked."""
        return self.dir / "releases" / version


@dataclass
class Context:
    root: Path
    config_path: Path
    config: ProjectConfig
    state_dir: Path
    engine: Engine
    bus: EventBus
    actor: str
    config_sha256: str  # of the rollwise.yaml bytes `config` was read from

    @classmethod
    def open(
        cls, start: Path, bus: EventBus | None = None, engine: Engine | None = None
    ) -> Context:
        """`engine`: a store already open (the team server's, shared by its jobs)."""
        config_path = find_config(start)
        config, config_sha256 = load_config_digest(config_path)
        root = config_path.parent
        state_dir = private_dir(root / STATE_DIR)  # an older, wider one is closed here
        engine = engine or open_engine(default_url(state_dir))
        bus = bus or EventBus()
        bus.subscribe(audit.recorder(engine))
        bus.subscribe(
            audit.checkpointer(engine, checkpoints.settings(config, state_dir, engine), bus.emit)
        )
        ctx = cls(root, config_path, config, state_dir, engine, bus, actor(), config_sha256)
        for name, env in config.environments.items():  # for the quick `hosts run`
            if env.target.type == "ssh":
                fleetcache.write(state_dir, config_sha256, name, env.target.hosts, env.target.ssh)
        told = notify.subscriber(config, state_dir, ctx.url, bus.emit, lambda: ctx.actor)
        if told is not None:  # only a project with `notifications` pays for them
            bus.subscribe(told)
        return ctx

    def env(self, name: str) -> EnvironmentConfig:
        try:
            return self.config.environments[name]
        except KeyError:
            known = ", ".join(self.config.environments)
            raise ConfigError(
                f"unknown environment {name!r}",
                where=str(self.config_path),
                hint=f"environments in this file: {known}",
            ) from None

    def env_dir(self, name: str) -> Path:
        return self.state_dir / "envs" / name

    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def environment(self, name: str) -> Environment:
        """Resolve `name` once per operation (an unknown one is a ConfigError)."""
        cfg, folder = self.env(name), self.env_dir(name)
        return Environment(
            name,
            cfg,
            folder,
            make_target(
                cfg,
                self.config.app,
                folder,
                name,
                lambda version: self.instance_env(name, version),
                lambda host, what, outcome, data: self.emit(
                    "host",
                    outcome,
                    env=name,
                    record=False,
                    data={"host": host, "step": what, **data},
                ),
                self.config.image,
                self.config.health.path,
            ),
            make_router(cfg, self.config.app, folder, name),
        )

    def url(self, env: str, cfg: UrlOrSecret) -> str:
        """`cfg.url`, or the value of its `url_secret` for `env`."""
        return cfg.url if cfg.url is not None else self.secret(env, str(cfg.url_secret))

    def secret(self, env: str, name: str) -> str:
        return secrets.resolve([name], self.state_dir, env)[name].reveal()

    def database_url(self, env: str) -> str | None:
        """The environment's `database` URL, `{shared}` filled in; None without one."""
        db = self.env(env).database
        if db is None:
            return None
        return self.url(env, db).replace("{shared}", str(self.env_dir(env) / "shared"))

    def instance_env(self, env: str, version: str) -> dict[str, str | secrets.Secret]:
        """What an instance (and a migration command) of `version` runs with: `run.env`, the
        environment's `env` and secrets, `DATABASE_URL` when a database is configured, and
        ROLLWISE_ENV, ROLLWISE_VERSION, ROLLWISE_SHARED_DIR."""
        env_cfg = self.env(env)
        values: dict[str, str | secrets.Secret] = {**self.config.run.env, **env_cfg.env}
        if env_cfg.target.type == "kubernetes":  # keys of the cluster's Secret <app>-<env>
            values |= {name: secrets.Secret("") for name in env_cfg.secrets}
        else:
            values |= secrets.resolve(env_cfg.secrets, self.state_dir, env)
        shared = self.env_dir(env) / "shared"
        shared.mkdir(mode=0o700, parents=True, exist_ok=True)
        url = self.database_url(env)
        if url is not None and "DATABASE_URL" not in values:
            scheme = env_cfg.database.app_scheme  # type: ignore[union-attr]
            values["DATABASE_URL"] = secrets.Secret(app_url(url, scheme))
        return values | {
            "ROLLWISE_ENV": env,
            "ROLLWISE_VERSION": version,
            "ROLLWISE_SHARED_DIR": str(shared),
        }

    def emit(self, action: str, outcome: str, **kw: object) -> None:
        self.bus.emit(Event(action=action, outcome=outcome, actor=self.actor, **kw))  # type: ignore[arg-type]


def app_url(url: str, scheme: str) -> str:
    """`url` with the scheme the app asks for: `plain` drops rollwise's driver
    (`postgresql+psycopg://` becomes `postgresql://`), `as-is` keeps it, anything else
    replaces it."""
    head, sep, rest = url.partition("://")
    if not sep or scheme == "as-is":
        return url
    return f"{head.split('+')[0] if scheme == 'plain' else scheme}://{rest}"
