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

from rollwise.errors import ConfigError, RollwiseError

START_TIMEOUT_S = 15.0


class AgentClient:
    def __init__(self, env_dir: Path, env: str) -> None:
        self.env_dir = env_dir
        self.env = env
        self.sock_path = env_dir / "agent.sock"

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
            raise RollwiseError(f"agent of environment {self.env!r} did not answer {op!r}: {e}",
                                where=str(self.sock_path),
                                hint="`rollwise status` restarts it") from e
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
        """A running agent, started detached if needed (it outlives this process)."""
        info = self.alive()
        if info is not None:
            return info
        self.env_dir.mkdir(parents=True, exist_ok=True)
        log = self.env_dir / "agent.log"
        cmd = [sys.executable, "-m", "rollwise", "agent", "run", "--env-dir", str(self.env_dir)]
        if listen:
            cmd += ["--listen", listen]
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, env=os.environ.copy())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if (info := self.alive()) is not None:
                return info
            if proc.poll() is not None:
                raise self._start_error(log, listen)
            time.sleep(0.05)
        proc.kill()
        raise RollwiseError(f"agent of environment {self.env!r} did not start in "
                            f"{START_TIMEOUT_S:.0f} s", where=str(log))

    def _start_error(self, log: Path, listen: str | None) -> RollwiseError:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        if "address already in use" in tail[0].lower():
            return ConfigError(
                f"router address {listen} of environment {self.env!r} is in use by another "
                "process",
                where=f"environments.{self.env}.router.listen",
                hint="stop that process or choose another address in rollwise.yaml; "
                "nothing was changed",
            )
        return RollwiseError(f"agent of environment {self.env!r} failed: {tail[0]}",
                             where=str(log))
