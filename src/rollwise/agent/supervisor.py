"""Runs app instances as supervised process groups: restart on crash, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollwise.errors import RollwiseError
from rollwise.ports import claim, free_ports

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5


@dataclass
class InstanceSpec:
    name: str
    version: str
    command: str
    cwd: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # in memory only, never written
    host: str = "127.0.0.1"  # the address the instance listens on
    ports: list[int] | None = None  # [first, last] it may move to (target.ports)

    def record(self) -> dict[str, Any]:
        """What may be written to disk: the secrets by name, never their values."""
        return {
            "name": self.name,
            "version": self.version,
            "command": self.command,
            "cwd": self.cwd,
            "port": self.port,
            "host": self.host,
            "env": dict(self.env),
            "ports": self.ports,
            "secret_names": sorted(self.secrets),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], secrets: dict[str, str]) -> InstanceSpec:
        """The spec `record()` wrote, with the values of its secrets given again."""
        missing = sorted(set(record.get("secret_names", ())) - set(secrets))
        if missing:
            raise ValueError(
                f"no value given for secret(s) {', '.join(missing)} of instance {record['name']}"
            )
        fields = {k: v for k, v in record.items() if k != "secret_names"}
        return cls(**fields, secrets={n: secrets[n] for n in record.get("secret_names", ())})


@dataclass
class Instance:
    spec: InstanceSpec
    log: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    moves: int = 0  # to another port, when its own was taken before it bound it
    stopping: bool = False
    started_at: float = 0.0
    last_exit: int | None = None
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        alive = self.proc is not None and self.proc.returncode is None
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "port": self.spec.port,
            "pid": self.proc.pid if self.proc else None,
            "alive": alive,
            "restarts": self.restarts,
            "moves": self.moves,
            "last_exit": self.last_exit,
            "log": str(self.log),
        }


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, log_dir: Path, moved: Callable[[InstanceSpec], None] | None = None) -> None:
        self.log_dir = log_dir
        self.instances: dict[str, Instance] = {}
        self.moved = moved  # told when an instance moves to another port

    async def start(self, spec: InstanceSpec) -> Instance:
        inst = self.instances.get(spec.name)
        if inst and not inst.stopping:
            return inst  # idempotent: already supervised
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        inst = Instance(spec, self.log_dir / f"{spec.name}.log")
        self.instances[spec.name] = inst
        await self._spawn(inst)
        inst.task = asyncio.create_task(self._watch(inst))
        return inst

    async def _spawn(self, inst: Instance) -> None:
        spec = inst.spec
        env = {**os.environ, **spec.env, **spec.secrets, "PORT": str(spec.port), "HOST": spec.host}
        command = spec.command.replace("{port}", str(spec.port)).replace("{host}", spec.host)
        fd = os.open(inst.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log:
            inst.proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                f"exec {command}",
                cwd=inst.spec.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        inst.started_at = time.monotonic()

    async def _watch(self, inst: Instance) -> None:
        while inst.proc is not None:
            inst.last_exit = await inst.proc.wait()
            if inst.stopping:
                return
            if self._move(inst):  # its port was taken before it bound it: not a crash
                await self._spawn(inst)
                continue
            if inst.restarts >= MAX_RESTARTS:
                return
            inst.restarts += 1
            await asyncio.sleep(min(5.0, 0.2 * 2**inst.restarts))
            if inst.stopping:
                return
            await self._spawn(inst)

    def _move(self, inst: Instance) -> bool:
        """After an exit: when another process now holds the instance's port (taken between
        choosing it and the instance binding it), give the instance a free one."""
        spec = inst.spec
        if inst.moves >= MAX_RESTARTS or claim([spec.port], 1, spec.host):
            return False
        span = range(spec.ports[0], spec.ports[1] + 1) if spec.ports else None
        try:
            spec.port = free_ports(1, spec.host, span)[0]
        except RollwiseError:
            return False
        inst.moves += 1
        if self.moved is not None:
            self.moved(spec)
        return True

    async def stop(self, name: str, grace: float) -> int | None:
        inst = self.instances.get(name)
        if inst is None:
            return None
        inst.stopping = True
        proc = inst.proc
        if proc is not None and proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if inst.task:
            inst.task.cancel()
        self.instances.pop(name, None)
        return proc.returncode if proc else None

    async def stop_all(self, grace: float) -> None:
        await asyncio.gather(*(self.stop(n, grace) for n in list(self.instances)))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
