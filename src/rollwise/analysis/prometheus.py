"""Prometheus: one PromQL query, one number, thresholds. Empty or failed is inconclusive."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from rollwise.analysis.base import FAIL, INCONCLUSIVE, PASS, Look, Measurement
from rollwise.config.schema import PrometheusCheck
from rollwise.errors import ConfigError


def render_query(query: str, look: Look) -> str:
    return (
        query.replace("{env}", look.env)
        .replace("{canary}", look.canary)
        .replace("{stable}", look.stable or "")
    )


def scalar(payload: dict[str, Any]) -> float | None:
    """The one number of an instant query result; None when there is none."""
    data = payload.get("data", {})
    result = data.get("result")
    if data.get("resultType") == "scalar" and result:
        return float(result[1])
    if data.get("resultType") == "vector" and result:
        if len(result) > 1:
            raise ValueError(
                f"query returned {len(result)} series; aggregate it to one "
                "(for example with sum() or max())"
            )
        return float(result[0]["value"][1])
    return None


@dataclass
class PrometheusProvider:
    check: PrometheusCheck
    kind: str = "prometheus"

    @property
    def name(self) -> str:
        return self.check.name

    def query(self, promql: str) -> dict[str, Any]:
        url = self.check.url
        r = httpx.get(
            f"{url.rstrip('/')}/api/v1/query",
            params={"query": promql},
            timeout=self.check.timeout_s,
            verify=url.startswith("https:"),  # no CA bundle to load for plain http
        )
        body: dict[str, Any] = r.json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body

    def validate(self, look: Look) -> str | None:
        """Before a deploy: refuse a malformed query; say so if Prometheus is unreachable."""
        try:
            self.query(render_query(self.check.query, look))
        except httpx.HTTPError as e:
            return f"check {self.name!r}: Prometheus at {self.check.url} unreachable ({e})"
        except ValueError as e:
            raise ConfigError(
                f"check {self.name!r}: Prometheus refused the query: {e}",
                where=f"analysis check {self.name!r}",
                hint=f"query was: {self.check.query}",
            ) from None
        return None

    def measure(self, look: Look) -> Measurement:
        promql = render_query(self.check.query, look)
        numbers: dict[str, Any] = {"query": promql, "max": self.check.max, "min": self.check.min}
        try:
            value = scalar(self.query(promql))
        except (httpx.HTTPError, ValueError, KeyError) as e:
            return Measurement(self.kind, self.name, INCONCLUSIVE, f"query failed: {e}", numbers)
        numbers["value"] = value
        if value is None or math.isnan(value):
            return Measurement(self.kind, self.name, INCONCLUSIVE, "no data", numbers)
        if self.check.max is not None and value > self.check.max:
            return Measurement(
                self.kind, self.name, FAIL, f"{value:g} above max {self.check.max:g}", numbers
            )
        if self.check.min is not None and value < self.check.min:
            return Measurement(
                self.kind, self.name, FAIL, f"{value:g} below min {self.check.min:g}", numbers
            )
        return Measurement(self.kind, self.name, PASS, f"{value:g} within bounds", numbers)
