"""The agent process: router + supervisor behind a line-delimited JSON control socket.

Its state (instances and weights) is written to `agent.json` after every change, so an
agent that is restarted brings the same instances and weights back. Secret values are never
part of it: they come over the control socket and stay in this process's memory. The file
names them, and a restored instance that needs them waits (in the router, with its weight)
until the controller that restarted the agent gives their values again (`resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rollwise import __version__, artifacts
from rollwise.agent import socket_path
from rollwise.agent.router import Router
from rollwise.agent.supervisor import InstanceSpec, Supervisor
from rollwise.ports import free_ports, parse_address
from rollwise.private import close_tree, replace_private

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Agent:
    def __init__(self, env_dir: Path, listen: tuple[str, int] | None) -> None:
        self.env_dir = env_dir
        self.listen = listen
        self.listener: asyncio.Server | None = None
        self.router = Router()
        self.supervisor = Supervisor(env_dir / "logs", self._moved)
        self.state_file = env_dir / "agent.json"
        # instances restored from agent.json whose secrets were not given again yet
        self.waiting: dict[str, dict[str, Any]] = {}
        # backends the router sends to that this agent does not run (a fleet's hosts)
        self.routes: dict[str, dict[str, Any]] = {}
        self.stopped = asyncio.Event()
        self.ops: dict[str, Handler] = {
            "ping": self.op_ping,
            "start": self.op_start,
            "stop": self.op_stop,
            "instances": self.op_instances,
            "set_weights": self.op_set_weights,
            "weights": self.op_weights,
            "drain": self.op_drain,
            "metrics": self.op_metrics,
            "shutdown": self.op_shutdown,
            "listen": self.op_listen,
            "resume": self.op_resume,
            "prepare": self.op_prepare,
            "ports": self.op_ports,
            "route": self.op_route,
            "unroute": self.op_unroute,
        }

    # -- operations ----------------------------------------------------------------
    async def op_ping(self, _: dict[str, Any]) -> Any:
        waiting = [
            {"name": r["name"], "version": r["version"], "secrets": r["secret_names"]}
            for r in self.waiting.values()
        ]
        return {
            "pid": os.getpid(),
            "listen": self.listen,
            "waiting": waiting,
            "version": __version__,
        }

    async def op_prepare(self, msg: dict[str, Any]) -> Any:
        """Unpack an uploaded artifact into `releases/<version>` once its sha256 matches
        (a host's copy of the release, on a fleet)."""
        artifact, sha256 = Path(msg["artifact"]), str(msg["sha256"])
        release = self.env_dir / "releases" / str(msg["version"])

        def unpack() -> str:
            if artifacts.sha256_file(artifact) != sha256:
                raise ValueError(
                    f"{artifact} does not have sha256 {sha256}: the upload was cut or altered"
                )
            close_tree(artifacts.unpack(artifact, sha256, release))
            return str(release)

        return await asyncio.to_thread(unpack)

    async def op_route(self, msg: dict[str, Any]) -> Any:
        """Route to instances another agent runs (on a fleet host): each backend is
        `{name, version, host, port}`; this agent's own instances are routed already."""
        for b in msg["backends"]:
            if b["name"] in self.supervisor.instances or b["name"] in self.waiting:
                continue
            self.routes[b["name"]] = {k: b[k] for k in ("name", "version", "host", "port")}
            self.router.add(b["name"], b["version"], b["host"], int(b["port"]))
        self.save()
        return sorted(self.routes)

    async def op_unroute(self, msg: dict[str, Any]) -> Any:
        if self.routes.pop(msg["name"], None) is not None:
            self.router.remove(msg["name"])
            self.save()
        return sorted(self.routes)

    async def op_ports(self, msg: dict[str, Any]) -> Any:
        return free_ports(int(msg["n"]), str(msg.get("bind", "127.0.0.1")))

    async def op_start(self, msg: dict[str, Any]) -> Any:
        return await self._start(InstanceSpec(**msg["spec"]))

    async def op_resume(self, msg: dict[str, Any]) -> Any:
        """Start a restored instance with the values of its secrets."""
        name = msg["name"]
        if (inst := self.supervisor.instances.get(name)) is not None:
            return inst.status()  # already resumed
        if name not in self.waiting:
            raise ValueError(f"no instance {name} waits for its secrets")
        return await self._start(InstanceSpec.from_record(self.waiting[name], msg["secrets"]))

    async def _start(self, spec: InstanceSpec) -> dict[str, Any]:
        inst = await self.supervisor.start(spec)
        self.waiting.pop(spec.name, None)
        self.router.add(spec.name, spec.version, spec.host, spec.port)
        self.save()
        return inst.status()

    def _moved(self, spec: InstanceSpec) -> None:
        """An instance moved to another port (its own was taken before it bound it): the
        router sends to the new one."""
        self.router.add(spec.name, spec.version, spec.host, spec.port)
        self.save()

    async def op_stop(self, msg: dict[str, Any]) -> Any:
        name = msg["name"]
        self.waiting.pop(name, None)
        self.router.remove(name)
        code = await self.supervisor.stop(name, float(msg.get("grace", 10)))
        self.save()
        return {"exit": code}

    async def op_instances(self, _: dict[str, Any]) -> Any:
        return [
            *(i.status() for i in self.supervisor.instances.values()),
            *(self._waiting_status(r) for r in self.waiting.values()),
        ]

    def _waiting_status(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": record["name"],
            "version": record["version"],
            "port": record["port"],
            "pid": None,
            "alive": False,
            "restarts": 0,
            "last_exit": None,
            "log": str(self.supervisor.log_dir / f"{record['name']}.log"),
            "waiting_for": record["secret_names"],
        }

    async def op_set_weights(self, msg: dict[str, Any]) -> Any:
        if "router" in msg:  # sticky and header rules, limits: applied with the weights
            self.router.configure(msg["router"])
        self.router.set_weights({k: int(v) for k, v in msg["weights"].items()})
        self.save()
        return self.router.weights()

    async def op_weights(self, _: dict[str, Any]) -> Any:
        return self.router.weights()

    async def op_drain(self, msg: dict[str, Any]) -> Any:
        return {"inflight": await self.router.drain(msg["name"], float(msg.get("timeout", 15)))}

    async def op_metrics(self, _: dict[str, Any]) -> Any:
        inflight = {u.name: u.inflight for u in self.router.upstreams.values()}
        return {
            "versions": {v: s.as_dict() for v, s in self.router.stats.items()},
            "inflight": inflight,
        }

    async def op_listen(self, msg: dict[str, Any]) -> Any:
        """Move the router to another address: the new one is bound first (an address in use
        changes nothing), then the old one stops accepting; open connections finish."""
        addr = parse_address(msg["address"])
        from rollwise.agent.proxy import serve  # httptools: only where a router listens

        new = await serve(self.router, *addr)
        if self.listener is not None:
            self.listener.close()
        self.listener, self.listen = new, addr
        return {"listen": addr}

    async def op_shutdown(self, msg: dict[str, Any]) -> Any:
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return {"stopping": True}

    # -- persistence ---------------------------------------------------------------
    def save(self) -> None:
        records = [i.spec.record() for i in self.supervisor.instances.values()]
        state = {
            "instances": [*records, *self.waiting.values()],
            "routes": list(self.routes.values()),
            "weights": self.router.weights(),
            "router": self.router.settings,
        }
        # commands and environments, secrets by name only: readable by the owner only
        replace_private(self.state_file, json.dumps(state).encode())

    async def restore(self) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        self.router.configure(state.get("router", {}))
        for record in state["instances"]:  # all waiting first, so that each save keeps all
            record.setdefault("secret_names", [])  # a file an older version wrote
            self.waiting[record["name"]] = record
            self.router.add(
                record["name"], record["version"], record.get("host", "127.0.0.1"), record["port"]
            )
        for r in state.get("routes", []):
            self.routes[r["name"]] = r
            self.router.add(r["name"], r["version"], r["host"], int(r["port"]))
        for record in list(self.waiting.values()):
            if not record["secret_names"]:
                await self._start(InstanceSpec.from_record(record, {}))
        self.router.set_weights(
            {k: v for k, v in state["weights"].items() if k in self.router.upstreams}
        )

    # -- control socket --------------------------------------------------------------
    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                msg = json.loads(line)
                try:
                    reply = {"ok": True, "result": await self.ops[msg["op"]](msg)}
                except Exception as e:  # reported to the caller, agent keeps running
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        writer.close()

    async def run(self) -> None:
        sock = socket_path(self.env_dir)
        sock.unlink(missing_ok=True)
        if self.listen:
            from rollwise.agent.proxy import serve

            self.listener = await serve(self.router, *self.listen)
        await self.restore()
        control = await asyncio.start_unix_server(self.control, str(sock))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        (self.env_dir / "agent.pid").write_text(str(os.getpid()))
        print(f"agent {os.getpid()} ready", flush=True)
        await self.stopped.wait()
        for s in (self.listener, control):
            if s is not None:
                s.close()
        await self.supervisor.stop_all(10)
        sock.unlink(missing_ok=True)


def main(env_dir: str, listen: str | None) -> None:
    os.umask(0o077)  # logs, state and the instances' files: their owner's alone
    Path(env_dir).mkdir(mode=0o700, parents=True, exist_ok=True)  # first start by a service
    agent = Agent(Path(env_dir), parse_address(listen) if listen else None)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(agent.run())
    except OSError as e:
        print(f"agent failed: {e}", file=sys.stderr, flush=True)
        sys.exit(3)
