"""The one retry helper: its schedule, seen through a fake sleep (nothing waits)."""

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rollwise import retry


def answers(*items: object) -> Callable[[], Any]:
    """A call that returns (or raises) each item in turn."""
    it: Iterator[object] = iter(items)

    def next_answer() -> Any:
        item = next(it)
        if isinstance(item, BaseException):
            raise item
        return item

    return next_answer


def busy(after: str | None = None) -> httpx.Response:
    return httpx.Response(429, headers={"retry-after": after} if after else {})


def test_given_rate_limits_then_it_waits_retry_after_or_doubles_and_returns_the_first_good():
    waits: list[float] = []
    got = retry.call(
        answers(busy(), busy("7"), busy(), httpx.Response(200)),
        attempts=5,
        again=lambda r: r.status_code == 429,
        sleep=waits.append,
    )

    assert (got.status_code, waits) == (200, [0.5, 7.0, 2.0])


def test_given_tries_run_out_on_a_result_then_the_last_result_is_returned():
    waits: list[float] = []
    got = retry.call(
        answers(busy(), busy("600"), busy("x")),
        attempts=3,
        again=lambda r: r.status_code == 429,
        sleep=waits.append,
    )

    assert (got.status_code, got.headers["retry-after"], waits) == (429, "x", [0.5, 30.0])


def test_given_errors_then_only_those_accepted_are_retried_and_the_last_is_raised():
    waits: list[float] = []
    call = answers(OSError("refused"), OSError("reset"), OSError("gone"), 1)
    with pytest.raises(OSError, match="gone"):
        retry.call(call, attempts=3, on_error=lambda e: isinstance(e, OSError), sleep=waits.append)
    assert waits == [0.5, 1.0]

    waits.clear()
    with pytest.raises(KeyError):
        retry.call(
            answers(KeyError("no"), 1),
            attempts=3,
            on_error=lambda e: isinstance(e, OSError),
            sleep=waits.append,
        )
    assert waits == []


def test_given_a_wait_of_its_own_then_it_is_used_and_a_single_attempt_never_sleeps():
    waits: list[float] = []
    got = retry.call(
        answers(ValueError(), ValueError(), ValueError(), "ok"),
        attempts=9,
        on_error=lambda e: True,
        wait=lambda n, _: retry.backoff_s(n, cap=1.5),
        sleep=waits.append,
    )
    assert (got, waits) == ("ok", [0.5, 1.0, 1.5])

    waits.clear()
    assert (
        retry.call(
            answers(busy()), attempts=1, again=lambda r: True, sleep=waits.append
        ).status_code
        == 429
    )
    assert waits == []


def test_given_a_coroutine_then_acall_follows_the_same_schedule():
    waits: list[float] = []
    failures = iter([TimeoutError(), TimeoutError()])

    async def connect() -> str:
        for e in failures:
            raise e
        return "connected"

    async def sleep(s: float) -> None:
        waits.append(s)

    got = asyncio.run(
        retry.acall(
            connect, attempts=3, on_error=lambda e: isinstance(e, TimeoutError), sleep=sleep
        )
    )
    assert (got, waits) == ("connected", [0.5, 1.0])
