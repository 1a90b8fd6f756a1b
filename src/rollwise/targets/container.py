"""Container target: each instance is a container of its release's image, run through podman
or docker (a `containers.Runner`) on this machine, or on each SSH host of a fleet
(`target: {type: ssh, runtime: container}`); the local agent's embedded router is the front,
as for processes.

On this machine a container is published on a loopback port the target hands out; on an SSH
host it shares the host's network (`--network host`) and listens on the host's bind address,
which the router reaches. An instance listens on the same port inside its container as
outside (`{port}` and `$PORT` are that port), so `run.command` is the same for a process and
a container. Environment variables and secrets reach the container by name only (`-e NAME`,
the value in the CLI's environment): never in its arguments, never on disk. Containers carry
labels (app, environment, instance, version, port, host) and are found by them.

A host without the release's image pulls it by its registry digest (`image.push`), or is
sent it: `podman save` here, streamed over SSH into `podman load` there."""

from __future__ import annotations

import json
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rollwise import artifacts, containers
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HealthConfig, ImageConfig
from rollwise.containers import Runner
from rollwise.domain import Endpoint
from rollwise.errors import ConfigError, HealthCheckFailed, NotFound, RollwiseError
from rollwise.private import close_tree
from rollwise.secrets import Secret
from rollwise.targets.base import EnvFor, HostReport, InstanceInfo
from rollwise.targets.common import wait_ready

LABEL = "io.rollwise"
T = TypeVar("T")


@dataclass(frozen=True)
class ContainerInfo(InstanceInfo):
    image: str  # the ID of the image the container runs


def run_argv(
    cname: str,
    image_id: str,
    command: str,
    endpoint: Endpoint,
    labels: Mapping[str, str],
    env_names: Sequence[str],
    image: ImageConfig,
    host_network: bool,
) -> list[str]:
    """`<cli> run` for one instance. Published on `endpoint` (listening on all the
    container's interfaces), or in the host's network listening on `endpoint.host`."""
    listen = endpoint.host if host_network else "0.0.0.0"
    net = (
        ["--network", "host"]
        if host_network
        else ["-p", f"{endpoint.host}:{endpoint.port}:{endpoint.port}"]
    )
    return [
        "run",
        "-d",
        "--name",
        cname,
        *net,
        *[a for k, v in labels.items() for a in ("--label", f"{LABEL}.{k}={v}")],
        *[a for k in sorted(env_names) for a in ("-e", k)],  # values come by name
        *(["--memory", image.memory] if image.memory else []),
        *(["--cpus", str(image.cpus)] if image.cpus else []),
        image_id,
        *shlex.split(command.replace("{port}", str(endpoint.port)).replace("{host}", listen)),
    ]


class ContainerTarget:
    type = "container"

    def __init__(
        self,
        image: ImageConfig,
        app: str,
        env_dir: Path,
        env: str,
        listen: str | None,
        env_for: EnvFor,
        runners: Sequence[Runner] = (),
        report: HostReport = lambda *_: None,
    ) -> None:
        self.image, self.app, self.env_dir, self.env = image, app, env_dir, env
        self.agent = AgentClient(env_dir, env)  # its router is the front
        self.listen = listen
        self.env_for = env_for
        self.local = containers.Local(image)  # saves images to send to hosts
        self.runners = {r.address: r for r in runners or [self.local]}
        self.report = report

    def ensure(self) -> bool:
        self._each(lambda r: r.name())  # a missing CLI or host is named before anything moves
        started = self.agent.alive() is None
        self.agent.ensure(self.listen)
        return started

    def prepare(self, artifact: Path, sha256: str, version: str) -> Path:
        """Unpack the release here (for migrations and hooks); make sure each machine that
        runs its containers has its image, by ID."""
        release = artifacts.unpack(artifact, sha256, self.env_dir / "releases" / version)
        close_tree(release)
        meta = containers.read(release, version)
        with tempfile.TemporaryDirectory(prefix="rollwise-image-") as tmp:
            archive = _Archive(self.local, str(meta["id"]), Path(tmp) / "image.tar")
            self._each(lambda r: self._bring(r, meta, version, archive))
        return release

    def _bring(self, runner: Runner, meta: dict[str, Any], version: str, archive: _Archive) -> None:
        t0, sent, how = time.monotonic(), 0, "present"
        if containers.image_id(runner, meta["id"]) is None:
            if runner.remote and not self.image.push:
                sent, how = self._send(runner, archive), "loaded"
            elif (why := containers.pull(runner, self.image, meta)) is not None:
                raise NotFound(
                    f"image {meta['id'][:19]} of release {version} is not on {runner.where} "
                    f"and could not be pulled ({why})",
                    where=f"release {version}",
                    hint="load or pull that image (its ID must match: a tag that moved names "
                    "another image); nothing was switched",
                )
            else:
                how = "pulled"
        self.report(
            runner.label,
            "prepare",
            "ok",
            {
                "version": version,
                "image": how,
                "sent_bytes": sent,
                "ms": round((time.monotonic() - t0) * 1000),
            },
        )

    def _send(self, runner: Runner, archive: _Archive) -> int:
        """Stream the image (saved here once per prepare) into the CLI there; bytes sent."""
        path = archive.path()
        runner.run(["load"], stdin=path)
        if containers.image_id(runner, archive.image) is None:
            raise RollwiseError(
                f"`{runner.name()} load` did not produce image {archive.image[:19]}",
                where=runner.where,
                hint="is its CLI the same kind (podman, docker) as here?",
            )
        return path.stat().st_size

    def endpoints(self, n: int) -> list[Endpoint]:
        """`n` instances where each runner runs (on a fleet: on every host, host by host)."""
        got = self._each(lambda r: r.ports(n))
        return [Endpoint(r.address, p) for r in self.runners.values() for p in got[r.label]]

    def container(self, name: str) -> str:
        return f"rollwise-{self.app}-{self.env}-{name}"

    def start(
        self,
        name: str,
        version: str,
        endpoint: Endpoint,
        command: str,
        env: dict[str, str | Secret],
    ) -> None:
        runner, cname = self._at(endpoint), self.container(name)
        existing = self._inspect(runner, cname)
        if existing and existing["State"]["Running"]:
            return  # idempotent by name
        if existing:
            runner.run(["rm", "-f", cname], timeout=60)
        meta = containers.read(self.env_dir / "releases" / version, version)
        values = {k: v.reveal() if isinstance(v, Secret) else v for k, v in env.items()}
        values |= {
            "PORT": str(endpoint.port),
            "HOST": endpoint.host if runner.remote else "0.0.0.0",
        }
        labels = {
            "app": self.app,
            "env": self.env,
            "instance": name,
            "version": version,
            "port": str(endpoint.port),
            "host": runner.label,
        }
        runner.run(
            run_argv(
                cname,
                str(meta["id"]),
                command,
                endpoint,
                labels,
                list(values),
                self.image,
                host_network=runner.remote,
            ),
            timeout=120,
            env=values,
        )
        self.report(runner.label, "start", "ok", {"instance": name, "port": endpoint.port})

    def wait_ready(self, name: str, endpoint: Endpoint, health: HealthConfig) -> None:
        runner = self._at(endpoint)
        try:
            wait_ready(
                name,
                endpoint,
                health,
                lambda: next((i for i in self._listed(runner) if i.name == name), None),
            )
        except HealthCheckFailed as e:
            self.report(runner.label, "health", "failed", {"instance": name})
            tail = self.logs(name, endpoint, lines=12)
            raise HealthCheckFailed(
                e.message + (f"\n{tail}" if tail else ""),
                where=f"container {self.container(name)} on {runner.where}",
                hint=e.hint,
            ) from None
        self.report(runner.label, "health", "ok", {"instance": name})

    def logs(self, name: str, endpoint: Endpoint, lines: int = 50) -> str:
        proc = self._at(endpoint).run(
            ["logs", "--tail", str(lines), self.container(name)], check=False, timeout=30
        )
        return (proc.stdout + proc.stderr).strip()

    def stop(self, name: str, endpoint: Endpoint, grace: float) -> None:
        runner, cname = self._at(endpoint), self.container(name)
        if self._inspect(runner, cname) is None:
            return
        t = str(int(min(grace, self.image.stop_timeout_s)))
        runner.run(["stop", "-t", t, cname], check=False, timeout=grace + 60)
        runner.run(["rm", "-f", cname], check=False, timeout=60)
        self.report(runner.label, "stop", "ok", {"instance": name})

    def instances(self) -> list[InstanceInfo]:
        got = self._each(self._listed)
        return [i for r in self.runners.values() for i in got[r.label]]

    # -- helpers ----------------------------------------------------------------------------
    def _listed(self, runner: Runner) -> list[InstanceInfo]:
        """The environment's containers where `runner` runs (by label: machines that share
        one container storage still list only their own)."""
        proc = runner.run(
            [
                "ps",
                "-a",
                "--filter",
                f"label={LABEL}.app={self.app}",
                "--filter",
                f"label={LABEL}.env={self.env}",
                "--format",
                "json",
            ],
            timeout=60,
        )
        out: list[InstanceInfo] = []
        for r in _rows(proc.stdout):
            labels = r.get("Labels") or {}
            if labels.get(f"{LABEL}.host", runner.label) != runner.label:
                continue
            running = str(r.get("State", "")).lower() == "running"
            out.append(
                ContainerInfo(
                    labels.get(f"{LABEL}.instance", ""),
                    labels.get(f"{LABEL}.version", ""),
                    runner.address,
                    int(labels.get(f"{LABEL}.port", 0)),
                    running,
                    0 if running else 1,
                    f"`{runner.name()} logs {_name(r)}` on {runner.where}",
                    _image(r),
                )
            )
        return out

    def _inspect(self, runner: Runner, cname: str) -> dict[str, Any] | None:
        proc = runner.run(["container", "inspect", cname], check=False, timeout=60)
        if proc.returncode != 0:
            return None
        got = json.loads(proc.stdout or "[]")
        return got[0] if got else None

    def _at(self, endpoint: Endpoint) -> Runner:
        try:
            return self.runners[endpoint.host]
        except KeyError:
            raise ConfigError(
                f"no host of environment {self.env!r} listens on {endpoint.host}",
                where=f"environments.{self.env}.target",
                hint="a host was removed while it still runs containers: add "
                "it back, or deploy to move them",
            ) from None

    def _each(self, fn: Callable[[Runner], T]) -> dict[str, T]:
        """`fn` on every runner at once; per runner's label its result. The first error is
        raised after all have finished, naming the others that failed."""
        runners = list(self.runners.values())
        if len(runners) == 1:
            return {runners[0].label: fn(runners[0])}

        def one(r: Runner) -> T | RollwiseError:
            try:
                return fn(r)
            except RollwiseError as e:
                return e

        with ThreadPoolExecutor(min(len(runners), 32), "rollwise-hosts") as pool:
            got = dict(zip((r.label for r in runners), pool.map(one, runners), strict=True))
        errors = [e for e in got.values() if isinstance(e, RollwiseError)]
        if errors:
            if len(errors) > 1:
                errors[0].hint = (errors[0].hint + "; " if errors[0].hint else "") + (
                    f"{len(errors) - 1} more host(s) failed: "
                    + ", ".join(e.where for e in errors[1:])
                )
            raise errors[0]
        return {k: v for k, v in got.items() if not isinstance(v, RollwiseError)}


class _Archive:
    """The release's image saved on this machine once, the first time a host needs it."""

    def __init__(self, local: Runner, image: str, path: Path) -> None:
        self.local, self.image, self._path = local, image, path
        self.lock = threading.Lock()

    def path(self) -> Path:
        with self.lock:
            if not self._path.exists():
                if containers.image_id(self.local, self.image) is None:
                    raise NotFound(
                        f"image {self.image[:19]} is not on this machine, so it "
                        "cannot be sent to the hosts",
                        where="image",
                        hint="build or load it here again, or set `image.push` so "
                        "hosts pull it from a registry; nothing was switched",
                    )
                self.local.run(["save", "-o", str(self._path), self.image])
        return self._path


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


def _image(row: dict[str, Any]) -> str:
    """The image ID a `ps` row runs (podman: `ImageID`; docker names only `Image`)."""
    got = str(row.get("ImageID") or row.get("Image") or "")
    return got if got.startswith("sha256:") or ":" in got else f"sha256:{got}"
