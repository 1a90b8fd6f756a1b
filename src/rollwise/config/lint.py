"""Settings that load but are probably not what was meant: each becomes a warning that
`config check` and every deploy print."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from rollwise.config.schema import ProjectConfig

ALL_INTERFACES = ("0.0.0.0", "::")
VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def lint(cfg: ProjectConfig, env: str | None = None) -> list[str]:
    """Warnings about `cfg` (about one environment and the project-wide keys with `env`)."""
    envs = {n: e for n, e in cfg.environments.items() if env is None or n == env}
    found = [*_variables("run.env", cfg.run.env)]
    if cfg.migrations is not None:
        found += _variables("migrations.env", cfg.migrations.env)
    for name, e in envs.items():
        found += _variables(f"environments.{name}.env", e.env)
        host = e.router.host
        if host in ALL_INTERFACES:
            found.append(
                f"environments.{name}.router.listen is {e.router.listen}: the router "
                "takes requests on every network interface, from other machines too; "
                "write 127.0.0.1:<port> unless that is meant"
            )
    return found


def _variables(key: str, values: Mapping[str, str]) -> Iterator[str]:
    for name, value in values.items():
        if m := VARIABLE.search(value):
            yield (
                f"{key}.{name} contains {m[0]}, which is passed as written: rollwise does "
                "not expand variables; put secret values in `secrets:` (docs/secrets.md) "
                "and write others out"
            )
