"""Container target: each instance is a container of its release's image, run through podman
or docker on this machine and published on a loopback port the target hands out; the local
agent's embedded router is the front, as for processes.

An instance listens on the same port inside its container as outside (`{port}` and `$PORT`
are that port), so `run.command` is the same for a process and a container. Environment
variables and secrets reach the container by name only (`-e NAME`, the value in the CLI's
environment): never in its arguments, never on disk. Containers carry labels (app,
environment, instance, version, port) and are found by them."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from rollwise import artifacts, containers
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig, ImageConfig
from rollwise.domain import Endpoint
from rollwise.errors import HealthCheckFailed, NotFound
from rollwise.ports import free_ports
from rollwise.private import close_tree
from rollwise.secrets import Secret
from rollwise.targets.base import EnvFor, InstanceInfo
from rollwise.targets.common import wait_ready

HOST = "127.0.0.1"
LABEL = "io.rollwise"


class ContainerTarget:
    type = "container"

    def __init__(self, image: ImageConfig, app: str, env_dir: Path, env: str,
                 listen: str | None, env_for: EnvFor) -> None:
        self.image, self.app, self.env_dir, self.env = image, app, env_dir, env
        self.agent = AgentClient(env_dir, env)  # its router is the front
        self.listen = listen
        self.env_for = env_for
        self._exe: str | None = None

    @property
    def exe(self) -> str:
        if self._exe is None:
            self._exe = containers.cli(self.image)
        return self._exe

    def ensure(self) -> bool:
        self.exe  # noqa: B018  (a missing CLI is named before anything moves)
        started = self.agent.alive() is None
        self.agent.ensure(self.listen)
        return started

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        release = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(release)
        meta = containers.read(release, version)
        if containers.image_id(self.exe, meta["id"]) is None and \
                (why := containers.pull(self.exe, self.image, meta)) is not None:
            raise NotFound(
                f"image {meta['id'][:19]} of release {version} is not on this machine "
                f"and could not be pulled ({why})", where=f"release {version}",
                hint="load or pull that image (its ID must match: a tag that moved names "
                "another image); nothing was switched")
        return release

    def endpoints(self, n: int) -> list[Endpoint]:
        return [Endpoint(HOST, port) for port in free_ports(n)]

    def container(self, name: str) -> str:
        return f"rollwise-{self.app}-{self.env}-{name}"

    def start(self, name: str, version: str, endpoint: Endpoint, command: str,
              env: dict[str, str | Secret]) -> None:
        cname = self.container(name)
        existing = self._inspect(cname)
        if existing and existing["State"]["Running"]:
            return  # idempotent by name
        if existing:
            containers.run(self.exe, "rm", "-f", cname, timeout=60)
        meta = containers.read(self.env_dir / "releases" / version, version)
        values = {k: v.reveal() if isinstance(v, Secret) else v for k, v in env.items()}
        values |= {"PORT": str(endpoint.port), "HOST": "0.0.0.0"}
        labels = {"app": self.app, "env": self.env, "instance": name, "version": version,
                  "port": str(endpoint.port)}
        args = ["run", "-d", "--name", cname,
                "-p", f"{endpoint.host}:{endpoint.port}:{endpoint.port}",
                *[a for k, v in labels.items() for a in ("--label", f"{LABEL}.{k}={v}")],
                *[a for k in sorted(values) for a in ("-e", k)],  # values come by name
                *(["--memory", self.image.memory] if self.image.memory else []),
                *(["--cpus", str(self.image.cpus)] if self.image.cpus else []),
                str(meta["id"]),
                *shlex.split(command.replace("{port}", str(endpoint.port))
                             .replace("{host}", "0.0.0.0"))]
        containers.run(self.exe, *args, timeout=120, env={**_base_env(), **values})

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        try:
            wait_ready(name, endpoint, health,
                       lambda: next((i for i in self.instances() if i.name == name), None))
        except HealthCheckFailed as e:
            tail = self.logs(name, lines=12)
            raise HealthCheckFailed(e.message + (f"\n{tail}" if tail else ""),
                                    where=f"container {self.container(name)}",
                                    hint=e.hint) from None

    def logs(self, name: str, endpoint: Endpoint | None = None, lines: int = 50) -> str:
        proc = containers.run(self.exe, "logs", "--tail", str(lines), self.container(name),
                              check=False, timeout=30)
        return (proc.stdout + proc.stderr).strip()

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        cname = self.container(name)
        if self._inspect(cname) is None:
            return
        t = str(int(min(grace, self.image.stop_timeout_s)))
        containers.run(self.exe, "stop", "-t", t, cname, check=False, timeout=grace + 60)
        containers.run(self.exe, "rm", "-f", cname, check=False, timeout=60)

    def instances(self) -> list[InstanceInfo]:
        proc = containers.run(self.exe, "ps", "-a", "--filter", f"label={LABEL}.app={self.app}",
                              "--filter", f"label={LABEL}.env={self.env}", "--format", "json",
                              timeout=60)
        rows: list[dict[str, Any]] = _rows(proc.stdout)
        out = []
        for r in rows:
            labels = r.get("Labels") or {}
            running = str(r.get("State", "")).lower() == "running"
            out.append(InstanceInfo(
                labels.get(f"{LABEL}.instance", ""), labels.get(f"{LABEL}.version", ""), HOST,
                int(labels.get(f"{LABEL}.port", 0)), running, 0 if running else 1,
                f"`{Path(self.exe).name} logs {_name(r)}`"))
        return out

    def _inspect(self, cname: str) -> dict[str, Any] | None:
        proc = containers.run(self.exe, "container", "inspect", cname, check=False, timeout=60)
        if proc.returncode != 0:
            return None
        got = json.loads(proc.stdout or "[]")
        return got[0] if got else None


def _rows(text: str) -> list[dict[str, Any]]:
    """`ps --format json`: one JSON array (podman) or one object per line (docker)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        rows: list[dict[str, Any]] = json.loads(text)
        return rows
    rows = [json.loads(line) for line in text.splitlines()]
    for r in rows:  # docker: Labels as "k=v,k=v"
        if isinstance(r.get("Labels"), str):
            r["Labels"] = dict(kv.split("=", 1) for kv in r["Labels"].split(",") if "=" in kv)
    return rows


def _name(row: dict[str, Any]) -> str:
    names = row.get("Names")
    return str(names[0] if isinstance(names, list) else names)


def _base_env() -> dict[str, str]:
    """What the CLI itself needs from this process's environment (it finds its storage and
    configuration by these), without the rest."""
    keep = ("PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
            "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF",
            "DOCKER_HOST", "DOCKER_CONFIG", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}
