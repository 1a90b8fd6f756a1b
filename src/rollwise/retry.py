"""Back-off between retries of an HTTP call the other side rate-limits or fails."""

from __future__ import annotations

import httpx

MAX_WAIT_S = 30.0


def backoff_s(attempt: int, response: httpx.Response | None = None) -> float:
    """Seconds before the next try: the server's Retry-After (in seconds) when it sends one,
    else 0.5 s doubling with each attempt; never more than 30 s."""
    try:
        wait = float(str(response.headers.get("retry-after", ""))) if response else -1.0
    except ValueError:
        wait = -1.0
    return min(MAX_WAIT_S, wait if wait >= 0 else 0.5 * 2 ** attempt)
