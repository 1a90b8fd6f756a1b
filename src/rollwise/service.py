"""systemd units for running rollwise as a service: an environment's agent (its router and
instances, restored after a reboot) and `rollwise serve` (alerts in, metrics out)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceSpec:
    app: str
    env: str
    root: Path  # the project directory
    env_dir: Path  # the environment's folder under .rollwise/envs/
    python: str  # the interpreter rollwise is installed in
    router_listen: str | None  # the embedded router's address, when it is the router
    serve_listen: str
    user: str | None = None


def unit_names(spec: ServiceSpec) -> tuple[str, str]:
    return f"rollwise-{spec.app}-{spec.env}-agent.service", f"rollwise-{spec.app}-serve.service"


def units(spec: ServiceSpec) -> dict[str, str]:
    """File name -> text of the two units (pure)."""
    agent_cmd = [spec.python, "-m", "rollwise", "agent", "run", "--env-dir", str(spec.env_dir)]
    if spec.router_listen:
        agent_cmd += ["--listen", spec.router_listen]
    serve_cmd = [
        spec.python,
        "-m",
        "rollwise",
        "serve",
        "--listen",
        spec.serve_listen,
        "-C",
        str(spec.root),
    ]
    user = f"User={spec.user}\n" if spec.user else ""
    agent_name, serve_name = unit_names(spec)
    return {
        agent_name: f"""\
[Unit]
Description=rollwise agent of {spec.app} ({spec.env}): router and instances
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
{user}WorkingDirectory={spec.root}
ExecStart={shlex.join(agent_cmd)}
# SIGTERM to the agent alone: it drains and stops its instances itself
KillMode=mixed
TimeoutStopSec=60
Restart=on-failure
RestartSec=2
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
""",
        serve_name: f"""\
[Unit]
Description=rollwise serve for {spec.app}: alert webhooks in, /metrics and /sd out
After=network-online.target {agent_name}
Wants=network-online.target

[Service]
Type=simple
{user}WorkingDirectory={spec.root}
# ROLLWISE_WEBHOOK_TOKEN=... (16 characters or more), readable by this service only
EnvironmentFile=/etc/rollwise/{spec.app}.env
ExecStart={shlex.join(serve_cmd)}
Restart=on-failure
RestartSec=2
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
""",
    }
