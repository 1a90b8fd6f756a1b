"""Sequential tests that stay valid at every look.

`RatioTest` asks whether the canary's rate of bad events (errors, slow requests) is higher
than stable's. Within each window it conditions on the number of bad events seen in both
arms: if both rates are equal, each bad event is the canary's with probability equal to the
canary's share of requests in that window, so the canary's count is binomial. Against each
alternative "the canary's rate is r times stable's" the per-window likelihood ratios
multiply into a martingale under "no worse"; a fixed prior mixture of them is one too. By
Ville's inequality the chance that the mixture ever reaches 1/alpha when the canary is no
worse is at most alpha, however often it is looked at (a mixture sequential probability
ratio test, mSPRT, in its discrete form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# alternatives (canary rate / stable rate) and their prior weights; the weight leans on
# large ratios, which a broken release shows, and keeps moderate ones detectable
RATIOS: tuple[float, ...] = (2.0, 5.0, 10.0, 25.0, 60.0, 150.0)
WEIGHTS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.25)


@dataclass(frozen=True)
class Window:
    """What each arm did since the last look."""

    canary_n: int
    canary_bad: int
    stable_n: int
    stable_bad: int


@dataclass
class RatioTest:
    alpha: float
    log_lr: list[float] = field(default_factory=lambda: [0.0] * len(RATIOS))
    canary_n: int = 0
    canary_bad: int = 0
    stable_n: int = 0
    stable_bad: int = 0

    def update(self, w: Window) -> None:
        self.canary_n += w.canary_n
        self.canary_bad += w.canary_bad
        self.stable_n += w.stable_n
        self.stable_bad += w.stable_bad
        if w.canary_n <= 0 or w.stable_n <= 0 or w.canary_bad + w.stable_bad <= 0:
            return  # a window with no bad event (or one arm idle) carries no evidence
        share = w.canary_n / (w.canary_n + w.stable_n)
        for k, r in enumerate(RATIOS):
            alt = r * w.canary_n / (r * w.canary_n + w.stable_n)
            self.log_lr[k] += w.canary_bad * math.log(alt / share) + w.stable_bad * math.log(
                (1 - alt) / (1 - share)
            )

    @property
    def e_value(self) -> float:
        """The mixture likelihood ratio: evidence that the canary is worse (1 = none)."""
        top = max(self.log_lr)
        return math.exp(top) * sum(
            wt * math.exp(x - top) for wt, x in zip(WEIGHTS, self.log_lr, strict=True)
        )

    @property
    def threshold(self) -> float:
        return 1 / self.alpha

    @property
    def rejected(self) -> bool:
        return self.e_value >= self.threshold

    def rates(self) -> tuple[float | None, float | None]:
        c = self.canary_bad / self.canary_n if self.canary_n else None
        s = self.stable_bad / self.stable_n if self.stable_n else None
        return c, s


def bucket_index_at(counts: list[int], q: float) -> int | None:
    """Index of the histogram bucket that holds quantile q, None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    need, seen = q * total, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= need:
            return i
    return len(counts) - 1


def quantile_ms(bounds: list[float], counts: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q (inf for the overflow bucket)."""
    i = bucket_index_at(counts, q)
    if i is None:
        return None
    return bounds[i] if i < len(bounds) else math.inf
