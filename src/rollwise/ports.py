"""Free ports for instances, the demo and benchmarks.

An environment may name the range its instances listen in (`target.ports`). Otherwise they
are drawn at random below the kernel's ephemeral range: a port that bind(0) hands out
comes from that range, where the next outgoing connection (to a database, to Prometheus) may
take it before the instance binds it; below it, only another listener can.
"""

from __future__ import annotations

import random
import re
import socket
from pathlib import Path

from rollwise.errors import RollwiseError

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # above the well-known and most registered service ports
ADDRESS = re.compile(r"^(?P<host>[0-9a-zA-Z.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (`[::1]:8080` too) as (host, port); ValueError when it is not one."""
    m = ADDRESS.match(text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError("must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:8080")
    return m["host"].strip("[]"), int(m["port"])


def free_ports(
    n: int, host: str = "127.0.0.1", span: range | None = None, rng: random.Random | None = None
) -> list[int]:
    """`n` distinct ports free on `host` just now, drawn at random from `span` (an
    environment's `target.ports`). Without a span: from LOWEST up to the ephemeral range,
    then from the OS (port 0) when that has no room."""
    order = candidates(span or default_span(), rng or random.Random())
    got = claim(order if span else [*order, *[0] * n], n, host)
    if len(got) < n:
        raise RollwiseError(
            f"{n - len(got)} of the {n} ports needed are not free in {span[0]}-{span[-1]} on {host}"
            if span
            else f"no {n} free ports on {host}",
            where="target.ports",
            hint="widen target.ports, or stop what listens in that range",
        )
    return got


def default_span() -> range:
    return range(LOWEST, max(LOWEST, _ephemeral_low()))


def candidates(span: range, rng: random.Random) -> list[int]:
    """The order the ports of `span` are tried in: random, so that two deploys choosing at
    the same time rarely want the same port."""
    return rng.sample(span, len(span))


def claim(order: list[int], n: int, host: str) -> list[int]:
    """The first `n` ports of `order` that bind on `host` now (fewer when it runs out; port
    0: one the OS picks). A port that another process took since it was chosen is passed
    over for the next one."""
    socks: list[socket.socket] = []
    try:
        for port in order:
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:  # taken
                s.close()
                continue
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
