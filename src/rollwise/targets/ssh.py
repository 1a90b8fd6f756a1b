"""SSH target: instances run on the hosts of a fleet, each host driven by its own rollwise
agent exactly as the local target drives the local one.

On each host, under `ssh.root`:

    lib/<digest>/rollwise/...      the agent's modules, copied by `rollwise hosts setup`
    <app>/<env>/agent.sock         the agent's control socket (reached through SSH)
    <app>/<env>/artifacts/<sha>    uploaded release artifacts (sha256 checked on the host)
    <app>/<env>/releases/<version> unpacked releases the instances run from
    <app>/<env>/logs/              instance logs

The controller reaches each agent through a stream-local channel of its SSH connection, so
the agent listens on no network port and secrets travel only inside SSH. The router is the
front: it balances across the hosts' instances (`Endpoint(host's bind address, port)`).
Each release is also unpacked on this machine, where migrations and hooks run.

With `runtime: container` the hosts need no agent: `SSHRunner` runs the container CLI on
each host for the container target (targets/container.py).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import gzip
import hashlib
import io
import random
import shlex
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rollwise
from rollwise import artifacts
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig, HostConfig, ImageConfig, TargetConfig
from rollwise.containers import TIMEOUT_S, Proc
from rollwise.domain import Endpoint
from rollwise.errors import ConfigError, HealthCheckFailed, RollwiseError
from rollwise.private import close_tree
from rollwise.secrets import Secret, split
from rollwise.ssh import HostError, Hosts, where
from rollwise.targets.base import EnvFor, HostReport, InstanceInfo
from rollwise.targets.common import resume, wait_ready

AGENT_START_S = 15.0
MIN_PYTHON = (3, 11)


@functools.cache
def agent_bundle() -> tuple[bytes, str]:
    """The rollwise package's modules as a reproducible tar.gz, and its sha256 (the folder
    name under `lib/` on each host)."""
    package = Path(rollwise.__file__).parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(package.rglob("*.py")):
            info = tarfile.TarInfo(f"rollwise/{path.relative_to(package).as_posix()}")
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)
    return data, hashlib.sha256(data).hexdigest()


class Layout:
    """Where things are on every host of one environment."""

    def __init__(self, target: TargetConfig, app: str, env: str) -> None:
        self.root = target.ssh.root
        self.python = target.ssh.python
        self.digest = agent_bundle()[1][:16]
        self.lib = f"{self.root}/lib/{self.digest}"
        self.env_dir = f"{self.root}/{app}/{env}"
        self.sock = f"{self.env_dir}/agent.sock"

    def release(self, version: str) -> str:
        return f"{self.env_dir}/releases/{version}"

    def artifact(self, sha256: str) -> str:
        return f"{self.env_dir}/artifacts/{sha256}.tar.gz"

    def start_agent(self) -> str:
        """A shell command that starts the agent detached (it outlives the SSH session)."""
        d = shlex.quote(self.env_dir)
        return (
            f"umask 077 && mkdir -p {d}/shared && cd {d} && "
            f"{{ PYTHONPATH={shlex.quote(self.lib)} setsid {shlex.quote(self.python)} "
            f"-m rollwise.agent --env-dir {d} </dev/null >>agent.log 2>&1 & }}"
        )


class SSHTarget:
    type = "ssh"

    def __init__(
        self,
        target: TargetConfig,
        app: str,
        env_dir: Path,
        env: str,
        router_listen: str | None,
        env_for: EnvFor,
        report: HostReport = lambda *_: None,
    ) -> None:
        self.cfg = target
        self.report = report
        self.env = env
        self.env_dir = env_dir
        self.env_for = env_for
        self.layout = Layout(target, app, env)
        self.front = AgentClient(env_dir, env) if router_listen else None
        self.router_listen = router_listen
        self.conns = Connections(target, env)
        self.ensured = False
        self.by_bind = {h.listen_host: h for h in target.hosts}

    @property
    def hosts(self) -> Hosts[HostConfig]:
        return self.conns.hosts

    def close(self) -> None:
        self.conns.close()

    # -- Target ---------------------------------------------------------------------------
    def ensure(self) -> bool:
        """The front router's agent here, and an agent on every host (started if needed;
        a host without rollwise's modules is a ConfigError naming `hosts setup`)."""
        started = False
        if self.front is not None:
            started = self.front.alive() is None
            self.front.ensure(self.router_listen)
        if self.ensured:  # once per operation: later steps reach only the hosts they need
            return started
        waited = self.hosts.all(self._ensure_agent)
        self.ensured = True
        for label, (host_started, waiting) in waited.items():
            host = self.cfg.host(label)
            started = (
                resume(waiting, self.env_for, self.env, functools.partial(self._resume, host))
                or host_started
                or started
            )
        return started

    def _resume(self, host: HostConfig, name: str, secrets: dict[str, str]) -> None:
        self.hosts.call(host, self.layout.sock, "resume", name=name, secrets=secrets)

    async def _ensure_agent(self, host: HostConfig) -> tuple[bool, list[dict[str, Any]]]:
        try:
            info = await self.hosts.acall(host, self.layout.sock, "ping", timeout=5)
            return False, list(info.get("waiting", []))
        except HostError:
            pass
        have = await self.hosts.arun(
            host, f"test -f {shlex.quote(self.layout.lib)}/.complete", check=False
        )
        if have.exit != 0:
            raise ConfigError(
                "rollwise's agent is not installed on it (or is another version)",
                where=where(host),
                hint=f"run `rollwise hosts setup -e {self.env}`",
            )
        await self.hosts.arun(host, self.layout.start_agent())
        self.report(host.label, "agent", "started", {})
        deadline = time.monotonic() + AGENT_START_S
        while time.monotonic() < deadline:
            try:
                info = await self.hosts.acall(host, self.layout.sock, "ping", timeout=5)
                return True, list(info.get("waiting", []))
            except HostError:
                await asyncio.sleep(0.1)
        log = await self.hosts.arun(
            host, f"tail -n 5 {shlex.quote(self.layout.env_dir)}/agent.log", check=False
        )
        raise HostError(
            f"its agent did not start within {AGENT_START_S:g} s: {log.tail()}",
            where=where(host),
            hint=f"read {self.layout.env_dir}/agent.log on the host",
        )

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        """Upload the artifact to every host that lacks it (once per host), check its sha256
        and unpack it there; unpack it here too, for migrations and hooks."""
        local = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(local)
        remote = self.layout.artifact(sha256)

        async def place(host: HostConfig) -> str:
            t0 = time.monotonic()
            present = await self.hosts.arun(host, f"test -s {shlex.quote(remote)}", check=False)
            sent = 0
            if present.exit != 0:
                await self.hosts.arun(
                    host, f"umask 077 && mkdir -p {shlex.quote(str(Path(remote).parent))}"
                )
                await self.hosts.put(host, artifact, remote)
                sent = artifact.stat().st_size
            got: str = await self.hosts.acall(
                host, self.layout.sock, "prepare", artifact=remote, sha256=sha256, version=version
            )
            self.report(
                host.label,
                "prepare",
                "ok",
                {
                    "version": version,
                    "uploaded_bytes": sent,
                    "ms": round((time.monotonic() - t0) * 1000),
                },
            )
            return got

        self.hosts.all(place)
        return local

    def endpoints(self, n: int) -> list[Endpoint]:
        """`n` instances on every host, host by host (a rolling batch of `n` is one host)."""

        async def ports(host: HostConfig) -> list[int]:
            got: list[int] = await self.hosts.acall(
                host, self.layout.sock, "ports", n=n, bind=host.listen_host
            )
            return got

        got = self.hosts.all(ports)
        return [Endpoint(h.listen_host, p) for h in self.cfg.hosts for p in got[h.label]]

    def start(
        self,
        name: str,
        version: str,
        endpoint: Endpoint,
        command: str,
        env: dict[str, str | Secret],
    ) -> None:
        host = self._host_of(endpoint)
        # the host's own folder for the app's files, not this machine's
        plain, secrets = split({**env, "ROLLWISE_SHARED_DIR": f"{self.layout.env_dir}/shared"})
        spec = {
            "name": name,
            "version": version,
            "command": command,
            "cwd": self.layout.release(version),
            "port": endpoint.port,
            "host": endpoint.host,
            "env": plain,
            "secrets": secrets,
        }
        self.hosts.call(host, self.layout.sock, "start", spec=spec)
        self.report(host.label, "start", "ok", {"instance": name, "port": endpoint.port})

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        """As on one machine; a failure also shows the tail of the instance's log, read on
        its host."""
        host = self._host_of(endpoint)
        t0 = time.monotonic()
        try:
            wait_ready(
                name,
                endpoint,
                health,
                lambda: next((i for i in self._on(host) if i.name == name), None),
            )
        except HealthCheckFailed as e:
            log = f"{self.layout.env_dir}/logs/{name}.log"
            tail = self.hosts.run(host, f"tail -n 5 {shlex.quote(log)}", check=False).stdout
            self.report(host.label, "health", "failed", {"instance": name})
            e.hint = f"the last lines of {host.label}:{log}:\n{tail.rstrip()}\n{e.hint}"
            raise
        self.report(
            host.label,
            "health",
            "ok",
            {"instance": name, "ms": round((time.monotonic() - t0) * 1000)},
        )

    def logs(self, name: str, endpoint: Endpoint, lines: int) -> str:
        log = f"{self.layout.env_dir}/logs/{name}.log"
        return str(
            self.hosts.run(
                self._host_of(endpoint), f"tail -n {int(lines)} {shlex.quote(log)}", check=False
            ).stdout
        )

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        host = self._host_of(endpoint)
        self.hosts.call(host, self.layout.sock, "stop", name=name, grace=grace, timeout=grace + 30)
        self.report(host.label, "stop", "ok", {"instance": name})

    def instances(self) -> list[InstanceInfo]:
        async def listed(host: HostConfig) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = await self.hosts.acall(host, self.layout.sock, "instances")
            return got

        got = self.hosts.all(listed)
        out = []
        for h in self.cfg.hosts:
            for i in got[h.label]:
                out.append(_info(i, h))
        return out

    # -- helpers ----------------------------------------------------------------------------
    def _on(self, host: HostConfig) -> list[InstanceInfo]:
        return [_info(i, host) for i in self.hosts.call(host, self.layout.sock, "instances")]

    def _host_of(self, endpoint: Endpoint) -> HostConfig:
        try:
            return self.by_bind[endpoint.host]
        except KeyError:
            raise ConfigError(
                f"no host of environment {self.env!r} listens on {endpoint.host}",
                where=f"environments.{self.env}.target.hosts",
                hint="a host was removed while it still runs instances: add it "
                "back, or deploy to move them",
            ) from None


def _info(i: dict[str, Any], host: HostConfig) -> InstanceInfo:
    return InstanceInfo(
        i["name"],
        i["version"],
        host.listen_host,
        i["port"],
        i["alive"],
        i["restarts"],
        f"{host.label}:{i['log']}",
    )


class Connections:
    """An environment's SSH connections, opened on first use and closed at exit."""

    def __init__(self, target: TargetConfig, env: str) -> None:
        self.target, self.env = target, env
        self._hosts: Hosts[HostConfig] | None = None

    @property
    def hosts(self) -> Hosts[HostConfig]:
        if self._hosts is None:
            self._hosts = Hosts(self.target.hosts, self.target.ssh, self.env)
            atexit.register(self.close)  # says goodbye to each host instead of cutting off
        return self._hosts

    def close(self) -> None:
        if self._hosts is not None:
            self._hosts.close()
            self._hosts = None


# the ports a host listens on (or connects from) and its ephemeral range, in one read
PORTS_COMMAND = "cat /proc/sys/net/ipv4/ip_local_port_range /proc/net/tcp /proc/net/tcp6"
LOWEST_PORT = 10_000


def pick_ports(proc_text: str, n: int, rng: random.Random) -> list[int]:
    """`n` ports below the host's ephemeral range that no socket there uses, from what
    PORTS_COMMAND printed."""
    lines = proc_text.splitlines()
    top = int(lines[0].split()[0]) if lines and lines[0].split()[0].isdigit() else 32768
    used = {
        int(f[1].rsplit(":", 1)[1], 16)
        for f in (ln.split() for ln in lines[1:])
        if len(f) > 2 and f[0].endswith(":") and ":" in f[1]
    }
    free = [p for p in range(LOWEST_PORT, top) if p not in used]
    if len(free) < n:
        raise RollwiseError(
            f"only {len(free)} free ports from {LOWEST_PORT} to {top - 1}, {n} needed"
        )
    return rng.sample(free, n)


class SSHRunner:
    """The container CLI on one host, through the environment's SSH connection; its
    containers listen on the host's bind address."""

    remote = True

    def __init__(self, conns: Connections, host: HostConfig, image: ImageConfig) -> None:
        self.conns, self.host, self.image = conns, host, image
        self.label, self.where, self.address = host.label, where(host), host.listen_host
        self._exe: str | None = None

    def name(self) -> str:
        return Path(self.exe()).name

    def exe(self) -> str:
        if self._exe is None:
            names = ["podman", "docker"] if self.image.cli == "auto" else [self.image.cli]
            found = self.conns.hosts.run(
                self.host, " || ".join(f"command -v {n}" for n in names), check=False
            ).stdout.strip()
            if not found:
                raise ConfigError(
                    f"no container CLI: {' or '.join(names)} is not installed",
                    where=self.where,
                    hint="install podman on the host "
                    "(apt-get install -y podman), or run this environment's "
                    "instances as processes (`runtime: process`)",
                )
            self._exe = found.splitlines()[0]
        return self._exe

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = TIMEOUT_S,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: Path | None = None,
    ) -> Proc:
        """Values in `env` go through the command's stdin (`set -a; . /dev/stdin`), so they
        are in no argument list on either machine."""
        command, values = shlex.join([self.exe(), *args]), None
        if env:
            command = f"set -a && . /dev/stdin && set +a && exec {command}"
            values = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
        r = self.conns.hosts.run(
            self.host, command, check=False, timeout=timeout, input=values, stdin=stdin
        )
        if check and r.exit != 0:
            raise HostError(
                f"`{self.name()} {' '.join(args[:3])}` failed: {r.tail()}", where=self.where
            )
        return subprocess.CompletedProcess(list(args), r.exit, r.stdout, r.stderr)

    def ports(self, n: int) -> list[int]:
        text = self.conns.hosts.run(self.host, PORTS_COMMAND, check=False).stdout
        return pick_ports(text, n, random.Random())
