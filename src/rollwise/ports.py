"""Free ports for instances, the demo and benchmarks.

They are drawn at random below the kernel's ephemeral range: a port that bind(0) hands out
comes from that range, where the next outgoing connection (to a database, to Prometheus) may
take it before the instance binds it; below it, only another listener can.
"""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # above the well-known and most registered service ports
TRIES = 200
ADDRESS = re.compile(r"^(?P<host>[0-9a-zA-Z.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (`[::1]:8080` too) as (host, port); ValueError when it is not one."""
    m = ADDRESS.match(text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError("must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:8080")
    return m["host"].strip("[]"), int(m["port"])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` just now, below the ephemeral range when it
    leaves room (else from the OS)."""
    top = _ephemeral_low()
    socks: list[socket.socket] = []
    try:
        for port in random.sample(range(LOWEST, top), min(TRIES, max(top - LOWEST, 0))):
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
