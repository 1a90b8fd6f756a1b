"""Is the new release healthy? Providers measure; `decide` turns measurements into action."""

from __future__ import annotations

from pathlib import Path

from rollwise.analysis.base import (
    ADVANCE,
    CONTINUE,
    FAIL,
    INCONCLUSIVE,
    PASS,
    PAUSE,
    ROLLBACK,
    Decision,
    Look,
    Measurement,
    MetricProvider,
    decide,
)
from rollwise.config.schema import Check, CommandCheck, HttpCheck, PrometheusCheck

__all__ = [
    "ADVANCE",
    "CONTINUE",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "PAUSE",
    "ROLLBACK",
    "Decision",
    "Look",
    "Measurement",
    "MetricProvider",
    "decide",
    "make_provider",
]


def make_provider(check: Check, cwd: Path) -> MetricProvider:
    if isinstance(check, PrometheusCheck):
        from rollwise.analysis.prometheus import PrometheusProvider

        return PrometheusProvider(check)
    if isinstance(check, HttpCheck):
        from rollwise.analysis.checks import HttpProvider

        return HttpProvider(check)
    assert isinstance(check, CommandCheck)
    from rollwise.analysis.checks import CommandProvider

    return CommandProvider(check, cwd)
