"""HTTP and command checks: used during analysis and as the verification checklist."""

from __future__ import annotations

import operator
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rollwise import retry
from rollwise.analysis.base import FAIL, INCONCLUSIVE, PASS, Look, Measurement
from rollwise.config.schema import CommandCheck, HttpCheck, parse_expectation

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
EX_TEMPFAIL = 75
MAX_429_RETRIES = 3


def json_path(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit():
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise KeyError(f"no field {path!r} in the response")
    return doc


def compare(value: Any, expectation: str) -> bool:
    op, want = parse_expectation(expectation)
    try:
        return OPS[op](value, want)
    except TypeError:
        return False


def render_url(url: str, look: Look) -> str:
    return url.replace("{router}", look.router_url).replace("{preview}", look.preview_url)


@dataclass
class HttpProvider:
    check: HttpCheck
    kind: str = "http"
    sleep: Callable[[float], None] = time.sleep

    @property
    def name(self) -> str:
        return self.check.name

    def measure(self, look: Look) -> Measurement:
        url = render_url(self.check.url, look)
        numbers: dict[str, Any] = {"url": url}
        try:
            r = self._send(url)
        except httpx.HTTPError as e:
            return Measurement(self.kind, self.name, INCONCLUSIVE, f"request failed: {e}", numbers)
        numbers["status"] = r.status_code
        if r.status_code == 429:
            return Measurement(
                self.kind,
                self.name,
                INCONCLUSIVE,
                "rate limited (429); not retried further",
                numbers,
            )
        if r.status_code != self.check.expect_status:
            return Measurement(
                self.kind,
                self.name,
                FAIL,
                f"status {r.status_code}, expected {self.check.expect_status}",
                numbers,
            )
        return self._fields(r, numbers)

    def _send(self, url: str) -> httpx.Response:
        """One request; an idempotent check backs off and retries on 429 (Retry-After)."""
        return retry.call(
            lambda: httpx.request(
                self.check.method, url, content=self.check.body, timeout=self.check.timeout_s
            ),
            attempts=1 + (MAX_429_RETRIES if self.check.idempotent else 0),
            again=lambda r: r.status_code == 429,
            sleep=self.sleep,
        )

    def _fields(self, r: httpx.Response, numbers: dict[str, Any]) -> Measurement:
        if not self.check.json_fields:
            return Measurement(self.kind, self.name, PASS, f"status {r.status_code}", numbers)
        try:
            doc = r.json()
            values = {p: json_path(doc, p) for p in self.check.json_fields}
        except (ValueError, KeyError) as e:
            return Measurement(self.kind, self.name, FAIL, f"bad response body: {e}", numbers)
        numbers["values"] = values
        wrong = [
            f"{p} = {values[p]!r}, expected {x}"
            for p, x in self.check.json_fields.items()
            if not compare(values[p], x)
        ]
        if wrong:
            return Measurement(self.kind, self.name, FAIL, "; ".join(wrong), numbers)
        return Measurement(self.kind, self.name, PASS, "all fields as expected", numbers)


@dataclass
class CommandProvider:
    check: CommandCheck
    cwd: Path
    kind: str = "command"

    @property
    def name(self) -> str:
        return self.check.name

    def measure(self, look: Look) -> Measurement:
        env = {
            **os.environ,
            "ROLLWISE_ENV": look.env,
            "ROLLWISE_VERSION": look.canary,
            "ROLLWISE_PREVIOUS_VERSION": look.stable or "",
            "ROLLWISE_ROUTER_URL": look.router_url,
        }
        numbers: dict[str, Any] = {"command": self.check.run}
        try:
            p = subprocess.run(
                self.check.run,
                shell=True,
                cwd=self.cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.check.timeout_s,
            )
        except subprocess.TimeoutExpired:
            return Measurement(
                self.kind,
                self.name,
                INCONCLUSIVE,
                f"timed out after {self.check.timeout_s:g} s",
                numbers,
            )
        tail = (p.stdout.strip() or p.stderr.strip()).splitlines()[-1:] or [""]
        numbers |= {"exit": p.returncode, "output": tail[0][:200]}
        verdict = (
            PASS if p.returncode == 0 else (INCONCLUSIVE if p.returncode == EX_TEMPFAIL else FAIL)
        )
        return Measurement(
            self.kind,
            self.name,
            verdict,
            f"exit {p.returncode}{': ' + tail[0][:200] if tail[0] else ''}",
            numbers,
        )
