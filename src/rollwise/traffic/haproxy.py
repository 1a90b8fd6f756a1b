"""HAProxy driver: weights through the runtime API on the admin socket (no reload, so no
connection is dropped). rollwise points the backend's server slots at instances."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from rollwise.errors import RollwiseError
from rollwise.traffic.backends import BackendMap
from rollwise.traffic.base import Backend

WEIGHT = 100


def commands_set_weights(backend: str, slot_weights: dict[str, int]) -> str:
    """One runtime-API line that applies every weight in order: raises first, then lowers."""
    order = sorted(slot_weights.items(), key=lambda kv: -kv[1])
    return "; ".join(f"set server {backend}/{slot} weight {w}" for slot, w in order)


def commands_point(backend: str, slot: str, host: str, port: int) -> str:
    return (f"set server {backend}/{slot} addr {host} port {port}; "
            f"set server {backend}/{slot} weight 0; set server {backend}/{slot} state ready")


class HAProxyRouter:
    type = "haproxy"

    def __init__(self, admin: str, backend: str, slots: list[str], env_dir: Path) -> None:
        self.admin, self.backend, self.slots = admin, backend, slots
        self.map = BackendMap(env_dir / "haproxy-backends.json")

    def run(self, line: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(self.admin)
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError as e:
            raise RollwiseError(f"HAProxy admin socket did not answer: {e}", where=self.admin,
                                hint="check `stats socket ... level admin` in haproxy.cfg and "
                                "router.admin in rollwise.yaml") from e
        out = b"".join(chunks).decode()
        bad = [ln for ln in out.splitlines() if ln.startswith(("No such", "Unknown", "Require"))]
        if bad:
            raise RollwiseError(f"HAProxy refused `{line}`: {bad[0]}", where=self.admin)
        return out

    def stat(self) -> dict[str, dict[str, str]]:
        lines = self.run("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln]
        return {r["svname"]: r for r in rows if r.get("pxname") == self.backend}

    def _slot_of(self, b: Backend, stat: dict[str, dict[str, str]]) -> str | None:
        return next((s for s in self.slots if stat.get(s, {}).get("addr") == b.address), None)

    def register(self, backends: list[Backend]) -> None:
        stat = self.stat()
        missing = [s for s in self.slots if s not in stat]
        if missing:
            raise RollwiseError(f"HAProxy backend {self.backend!r} has no server(s) "
                                f"{', '.join(missing)}", where=self.admin,
                                hint="declare them in haproxy.cfg or fix router.slots")
        for b in backends:
            if self._slot_of(b, stat):
                continue
            free = next((s for s in self.slots if stat[s].get("weight") == "0"), None)
            if free is None:
                raise RollwiseError(f"HAProxy backend {self.backend!r} has no free slot for "
                                    f"{b.name}", hint="add a server to router.slots")
            self.run(commands_point(self.backend, free, b.host, b.port))
            stat[free]["weight"], stat[free]["addr"] = "-", b.address
        self.map.add(backends)

    def set_weights(self, weights: dict[str, int]) -> None:
        stat, known = self.stat(), self.map.load()
        slot_w = {s: 0 for s in self.slots}
        for name, w in weights.items():
            slot = self._slot_of(known[name], stat) if name in known else None
            if slot is None:
                raise KeyError(f"backend {name!r} is not registered with HAProxy")
            slot_w[slot] = w * WEIGHT
        self.run(commands_set_weights(self.backend, slot_w))

    def weights(self) -> dict[str, int]:
        stat = self.stat()
        return {n: int(stat[s]["weight"]) // WEIGHT
                for n, b in self.map.load().items() if (s := self._slot_of(b, stat))}

    def drain(self, name: str, timeout: float) -> int:
        slot = self._slot_of(self.map.get(name), self.stat())
        deadline = time.monotonic() + timeout
        while slot:
            cur = int(self.stat()[slot]["scur"] or 0)
            if cur == 0 or time.monotonic() >= deadline:
                return cur
            time.sleep(0.05)
        return 0

    def remove(self, name: str) -> None:
        known = self.map.load()
        if name in known and (slot := self._slot_of(known[name], self.stat())):
            self.run(f"set server {self.backend}/{slot} weight 0; "
                     f"set server {self.backend}/{slot} state maint")
        self.map.forget(name)

    def metrics(self) -> dict[str, Any]:
        stat, out = self.stat(), dict[str, dict[str, int]]()
        for b in self.map.load().values():
            if (slot := self._slot_of(b, stat)) is None:
                continue
            r = stat[slot]
            v = out.setdefault(b.version, {"requests": 0, "status_5xx": 0, "conn_errors": 0})
            v["requests"] += int(r.get("stot") or 0)
            v["status_5xx"] += int(r.get("hrsp_5xx") or 0)
            v["conn_errors"] += int(r.get("econ") or 0) + int(r.get("eresp") or 0)
        return {"versions": out}
