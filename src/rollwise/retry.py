"""The one way rollwise repeats a call that is safe to repeat: `call` (and `acall` for a
coroutine) on tenacity, with a back-off that honours the server's Retry-After.

Only idempotent work is retried: an HTTP check marked idempotent, a CDN purge, an SSH
connect, a database rename, an audit append that lost a race. `sleep` is passed in, so
tests see the schedule without waiting it out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, stop_after_attempt
from tenacity.retry import retry_base, retry_if_exception, retry_if_result

T = TypeVar("T")
MAX_WAIT_S = 30.0
FIRST_WAIT_S = 0.5
Wait = Callable[[int, Any], float]  # (attempts so far - 1, the last result or None) -> seconds


def backoff_s(attempt: int, response: object = None, cap: float = MAX_WAIT_S) -> float:
    """Seconds before the next try: the server's Retry-After (in seconds) when `response`
    is an HTTP response (httpx) that sends one, else 0.5 s doubling with each attempt; never more
    than `cap`."""
    headers = getattr(response, "headers", None)  # an httpx.Response, or no response
    try:
        wait = float(str(headers.get("retry-after", ""))) if headers is not None else -1.0
    except ValueError:
        wait = -1.0
    return min(cap, wait if wait >= 0 else FIRST_WAIT_S * 2**attempt)


def call(
    fn: Callable[[], T],
    *,
    attempts: int,
    on_error: Callable[[BaseException], bool] = lambda e: False,
    again: Callable[[T], bool] = lambda r: False,
    wait: Wait = backoff_s,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn()`, tried up to `attempts` times while it raises an error `on_error` accepts or
    returns a result `again` accepts. Then: the last result, or the last error raised."""
    retrying = Retrying(sleep=sleep, **_policy(attempts, on_error, again, wait))
    return retrying(fn)


async def acall(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    on_error: Callable[[BaseException], bool] = lambda e: False,
    again: Callable[[T], bool] = lambda r: False,
    wait: Wait = backoff_s,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call` for a coroutine function."""
    retrying = AsyncRetrying(sleep=sleep, **_policy(attempts, on_error, again, wait))
    result: T = await retrying(fn)
    return result


def _policy(
    attempts: int,
    on_error: Callable[[BaseException], bool],
    again: Callable[[Any], bool],
    wait: Wait,
) -> dict[str, Any]:
    retry: retry_base = retry_if_exception(on_error) | retry_if_result(again)
    return {
        "stop": stop_after_attempt(attempts),
        "retry": retry,
        "wait": lambda state: wait(state.attempt_number - 1, _last(state)),
        "retry_error_callback": _last_outcome,
    }


def _last(state: RetryCallState) -> Any:
    outcome = state.outcome
    return None if outcome is None or outcome.failed else outcome.result()


def _last_outcome(state: RetryCallState) -> Any:
    """When the tries run out: the last result, or the last error raised again."""
    assert state.outcome is not None  # tenacity stops only after an attempt
    return state.outcome.result()
