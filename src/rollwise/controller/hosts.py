"""`rollwise hosts`: the hosts of a fleet environment. `trust` records a host key on purpose,
`setup` installs the agent's modules on every host (idempotent), `check` reports what each
host has. Setting up and trusting are recorded in the audit log."""

from __future__ import annotations

import asyncio
import shlex
import tempfile
from pathlib import Path
from typing import Any

from rollwise import hostsrun, reasons
from rollwise.config.schema import EnvironmentConfig, HostConfig
from rollwise.controller.context import Context
from rollwise.errors import ConfigError, IntegrityError, NotFound, UsageError
from rollwise.private import open_private
from rollwise.ssh import HostError, Hosts, fingerprint, known_entry, known_hosts_path
from rollwise.targets.ssh import MIN_PYTHON, Layout, agent_bundle


def fleet(ctx: Context, env: str) -> EnvironmentConfig:
    """`env`'s settings, refused unless it runs on hosts."""
    cfg = ctx.env(env)
    if cfg.target.type != "ssh":
        raise ConfigError(
            f"environment {env!r} runs on this machine (target type "
            f"{cfg.target.type!r}), not on hosts",
            where=f"environments.{env}.target",
            hint="set `type: ssh` and list `hosts` (docs/fleet.md)",
        )
    return cfg


def pick(cfg: EnvironmentConfig, env: str, label: str) -> HostConfig:
    try:
        return cfg.target.host(label)
    except KeyError:
        known = ", ".join(h.label for h in cfg.target.hosts)
        raise NotFound(
            f"no host {label!r} in environment {env!r}",
            where=f"environments.{env}.target.hosts",
            hint=f"hosts: {known}",
        ) from None


def hosts_list(ctx: Context, env: str) -> list[dict[str, Any]]:
    cfg = fleet(ctx, env)
    ssh = cfg.target.ssh
    return [
        {
            "name": h.label,
            "address": h.address,
            "port": h.port,
            "user": h.user or ssh.user,
            "bind": h.listen_host,
            "labels": h.labels,
        }
        for h in cfg.target.hosts
    ]


def hosts_trust(
    ctx: Context, env: str, label: str, expected: str | None, ask: Any = None
) -> dict[str, Any]:
    """Add the key the host offers to `ssh.known_hosts`, when it matches `expected` (the
    fingerprint checked out of band) or the person at the terminal says yes (`ask`)."""
    cfg = fleet(ctx, env)
    host = pick(cfg, env, label)
    key = asyncio.run(fingerprint(host, cfg.target.ssh))
    path = known_hosts_path(cfg.target.ssh)
    data = {"host": host.label, "fingerprint": key.fingerprint, "known_hosts": str(path)}
    if expected is not None and expected != key.fingerprint:
        raise IntegrityError(
            f"it offers {key.fingerprint}, not {expected}",
            where=f"host {host.label} ({host.address}:{host.port})",
            hint="nothing was recorded; find out why before trusting it",
        )
    if expected is None:
        if ask is None:
            raise UsageError(
                f"host {host.label} offers {key.fingerprint}; check it with the host's owner "
                "(on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)",
                hint=f"then `rollwise hosts trust {host.label} -e {env} --fingerprint "
                f"{key.fingerprint}`; nothing was recorded",
            )
        if not ask(f"host {host.label} ({host.address}) offers {key.fingerprint}. Trust it?"):
            return {**data, "trusted": False}
    if known_entry(path, host):
        raise IntegrityError(
            f"{path} already has another key for it",
            where=f"host {host.label}",
            hint=f"if the host was reinstalled, remove its old line (ssh-keygen -R "
            f"{host.address} -f {path}) and trust it again; nothing was recorded",
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(key.line + "\n")
    ctx.emit("hosts_trust", reasons.OK, env=env, data=data)
    return {**data, "trusted": True}


def hosts_setup(ctx: Context, env: str) -> dict[str, Any]:
    """Install the agent's modules on every host (skipped where the same ones are there),
    after checking its Python; per host what was done."""
    cfg = fleet(ctx, env)
    layout = Layout(cfg.target, ctx.config.app, env)
    bundle, digest = agent_bundle()
    with tempfile.TemporaryDirectory(prefix="rollwise-setup-") as tmp:
        local = Path(tmp) / "agent.tar.gz"
        with open_private(local) as f:
            f.write(bundle)
        with Hosts(cfg.target.hosts, cfg.target.ssh, env) as hosts:

            async def setup(host: HostConfig) -> str:
                await _python(hosts, host, cfg.target.ssh.python)
                lib = shlex.quote(layout.lib)
                if (await hosts.arun(host, f"test -f {lib}/.complete", check=False)).exit == 0:
                    return "up to date"
                remote = f"{layout.root}/lib/{digest[:16]}.tar.gz"
                await hosts.arun(
                    host,
                    f"umask 077 && mkdir -p {shlex.quote(layout.root)}/lib "
                    f"{shlex.quote(layout.env_dir)}",
                )
                await hosts.put(host, local, remote)
                await hosts.arun(
                    host,
                    f"umask 077 && rm -rf {lib}.tmp && mkdir {lib}.tmp && "
                    f"tar -xzf {shlex.quote(remote)} -C {lib}.tmp && "
                    f"touch {lib}.tmp/.complete && rm -rf {lib} && "
                    f"mv {lib}.tmp {lib} && rm -f {shlex.quote(remote)}",
                )
                return "installed"

            done = hosts.all(setup)
    data = {"hosts": done, "agent": digest[:16], "root": layout.root}
    ctx.emit("hosts_setup", reasons.OK, env=env, data=data)
    return data


async def _python(hosts: Hosts[HostConfig], host: HostConfig, python: str) -> None:
    want = ".".join(map(str, MIN_PYTHON))
    got = await hosts.arun(
        host,
        f"{shlex.quote(python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
        check=False,
    )
    version = got.stdout.strip()
    parts = version.split(".")
    if got.exit != 0 or not all(p.isdigit() for p in parts) or tuple(map(int, parts)) < MIN_PYTHON:
        raise ConfigError(
            f"its {python} is {version or 'missing'} ({got.tail()}); rollwise's agent needs "
            f"Python {want}+",
            where=f"host {host.label} ({host.address})",
            hint="install python3 (3.11+) on the host, or point `ssh.python` at one",
        )


def hosts_run(
    ctx: Context, env: str, command: str, only: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run a shell command on every host (or those named in `only`) at once; per host its
    exit status and output. Recorded in the audit log (the command, not its output)."""
    cfg = fleet(ctx, env)
    chosen = [pick(cfg, env, label) for label in only] if only else cfg.target.hosts
    rows = hostsrun.run(chosen, cfg.target.ssh, env, command)
    outcome, data = hostsrun.record(command, rows)
    ctx.emit(hostsrun.ACTION, outcome, env=env, data=data)
    return rows


def hosts_check(ctx: Context, env: str) -> list[dict[str, Any]]:
    """Per host: reachable (key verified), Python, agent modules, agent running, free disk
    under `ssh.root`. Never changes a host."""
    cfg = fleet(ctx, env)
    layout = Layout(cfg.target, ctx.config.app, env)
    with Hosts(cfg.target.hosts, cfg.target.ssh, env) as hosts:

        async def check(host: HostConfig) -> dict[str, Any]:
            q = shlex.quote
            script = (
                f'{q(cfg.target.ssh.python)} -c \'import sys; print("%d.%d" % '
                f"sys.version_info[:2])' 2>/dev/null || echo -; "
                f"test -f {q(layout.lib)}/.complete && echo yes || echo no; "
                f"df -Pk {q(layout.root)} 2>/dev/null | tail -1 | awk '{{print $4}}' "
                "|| echo -"
            )
            r = await hosts.arun(host, script, check=False)
            py, installed, free = [*r.stdout.split(), "-", "-", "-"][:3]
            try:
                await hosts.acall(host, layout.sock, "ping", timeout=5)
                running = True
            except HostError:
                running = False
            return {
                "reachable": True,
                "python": py,
                "agent_installed": installed == "yes",
                "agent_running": running,
                "free_mb": int(free) // 1024 if free.isdigit() else None,
            }

        got = hosts.each(check)
    rows = []
    for h in cfg.target.hosts:
        r = got[h.label]
        rows.append(
            {
                "name": h.label,
                "address": h.address,
                **({"reachable": False, "error": str(r)} if isinstance(r, Exception) else r),
            }
        )
    return rows
