"""The MetricProvider interface, measurements, and the pure decision over them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

PASS: Final = "pass"
FAIL: Final = "fail"
INCONCLUSIVE: Final = "inconclusive"

# decisions
CONTINUE: Final = "continue"  # keep watching
ADVANCE: Final = "advance"  # the step passed
ROLLBACK: Final = "rollback"  # something failed
PAUSE: Final = "pause"  # the step is over but not everything is conclusive


@dataclass(frozen=True)
class Look:
    """What a provider is asked about: which versions, in which environment, and whether
    this is the last look of a step (where too little data means inconclusive)."""

    env: str
    canary: str
    stable: str | None
    final: bool = False
    router_url: str = ""
    preview_url: str = ""


@dataclass(frozen=True)
class Measurement:
    """One provider's verdict with the numbers behind it."""

    provider: str
    name: str
    verdict: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricProvider(Protocol):
    """Judges the new release. Must not raise: an error is an inconclusive measurement."""

    kind: str

    @property
    def name(self) -> str: ...

    def measure(self, look: Look) -> Measurement: ...


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str


def decide(measurements: list[Measurement], *, step_over: bool) -> Decision:
    """Any failure rolls back; at the end of a step everything must pass to advance, and
    anything inconclusive pauses. An empty list of measurements is not a pass."""
    failed = [m for m in measurements if m.verdict == FAIL]
    if failed:
        return Decision(ROLLBACK, "; ".join(f"{m.name}: {m.reason}" for m in failed))
    if not step_over:
        return Decision(CONTINUE, "watching")
    if not measurements:
        return Decision(PAUSE, "no measurement was made")
    unsure = [m for m in measurements if m.verdict != PASS]
    if unsure:
        return Decision(PAUSE, "; ".join(f"{m.name}: {m.reason}" for m in unsure))
    return Decision(ADVANCE, "all checks passed")
