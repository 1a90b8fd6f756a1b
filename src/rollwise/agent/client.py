"""Talk to (and start) the per-environment agent over its unix control socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rollwise.agent import socket_path
from rollwise.errors import ConfigError, RollwiseError
from rollwise.ports import parse_address
from rollwise.secrets import without_secrets

START_TIMEOUT_S = 15.0


class AgentClient:
    def __init__(self, env_dir: Path, env: str) -> None:
        self.env_dir = env_dir
        self.env = env
        self.sock_path = socket_path(env_dir)

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.sock_path))
                s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("agent closed the connection")
                    buf += chunk
        except OSError as e:
            raise RollwiseError(
                f"agent of environment {self.env!r} did not answer {op!r}: {e}",
                where=str(self.sock_path),
                hint="`rollwise status` restarts it",
            ) from e
        reply = json.loads(buf)
        if not reply["ok"]:
            raise RollwiseError(f"agent refused {op!r}: {reply['error']}", where=self.env)
        return reply["result"]

    def alive(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.call("ping", timeout=2.0)
        except RollwiseError:
            return None
        return result

    def ensure(self, listen: str | None) -> dict[str, Any]:
        """A running agent, started detached if needed (it outlives this process), with its
        router on `listen`: a running one whose router listens elsewhere is moved there."""
        info = self.alive()
        if info is not None:
            return self._moved(info, listen)
        self.env_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = self.env_dir / "agent.log"
        os.close(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        cmd = [sys.executable, "-m", "rollwise", "agent", "run", "--env-dir", str(self.env_dir)]
        if listen:
            cmd += ["--listen", listen]
        offset = log.stat().st_size
        # detach through a shell that exits at once: the agent outlives this process and
        # is nobody's child to reap here
        launcher = subprocess.run(
            ["/bin/sh", "-c", 'exec "$@" </dev/null >>"$0" 2>&1 &', str(log), *cmd],
            start_new_session=True,
            env=without_secrets(os.environ),
            check=False,
        )
        if launcher.returncode != 0:
            raise RollwiseError(f"could not start the agent of {self.env!r}", where=str(log))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if (info := self.alive()) is not None:
                return info
            if "agent failed" in (new := _read_from(log, offset)):
                raise self._start_error(new, listen, log)
            time.sleep(0.05)
        raise RollwiseError(
            f"agent of environment {self.env!r} did not start in {START_TIMEOUT_S:.0f} s",
            where=str(log),
        )

    def _moved(self, info: dict[str, Any], listen: str | None) -> dict[str, Any]:
        if (
            not listen
            or info.get("listen") is None
            or tuple(info["listen"]) == parse_address(listen)
        ):
            return info
        try:
            self.call("listen", address=listen)
        except RollwiseError as e:
            raise self._start_error(f"agent failed: {e.message}", listen, self.sock_path) from None
        return {**info, "listen": list(parse_address(listen))}

    def _start_error(self, output: str, listen: str | None, log: Path) -> RollwiseError:
        tail = [ln for ln in output.splitlines() if "agent failed" in ln][-1:] or ["?"]
        if "address already in use" in tail[0].lower() or "errno 98" in tail[0].lower():
            return ConfigError(
                f"router address {listen} of environment {self.env!r} is in use by another process",
                where=f"environments.{self.env}.router.listen",
                hint="stop that process or choose another address in rollwise.yaml; "
                "nothing was changed",
            )
        return RollwiseError(f"agent of environment {self.env!r} failed: {tail[0]}", where=str(log))


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""
