"""Old instances drain within one stop.drain_timeout_s together, not one each."""

from __future__ import annotations

from types import SimpleNamespace

from rollwise import domain as d
from rollwise.controller import instances


def test_instances_that_never_drain_share_one_timeout(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("rollwise.controller.instances.time.monotonic", lambda: clock[0])
    given: list[float] = []

    def drain(name: str, timeout: float) -> int:  # a keep-alive client never lets go
        given.append(timeout)
        clock[0] += timeout
        return 2

    ctx = SimpleNamespace(config=SimpleNamespace(stop=SimpleNamespace(drain_timeout_s=10.0)))
    env = SimpleNamespace(router=SimpleNamespace(drain=drain))
    old = tuple(d.InstancePlan(f"1.0.0-a-{n}", "1.0.0", "10.0.0.2", 9000 + n) for n in range(3))
    left = instances.drain(ctx, env, old)  # type: ignore[arg-type]
    assert given == [10.0, 0.0, 0.0] and clock[0] == 110.0
    assert left == {"1.0.0-a-0": 2, "1.0.0-a-1": 2, "1.0.0-a-2": 2}


def test_instances_that_drain_at_once_leave_the_rest_of_the_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("rollwise.controller.instances.time.monotonic", lambda: clock[0])
    given: list[float] = []

    def drain(name: str, timeout: float) -> int:
        given.append(timeout)
        clock[0] += 1.0
        return 0

    ctx = SimpleNamespace(config=SimpleNamespace(stop=SimpleNamespace(drain_timeout_s=5.0)))
    env = SimpleNamespace(router=SimpleNamespace(drain=drain))
    old = tuple(d.InstancePlan(f"v-{n}", "v", "127.0.0.1", 8000 + n) for n in range(2))
    assert instances.drain(ctx, env, old) == {"v-0": 0, "v-1": 0}  # type: ignore[arg-type]
    assert given == [5.0, 4.0]
