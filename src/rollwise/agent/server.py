"""The agent process: router + supervisor behind a line-delimited JSON control socket.

Its state (instances and weights) is written to `agent.json` after every change, so an
agent that is restarted brings the same instances and weights back.
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

from rollwise.agent.router import Router, serve
from rollwise.agent.supervisor import InstanceSpec, Supervisor

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Agent:
    def __init__(self, env_dir: Path, listen: tuple[str, int] | None) -> None:
        self.env_dir = env_dir
        self.listen = listen
        self.router = Router()
        self.supervisor = Supervisor(env_dir / "logs")
        self.state_file = env_dir / "agent.json"
        self.stopped = asyncio.Event()
        self.ops: dict[str, Handler] = {
            "ping": self.op_ping, "start": self.op_start, "stop": self.op_stop,
            "instances": self.op_instances, "set_weights": self.op_set_weights,
            "weights": self.op_weights, "drain": self.op_drain, "metrics": self.op_metrics,
            "shutdown": self.op_shutdown,
        }

    # -- operations ----------------------------------------------------------------
    async def op_ping(self, _: dict[str, Any]) -> Any:
        return {"pid": os.getpid(), "listen": self.listen}

    async def op_start(self, msg: dict[str, Any]) -> Any:
        spec = InstanceSpec(**msg["spec"])
        inst = await self.supervisor.start(spec)
        self.router.add(spec.name, spec.version, "127.0.0.1", spec.port)
        self.save()
        return inst.status()

    async def op_stop(self, msg: dict[str, Any]) -> Any:
        name = msg["name"]
        self.router.remove(name)
        code = await self.supervisor.stop(name, float(msg.get("grace", 10)))
        self.save()
        return {"exit": code}

    async def op_instances(self, _: dict[str, Any]) -> Any:
        return [i.status() for i in self.supervisor.instances.values()]

    async def op_set_weights(self, msg: dict[str, Any]) -> Any:
        self.router.set_weights({k: int(v) for k, v in msg["weights"].items()})
        self.save()
        return self.router.weights()

    async def op_weights(self, _: dict[str, Any]) -> Any:
        return self.router.weights()

    async def op_drain(self, msg: dict[str, Any]) -> Any:
        return {"inflight": await self.router.drain(msg["name"], float(msg.get("timeout", 15)))}

    async def op_metrics(self, _: dict[str, Any]) -> Any:
        inflight = {u.name: u.inflight for u in self.router.upstreams.values()}
        return {"versions": {v: s.as_dict() for v, s in self.router.stats.items()},
                "inflight": inflight}

    async def op_shutdown(self, msg: dict[str, Any]) -> Any:
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return {"stopping": True}

    # -- persistence ---------------------------------------------------------------
    def save(self) -> None:
        state = {"instances": [i.spec.as_dict() for i in self.supervisor.instances.values()],
                 "weights": self.router.weights()}
        tmp = self.state_file.with_suffix(".tmp")
        # instance environments carry secrets: readable by the owner only
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state))
        tmp.replace(self.state_file)

    async def restore(self) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        for spec in state["instances"]:
            await self.op_start({"spec": spec})
        self.router.set_weights({k: v for k, v in state["weights"].items()
                                 if k in self.router.upstreams})

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
        sock = self.env_dir / "agent.sock"
        sock.unlink(missing_ok=True)
        servers = []
        if self.listen:
            servers.append(await serve(self.router, *self.listen))
        await self.restore()
        servers.append(await asyncio.start_unix_server(self.control, str(sock)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        (self.env_dir / "agent.pid").write_text(str(os.getpid()))
        print(f"agent {os.getpid()} ready", flush=True)
        await self.stopped.wait()
        for s in servers:
            s.close()
        await self.supervisor.stop_all(10)
        sock.unlink(missing_ok=True)


def main(env_dir: str, listen: str | None) -> None:
    addr = None
    if listen:
        host, port = listen.rsplit(":", 1)
        addr = (host.strip("[]"), int(port))
    agent = Agent(Path(env_dir), addr)
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
