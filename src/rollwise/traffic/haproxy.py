"""HAProxy driver: weights through the runtime API on the admin socket (no reload, so no
connection is dropped). rollwise points the backend's server slots at instances.

Sticky clients (a stick table) and canary header rules (`use-server` with ACLs) live in
haproxy.cfg, as `backend_config` writes them; at run time rollwise puts slots without weight
in maintenance (so their sticky clients move) and names the canary's slot in a map file.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from rollwise.config.schema import RouterConfig
from rollwise.errors import RollwiseError
from rollwise.traffic.backends import BackendMap
from rollwise.traffic.base import Backend

MAX_WEIGHT = 256  # HAProxy refuses more ("Absolute weight can only be between 0 and 256")


def commands_set_weights(backend: str, slot_weights: dict[str, int], evict: bool = False) -> str:
    """One runtime-API line that applies every weight in order: raises first, then lowers.
    `evict`: a slot without weight goes to maintenance, as HAProxy still sends sticky
    clients to a server of weight 0; one with weight is made ready again."""
    order = sorted(slot_weights.items(), key=lambda kv: -kv[1])
    cmds = []
    for slot, w in order:
        state = [f"set server {backend}/{slot} state {'ready' if w else 'maint'}"] if evict else []
        weight = [f"set server {backend}/{slot} weight {w}"]
        cmds += state + weight if w else weight + state
    return "; ".join(cmds)


def commands_canary(canary_map: str, slot: str, present: bool) -> str:
    """Name the canary's slot in the map that haproxy.cfg's `use-server` rules read."""
    return f"{'set' if present else 'add'} map {canary_map} canary {slot}"


def backend_config(cfg: RouterConfig, bind: str) -> str:
    """The frontend and backend that rollwise drives, for haproxy.cfg: server slots, and the
    stick table and header rules of `cfg.sticky` and `cfg.canary_headers`."""
    lines = [
        "frontend rollwise",
        f"  bind {bind}",
        f"  default_backend {cfg.backend}",
        f"backend {cfg.backend}",
        "  balance roundrobin",
    ]
    if cfg.canary_headers:
        lines += [
            f"  acl rollwise_canary req.hdr({r.header}) -m str {' '.join(r.values)}"
            for r in cfg.canary_headers
        ]
        lines += [
            f"  use-server {s} if rollwise_canary "
            f"{{ str(canary),map({cfg.canary_map}) -m str {s} }}"
            for s in cfg.slots
        ]
    if cfg.sticky:
        key = (
            f"req.cook({cfg.sticky.cookie})"
            if cfg.sticky.cookie
            else f"req.hdr({cfg.sticky.header})"
        )
        lines += [
            f"  stick-table type string len 128 size {cfg.sticky.max_clients}",
            f"  stick on {key}" + (" if !rollwise_canary" if cfg.canary_headers else ""),
        ]
    lines += [f"  server {s} 127.0.0.1:1 weight 0" for s in cfg.slots]
    return "\n".join(lines) + "\n"


def commands_point(backend: str, slot: str, host: str, port: int) -> str:
    return (
        f"set server {backend}/{slot} addr {host} port {port}; "
        f"set server {backend}/{slot} weight 0; set server {backend}/{slot} state ready"
    )


class HAProxyRouter:
    type = "haproxy"

    def __init__(
        self,
        admin: str,
        backend: str,
        slots: list[str],
        env_dir: Path,
        cfg: RouterConfig | None = None,
    ) -> None:
        self.admin, self.backend, self.slots = admin, backend, slots
        self.map = BackendMap(env_dir / "haproxy-backends.json")
        self.sticky = cfg is not None and cfg.sticky is not None
        self.canary_map = cfg.canary_map if cfg is not None and cfg.canary_headers else None

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
            raise RollwiseError(
                f"HAProxy admin socket did not answer: {e}",
                where=self.admin,
                hint="check `stats socket ... level admin` in haproxy.cfg and "
                "router.admin in rollwise.yaml",
            ) from e
        out = b"".join(chunks).decode()
        bad = [
            ln
            for ln in out.splitlines()
            if ln.startswith(("No such", "Unknown", "Require", "Absolute weight"))
        ]
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
            raise RollwiseError(
                f"HAProxy backend {self.backend!r} has no server(s) {', '.join(missing)}",
                where=self.admin,
                hint="declare them in haproxy.cfg or fix router.slots",
            )
        for b in backends:
            if self._slot_of(b, stat):
                continue
            free = next((s for s in self.slots if stat[s].get("weight") == "0"), None)
            if free is None:
                raise RollwiseError(
                    f"HAProxy backend {self.backend!r} has no free slot for {b.name}",
                    hint="add a server to router.slots",
                )
            self.run(commands_point(self.backend, free, b.host, b.port))
            if self.sticky:  # clients stuck to the slot's previous instance are placed anew
                self.run(f"clear table {self.backend} data.server_id eq {stat[free]['sid']}")
            stat[free]["weight"], stat[free]["addr"] = "-", b.address
        self.map.add(backends)

    def set_weights(self, weights: dict[str, int]) -> None:
        stat, known = self.stat(), self.map.load()
        slot_w = {s: 0 for s in self.slots}
        for name, w in weights.items():
            slot = self._slot_of(known[name], stat) if name in known else None
            if slot is None:
                raise KeyError(f"backend {name!r} is not registered with HAProxy")
            if w > MAX_WEIGHT:
                raise ValueError(f"HAProxy takes weights up to {MAX_WEIGHT}, not {w} ({name})")
            slot_w[slot] = w
        self.run(commands_set_weights(self.backend, slot_w, evict=self.sticky))
        if self.canary_map:
            self._point_canary(known, weights, stat)

    def _point_canary(
        self, known: dict[str, Backend], weights: dict[str, int], stat: dict[str, dict[str, str]]
    ) -> None:
        """The canary is the newest registered backend with weight (the one rolled out)."""
        assert self.canary_map is not None
        newest = next((n for n in reversed(known) if weights.get(n, 0) > 0), None)
        slot = self._slot_of(known[newest], stat) if newest else None
        if slot is None:
            return
        current = self.run(f"show map {self.canary_map}").split()
        if current[-2:] != ["canary", slot]:
            self.run(commands_canary(self.canary_map, slot, "canary" in current))

    def weights(self) -> dict[str, int]:
        stat = self.stat()
        return {
            n: int(stat[s]["weight"])
            for n, b in self.map.load().items()
            if (s := self._slot_of(b, stat))
        }

    def drain(self, name: str, timeout: float) -> int:
        """Wait until the slot has no session and nothing queued for it (or `timeout`)."""
        slot = self._slot_of(self.map.get(name), self.stat())
        deadline = time.monotonic() + timeout
        while slot:
            row = self.stat()[slot]
            cur = int(row["scur"] or 0) + int(row.get("qcur") or 0)
            if cur == 0 or time.monotonic() >= deadline:
                return cur
            time.sleep(0.05)
        return 0

    def remove(self, name: str) -> None:
        known = self.map.load()
        if name in known and (slot := self._slot_of(known[name], self.stat())):
            self.run(
                f"set server {self.backend}/{slot} weight 0; "
                f"set server {self.backend}/{slot} state maint"
            )
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
