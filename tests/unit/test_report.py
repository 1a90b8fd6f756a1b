"""The delivery report over a generated history of a few hundred deployments, against
figures this test computes its own way: walking the history in order, as a person reading
the log would."""

from __future__ import annotations

import random

import pytest

from rollwise.report import DAY_S, Period, figures, parse_duration_s, quantile

START = 1_700_000_000.0


def history(seed: int, n: int) -> tuple[list[dict], dict[str, float]]:
    """`n` operations on two environments over 60 days: deploys that go live, deploys
    rolled back by their analysis, deploys that fail or are aborted before traffic moves,
    and rollbacks of a live release some time later."""
    rng = random.Random(seed)
    rows: list[dict] = []
    commits: dict[str, float] = {}
    live: dict[str, str | None] = {"prod": None, "staging": None}
    t = START
    for i in range(n):
        env = rng.choice(["prod", "prod", "staging"])
        t += rng.uniform(600, 60 * DAY_S / n * 2 - 600)
        took = rng.uniform(20, 900)
        if live[env] and rng.random() < 0.1:
            prev = [
                r
                for r in rows
                if r["env"] == env
                and r["kind"] == "deploy"
                and r["status"] == "succeeded"
                and r["to_version"] != live[env]
            ]
            if prev:
                back_to = prev[-1]["to_version"]
                rows.append(
                    dict(
                        id=i + 1,
                        env=env,
                        kind="rollback",
                        from_version=live[env],
                        to_version=back_to,
                        status="succeeded",
                        created_at=t,
                        updated_at=t + took,
                    )
                )
                live[env] = back_to
                continue
        version = f"1.{i}.0"
        commits[version] = t - rng.uniform(3600, 5 * DAY_S)
        status = rng.choices(
            ["succeeded", "rolled_back", "failed", "aborted"], [0.75, 0.12, 0.08, 0.05]
        )[0]
        rows.append(
            dict(
                id=i + 1,
                env=env,
                kind="deploy",
                from_version=live[env],
                to_version=version,
                status=status,
                created_at=t,
                updated_at=t + took,
            )
        )
        if status == "succeeded":
            live[env] = version
    return rows, commits


def expected(rows: list[dict], commits: dict[str, float], period: Period, env: str) -> dict:
    """Walk the log in order: each live deploy is a change; a later rollback from it before
    the next deploy makes it a failure restored at the rollback's end."""
    lead, restore, failures, changes, deploys, rollbacks = [], [], 0, 0, 0, 0
    open_change: dict | None = None
    for r in sorted(rows, key=lambda r: r["created_at"]):
        if r["env"] != env:
            continue
        inside = period.since <= r["created_at"] < period.until
        if r["kind"] == "rollback":
            rollbacks += inside
            if (
                open_change is not None
                and open_change["to_version"] == r["from_version"]
                and period.since <= open_change["created_at"] < period.until
            ):
                failures += 1
                restore.append(r["updated_at"] - open_change["updated_at"])
            open_change = None
            continue
        if r["status"] == "succeeded":
            open_change = r
            if inside:
                deploys += 1
                changes += 1
                lead.append(r["updated_at"] - commits[r["to_version"]])
        elif r["status"] == "rolled_back" and inside:
            changes += 1
            failures += 1
            restore.append(r["updated_at"] - r["created_at"])

    def q(xs: list[float], p: float) -> float | None:
        xs = sorted(xs)
        if not xs:
            return None
        k = 0
        while (k + 1) / len(xs) < p:
            k += 1
        return round(xs[k], 1)

    return {
        "deployments": deploys,
        "changes": changes,
        "change_failures": failures,
        "rollbacks": rollbacks,
        "lead_p50": q(lead, 0.5),
        "lead_p90": q(lead, 0.9),
        "restore_p50": q(restore, 0.5),
        "restore_p90": q(restore, 0.9),
        "restore_n": len(restore),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figures_match_an_independent_walk_of_300_operations(seed: int):
    rows, commits = history(seed, 300)
    period = Period(START + 10 * DAY_S, START + 50 * DAY_S)  # cut through the history
    got = figures(rows, commits.get, period)
    assert got["days"] == 40.0
    for env in ("prod", "staging"):
        f, want = got["environments"][env], expected(rows, commits, period, env)
        assert (f["deployments"], f["changes"], f["change_failures"], f["rollbacks"]) == (
            want["deployments"],
            want["changes"],
            want["change_failures"],
            want["rollbacks"],
        )
        assert (f["lead_time_s"]["median"], f["lead_time_s"]["p90"]) == (
            want["lead_p50"],
            want["lead_p90"],
        )
        assert (f["restore_s"]["median"], f["restore_s"]["p90"], f["restore_s"]["count"]) == (
            want["restore_p50"],
            want["restore_p90"],
            want["restore_n"],
        )
        assert f["change_failure_rate"] == round(want["change_failures"] / want["changes"], 4)
        assert f["per_day"] == round(want["deployments"] / 40, 3)
        assert f["deployments"] > 20 and f["change_failures"] > 0


def test_quantile_is_nearest_rank_and_durations_parse():
    assert quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0
    assert quantile([], 0.5) is None
    assert [parse_duration_s(x) for x in ("90m", "12h", "30d", "2w")] == [
        5400.0,
        43200.0,
        30 * DAY_S,
        14 * DAY_S,
    ]
    for bad in ("30", "d", "3x", "-1d", "1.5d"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration_s(bad)
