"""Status shared by concurrent readers: one computation for all who ask while it runs, reused
while young and while nothing changed through the server."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rollwise.api.snapshots import Snapshots


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def counting() -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def compute(key: Any) -> dict[str, Any]:
        calls.append(key)
        return {"key": key, "n": len(calls)}

    return calls, compute


def test_a_young_result_is_reused_and_an_old_one_computed_again() -> None:
    calls, compute = counting()
    clock = Clock()
    snaps = Snapshots(compute, lambda: 0, max_age_s=0.5, clock=clock)
    assert snaps.get("dev") == {"key": "dev", "n": 1}
    clock.t += 0.5
    assert snaps.get("dev") == {"key": "dev", "n": 1}
    clock.t += 0.01
    assert snaps.get("dev") == {"key": "dev", "n": 2}
    assert calls == ["dev", "dev"]


def test_each_environment_has_its_own_result() -> None:
    calls, compute = counting()
    snaps = Snapshots(compute, lambda: 0, clock=Clock())
    assert [snaps.get(k)["key"] for k in ("dev", None, "dev", "prod", None)] == [
        "dev",
        None,
        "dev",
        "prod",
        None,
    ]
    assert calls == ["dev", None, "prod"]


def test_a_change_through_the_server_makes_the_next_read_fresh() -> None:
    _, compute = counting()
    gen = [0]
    snaps = Snapshots(compute, lambda: gen[0], clock=Clock())
    snaps.get("dev")
    gen[0] += 1
    assert snaps.get("dev")["n"] == 2
    assert snaps.get("dev")["n"] == 2


def test_readers_arriving_while_it_runs_wait_for_that_one_computation() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(key: Any) -> dict[str, Any]:
        calls.append(key)
        started.set()
        release.wait(5)
        return {"n": len(calls)}

    snaps = Snapshots(slow, lambda: 0, clock=Clock())
    got: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: got.append(snaps.get("dev")))
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=lambda: got.append(snaps.get("dev"))) for _ in range(8)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert calls == ["dev"]
    assert got == [{"n": 1}] * 9


def test_a_failed_computation_is_not_kept() -> None:
    calls: list[Any] = []

    def flaky(key: Any) -> dict[str, Any]:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("store away")
        return {"ok": True}

    snaps = Snapshots(flaky, lambda: 0, clock=Clock())
    with pytest.raises(RuntimeError, match="store away"):
        snaps.get("dev")
    assert snaps.get("dev") == {"ok": True}
    assert len(calls) == 2


def test_while_one_reader_computes_an_aged_result_the_others_get_the_one_before() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[Any] = []

    def compute(key: Any) -> dict[str, Any]:
        calls.append(key)
        if len(calls) == 2:
            started.set()
            release.wait(5)
        return {"n": len(calls)}

    clock = Clock()
    snaps = Snapshots(compute, lambda: 0, max_age_s=0.5, clock=clock)
    assert snaps.get("dev") == {"n": 1}
    clock.t += 1
    got: list[dict[str, Any]] = []
    refresher = threading.Thread(target=lambda: got.append(snaps.get("dev")))
    refresher.start()
    assert started.wait(5)
    assert [snaps.get("dev") for _ in range(3)] == [{"n": 1}] * 3  # no waiting
    release.set()
    refresher.join(5)
    assert got == [{"n": 2}] and snaps.get("dev") == {"n": 2}
    assert calls == ["dev", "dev"]


def test_ready_gives_what_needs_no_computing_and_nothing_else() -> None:
    clock = Clock()
    gen = [0]
    snaps = Snapshots(lambda key: {"key": key}, lambda: gen[0], max_age_s=0.5, clock=clock)
    assert snaps.ready("dev") is None  # nothing yet
    assert snaps.body("dev") == b'{"key":"dev"}'
    assert snaps.ready("dev") == b'{"key":"dev"}'
    clock.t += 1
    assert snaps.ready("dev") is None  # aged and nobody computing: the caller must
    snaps.body("dev")
    gen[0] += 1
    assert snaps.ready("dev") is None  # changed through the server
