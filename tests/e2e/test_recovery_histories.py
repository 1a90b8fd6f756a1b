"""End to end: recovery across longer histories, on the shop fixture app (tests/apps/shop),
whose Alembic revisions add tables with foreign keys release by release:

    1.0.0  r1      users
    1.1.0  r2, r3  orders (-> users), users.tier
    1.2.0  r4, r5  order_items (-> orders, on delete cascade, indexed), payments (-> orders)
    1.2.1          1.2.0's schema, a code change only
    1.3.0  r6      shipments (-> orders), marked `# rollwise: expand`: 1.2.x runs on it

A -> B -> C (-> D) and back, one step or several at a time; refusals that change nothing; abort and
kill -9 in the middle of a canary; writes during a rollback. Each test asserts the app
database (tables, columns, foreign keys, rows) and what `status --json` and `history --json`
report. Where the database engine matters a test runs on SQLite, PostgreSQL and MariaDB,
each test on a fresh database (the PostgreSQL and MariaDB ones are dropped after it).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollwise.errors import ExitCode
from tests.component.conftest import mysql_url, pg_url  # noqa: F401 (fixtures)
from tests.conftest import Project
from tests.e2e.recovery_helpers import (
    SCHEMA,
    SQLITE_URL,
    TABLES,
    Load,
    acknowledged,
    add_orders,
    add_users,
    app_db_url,
    audit_events,
    build_releases,
    column_values,
    deployment_steps,
    history,
    migrations_applied,
    output,
    parked,
    request,
    rollwise_state,
    settled,
    shop_project,
    snapshot,
    status,
)
from tests.helpers import incident_of, run_in_background, wait_for

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.service),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.service),
]
every_database = pytest.mark.parametrize("database", DATABASES, indirect=True)
CANARY = {"type": "canary", "steps": [50, 100], "pause_s": 600}  # paused until told
USERS_R1 = {"columns": ["id", "email"], "fks": [], "indexes": []}
USERS_R3 = {"columns": ["id", "email", "tier"], "fks": [], "indexes": []}
ORDERS = {
    "columns": ["id", "user_id", "total"],
    "fks": [(("user_id",), "users", None)],
    "indexes": [],
}
ORDER_ITEMS = {
    "columns": ["id", "order_id", "sku", "qty"],
    "fks": [(("order_id",), "orders", "CASCADE")],
    "indexes": ["ix_order_items_order_id"],
}
PAYMENTS = {
    "columns": ["id", "order_id", "amount"],
    "fks": [(("order_id",), "orders", None)],
    "indexes": [],
}
SHIPMENTS = {
    "columns": ["id", "order_id", "carrier"],
    "fks": [(("order_id",), "orders", None)],
    "indexes": [],
}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop's releases, created once for the module; each test copies them."""
    return build_releases(tmp_path_factory.mktemp("shop-releases") / "shop")


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """rollwise's URL of a fresh app database (SQLite unless the test asks for others)."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        return SQLITE_URL
    return str(request.getfixturevalue("pg_url" if kind == "postgresql" else "mysql_url"))


@pytest.fixture
def shop(releases: Path, database: str, tmp_path: Path) -> Iterator[Project]:
    p = shop_project(releases, tmp_path / "shop", database)
    yield p
    for proc in p.background:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    p.stop_agents()


def deploy_history(p: Project, *versions: str) -> None:
    """Deploy each version in turn; after each, write what that release can: a user and,
    from 1.1.0 on, two orders of that user (with items and payments from 1.2.0 on)."""
    for v in versions:
        done = p.cli("deploy", v)
        assert done.returncode == 0, output(done)
        add_users(p, f"{v}@shop.test")
        if v != "1.0.0":
            add_orders(p, f"{v}@shop.test", f"{v}-a", f"{v}-b")


def given_a_b_c(p: Project) -> None:
    """1.0.0 -> 1.1.0 -> 1.2.0: 3 users (2 with a tier), 4 orders, 2 items, 2 payments."""
    deploy_history(p, "1.0.0", "1.1.0", "1.2.0")
    db = snapshot(app_db_url(p))
    assert db == {
        "revision": "r5",
        "tables": {
            "users": {**USERS_R3, "rows": 3},
            "orders": {**ORDERS, "rows": 4},
            "order_items": {**ORDER_ITEMS, "rows": 2},
            "payments": {**PAYMENTS, "rows": 2},
        },
    }


def given_a_b_c_d(p: Project) -> None:
    """1.0.0 -> 1.1.0 -> 1.2.0 -> 1.3.0: 4 users, 6 orders, 4 items, 4 payments and the 2
    shipments of 1.3.0's orders; the schema at r6."""
    deploy_history(p, "1.0.0", "1.1.0", "1.2.0", "1.3.0")
    assert snapshot(app_db_url(p)) == {
        "revision": "r6",
        "tables": {
            "users": {**USERS_R3, "rows": 4},
            "orders": {**ORDERS, "rows": 6},
            "order_items": {**ORDER_ITEMS, "rows": 4},
            "payments": {**PAYMENTS, "rows": 4},
            "shipments": {**SHIPMENTS, "rows": 2},
        },
    }


def orders_answered_by(
    p: Project, version: str, email: str, prefix: str, n: int, tries: int = 80
) -> list[str]:
    """Write orders through the router (each answered 2xx) until `version` has taken `n`
    of them; the ids `version` took. During a canary the others go to the other release."""
    taken: list[str] = []
    for k in range(tries):
        order_id = f"{prefix}-{k}"
        code, body, answered = request(
            p,
            "POST",
            "/orders",
            {"id": order_id, "email": email, "total": "7.50", "carrier": "dhl"},
        )
        assert code in (200, 201), (order_id, code, answered, body)
        taken += [order_id] if answered == version else []
        if len(taken) == n:
            return taken
    raise AssertionError(f"{version} took {len(taken)} of {tries} orders, not {n}")


def assert_serving(p: Project, version: str) -> dict:
    """`version` is live, alone on the router, healthy, and answers through it."""
    s = status(p)
    assert s["live_version"] == version and s["healthy"] is True, s
    assert s["in_progress"] is None and s["interrupted"] is None, s
    alive = [i for i in s["instances"] if i["alive"]]
    assert {i["version"] for i in alive} == {version}, s["instances"]
    assert {n for n, w in s["weights"].items() if w} == {i["name"] for i in alive}
    code, body, answered = request(p, "GET", "/health")
    assert (code, answered) == (200, version), body
    assert set(body["tables"]) == TABLES[SCHEMA[version]]
    return s


def newest(p: Project) -> tuple:
    h = history(p)[0]
    return h["kind"], h["from_version"], h["to_version"], h["status"]


# a


@every_database
def test_given_a_b_c_when_rolled_back_to_a_then_schema_r1_users_kept_and_nothing_older(shop):
    given_a_b_c(shop)
    url = app_db_url(shop)

    back = shop.cli("rollback", "--to", "1.0.0", "--yes")

    assert back.returncode == 0, output(back)
    assert snapshot(url) == {"revision": "r1", "tables": {"users": {**USERS_R1, "rows": 3}}}
    assert sorted(column_values(url, "SELECT email FROM users")) == [
        "1.0.0@shop.test",
        "1.1.0@shop.test",
        "1.2.0@shop.test",
    ]
    # what the down migrations dropped was kept first
    assert parked(shop) == {"payments": 2, "order_items": 2, "users.tier": 2, "orders": 4}
    s = assert_serving(shop, "1.0.0")
    assert (s["marks"]["1.2.0"], s["marks"]["1.1.0"], s["marks"]["1.0.0"]) == (
        "bad",
        "good",
        "good",
    )
    assert newest(shop) == ("rollback", "1.2.0", "1.0.0", "succeeded")

    before = settled(shop)
    dry = shop.cli("rollback", "--dry-run")
    assert dry.returncode == ExitCode.NOT_FOUND, output(dry)
    assert "no known-good release deployed before 1.0.0" in output(dry)
    assert settled(shop) == before

    real = shop.cli("rollback", "--yes")
    assert real.returncode == ExitCode.NOT_FOUND, output(real)
    assert "no known-good release deployed before 1.0.0" in output(real)
    assert settled(shop) == before
    s = assert_serving(shop, "1.0.0")
    assert s["marks"]["1.1.0"] == "good"


# b (SQLite only: test a runs the same down migrations on every engine)


def test_given_a_b_c_when_rolled_back_step_by_step_then_b_then_a_then_nothing(shop):
    given_a_b_c(shop)
    url = app_db_url(shop)

    to_b = shop.cli("rollback", "--yes")

    assert to_b.returncode == 0, output(to_b)
    assert "1.1.0" in to_b.stdout
    assert snapshot(url) == {
        "revision": "r3",
        "tables": {"users": {**USERS_R3, "rows": 3}, "orders": {**ORDERS, "rows": 4}},
    }
    assert sorted(column_values(url, "SELECT tier FROM users WHERE tier IS NOT NULL")) == [
        "standard",
        "standard",
    ]
    assert parked(shop) == {"payments": 2, "order_items": 2}
    s = assert_serving(shop, "1.1.0")
    assert (s["marks"]["1.2.0"], s["marks"]["1.1.0"]) == ("bad", "good")
    assert newest(shop) == ("rollback", "1.2.0", "1.1.0", "succeeded")

    to_a = shop.cli("rollback", "--yes")

    assert to_a.returncode == 0, output(to_a)
    assert snapshot(url) == {"revision": "r1", "tables": {"users": {**USERS_R1, "rows": 3}}}
    assert parked(shop) == {"payments": 2, "order_items": 2, "users.tier": 2, "orders": 4}
    s = assert_serving(shop, "1.0.0")
    assert (s["marks"]["1.2.0"], s["marks"]["1.1.0"]) == ("bad", "bad")
    assert newest(shop) == ("rollback", "1.1.0", "1.0.0", "succeeded")

    before = settled(shop)
    again = shop.cli("rollback", "--yes")
    assert again.returncode == ExitCode.NOT_FOUND, output(again)
    assert "no known-good release deployed before 1.0.0" in output(again)
    assert settled(shop) == before


# c


def test_given_a_b_c_rolled_back_to_a_when_rollback_to_b_then_refused_as_a_deploy(shop):
    given_a_b_c(shop)
    assert shop.cli("rollback", "--to", "1.0.0", "--yes").returncode == 0
    before = settled(shop)

    forward = shop.cli("rollback", "--to", "1.1.0", "--yes")

    assert forward.returncode == ExitCode.ERROR, output(forward)
    assert "rollwise deploy 1.1.0" in output(forward)
    assert settled(shop) == before
    assert_serving(shop, "1.0.0")
    assert before["database"]["revision"] == "r1"


# d


def test_given_c_live_when_b_is_deployed_then_refused_pointing_to_rollback_and_c_serves(shop):
    given_a_b_c(shop)
    before = settled(shop)

    older = shop.cli("deploy", "1.1.0")

    assert older.returncode == ExitCode.ERROR, output(older)
    assert "rollback --to 1.1.0" in output(older)
    assert settled(shop) == before
    assert before["database"]["revision"] == "r5"
    assert {t: v["rows"] for t, v in before["database"]["tables"].items()} == {
        "users": 3,
        "orders": 4,
        "order_items": 2,
        "payments": 2,
    }
    s = assert_serving(shop, "1.2.0")
    assert s["marks"].get("1.1.0") == "good"
    assert newest(shop) == ("deploy", "1.1.0", "1.2.0", "succeeded")


# e


@every_database
def test_given_a_code_only_canary_when_aborted_then_the_schema_and_every_row_stay(shop):
    """The defect: abort's undo ran a down migration derived from the release's files,
    though the canary release had applied none."""
    deploy_history(shop, "1.2.0")
    shop.configure(strategy=CANARY)
    proc = run_in_background(shop, "deploy", "1.2.1")
    s = wait_for(shop, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    assert s["in_progress"]["to"] == "1.2.1" and s["live_version"] == "1.2.0"
    add_users(shop, "canary@shop.test")
    add_orders(shop, "canary@shop.test", *(f"canary-{n}" for n in range(12)))
    url = app_db_url(shop)
    during = snapshot(url)
    assert {t: v["rows"] for t, v in during["tables"].items()} == {
        "users": 2,
        "orders": 14,
        "order_items": 14,
        "payments": 14,
    }

    aborted = shop.cli("abort")

    assert aborted.returncode == 0, output(aborted)
    _, err = proc.communicate(timeout=90)
    assert snapshot(url) == during, err
    assert during["revision"] == "r5"
    assert set(column_values(url, "SELECT id FROM orders")) >= {f"canary-{n}" for n in range(12)}
    assert parked(shop) == {}
    assert_serving(shop, "1.2.0")
    kind, _, to, state = newest(shop)
    assert (kind, to) == ("deploy", "1.2.1") and state != "succeeded"


# f


def test_given_c_marked_bad_when_deployed_then_refused_unless_forced_with_a_reason(shop):
    deploy_history(shop, "1.1.0", "1.2.0")
    back = shop.cli("rollback", "--yes")
    assert back.returncode == 0, output(back)
    assert status(shop)["marks"]["1.2.0"] == "bad"
    before = settled(shop)

    refused = shop.cli("deploy", "1.2.0", "--json")

    assert refused.returncode == ExitCode.ERROR, output(refused)
    said = json.loads(refused.stdout)
    assert said["where"] == "dev", said
    assert said["error"].startswith("1.2.0 is marked bad (rolled back by a user; incident")
    assert "--force" in said["hint"]
    assert settled(shop) == before

    unnamed = shop.cli("deploy", "1.2.0", "--force", "--reason", "fixed config")
    assert unnamed.returncode == ExitCode.ERROR, output(unnamed)
    inc = incident_of(shop, "1.2.0")
    assert f"must name {inc}" in output(unnamed) and f"--reason '{inc}: ...'" in output(unnamed)
    assert settled(shop) == before

    forced = shop.cli("deploy", "1.2.0", "--force", "--reason", f"{inc}: fixed config")

    assert forced.returncode == 0, output(forced)
    assert snapshot(app_db_url(shop)) == {
        "revision": "r5",
        "tables": {
            "users": {**USERS_R3, "rows": 2},
            "orders": {**ORDERS, "rows": 4},
            "order_items": {**ORDER_ITEMS, "rows": 0},
            "payments": {**PAYMENTS, "rows": 0},
        },
    }
    s = assert_serving(shop, "1.2.0")
    assert s["marks"]["1.2.0"] == "good"
    assert newest(shop) == ("deploy", "1.1.0", "1.2.0", "succeeded")
    events = audit_events(shop)
    forced_events = [e for e in events if "fixed config" in (e.get("reason") or "")]
    assert forced_events and forced_events[0]["version"] == "1.2.0", events[-5:]
    assert [
        e["outcome"] for e in events if e["action"] == "deploy" and e["version"] == "1.2.0"
    ].count("refused") == 2  # without a reason, and with one that does not name the incident


# g


def test_given_a_live_when_a_is_deployed_again_then_it_restarts_without_a_canary(shop):
    deploy_history(shop, "1.0.0")
    old = {i["name"] for i in status(shop)["instances"]}
    shop.configure(strategy={**CANARY, "pause_s": 30, "bake_s": 0})
    load = Load(shop, path="/health", limit=3000, max_s=60, threads=2).start()

    again = shop.cli("deploy", "1.0.0")

    answers = load.stop()
    assert again.returncode == 0, output(again)
    assert "restart" in again.stdout.lower()
    assert answers and {code for code, _ in answers.values()} == {200}
    assert {v for _, v in answers.values()} == {"1.0.0"}
    s = assert_serving(shop, "1.0.0")
    assert {i["name"] for i in s["instances"] if i["alive"]}.isdisjoint(old)
    h = history(shop)[0]
    assert (h["kind"], h["from_version"], h["to_version"], h["status"]) == (
        "deploy",
        "1.0.0",
        "1.0.0",
        "succeeded",
    )
    assert not [step for step in deployment_steps(shop, h["id"]) if "canary" in step]
    assert snapshot(app_db_url(shop))["tables"]["users"]["rows"] == 1


# h


@every_database
def test_given_orders_flowing_when_c_is_deployed_and_rolled_back_then_no_ack_is_lost(shop):
    deploy_history(shop, "1.0.0", "1.1.0")
    add_users(shop, "load@shop.test")
    load = Load(shop, email="load@shop.test", limit=4000, max_s=90).start()
    time.sleep(1)

    up = shop.cli("deploy", "1.2.0")
    time.sleep(1)
    back = shop.cli("rollback", "--to", "1.1.0", "--yes")
    time.sleep(1)

    answers = load.stop()
    assert up.returncode == 0, output(up)
    assert back.returncode == 0, output(back)
    acked = acknowledged(answers)
    stored = set(column_values(app_db_url(shop), "SELECT id FROM orders"))
    lost = sorted(set(acked) - stored)
    failed = {k: a for k, a in answers.items() if k not in acked}
    assert lost == [], f"{len(lost)} acknowledged orders missing, e.g. {lost[:5]}"
    assert len(acked) >= 100, f"only {len(acked)} acknowledged; failed: {list(failed)[:5]}"
    assert {"1.1.0", "1.2.0"} <= set(acked.values())
    assert snapshot(app_db_url(shop))["revision"] == "r3"
    assert set(snapshot(app_db_url(shop))["tables"]) == TABLES["r3"]
    s = assert_serving(shop, "1.1.0")
    assert s["marks"]["1.2.0"] == "bad"
    assert newest(shop) == ("rollback", "1.2.0", "1.1.0", "succeeded")


# i


def test_given_a_canary_killed_when_status_is_read_then_it_changes_nothing_and_recover_does(shop):
    deploy_history(shop, "1.2.0")
    shop.configure(strategy=CANARY)
    proc = run_in_background(shop, "deploy", "1.2.1")
    wait_for(shop, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30  # the dead process's lease lapses within its TTL
    while not (s := status(shop))["interrupted"] and time.monotonic() < deadline:
        time.sleep(0.5)
    state = rollwise_state(shop)
    db = snapshot(app_db_url(shop))

    first, second = status(shop), status(shop)

    for s in (first, second):
        assert s["in_progress"] is not None and s["in_progress"]["to"] == "1.2.1", s
        assert s["in_progress"].get("interrupted") is True, s
        assert "rollwise recover" in (s["interrupted"] or ""), s
    assert first["weights"] == second["weights"]
    assert len([w for w in second["weights"].values() if w]) == 2  # still split
    after = rollwise_state(shop)
    assert (after["journal"], after["deployments"]) == (state["journal"], state["deployments"])
    assert snapshot(app_db_url(shop)) == db

    recovered = shop.cli("recover")

    assert recovered.returncode == 0, output(recovered)
    s = assert_serving(shop, "1.2.0")
    assert [i["version"] for i in s["instances"] if i["alive"]] == ["1.2.0"]
    assert snapshot(app_db_url(shop)) == db  # a code-only release: the schema stays
    kind, _, to, state_now = newest(shop)
    assert (kind, to) == ("deploy", "1.2.1") and state_now != "succeeded"


# j


@every_database
def test_given_d_live_on_an_expand_revision_when_an_older_canary_is_aborted_then_d_keeps_all(shop):
    """The reported defect: 1.3.0 live (r6), a canary of the older 1.2.1 (r5: no migration
    runs), aborted; abort's undo ran 1.2.1's down migration of r5 against the live database
    and 1.3.0 then answered its writes with 502 while /health and status said up."""
    given_a_b_c_d(shop)
    shop.configure(strategy=CANARY)
    url = app_db_url(shop)
    proc = run_in_background(shop, "deploy", "1.2.1")
    s = wait_for(shop, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    assert s["in_progress"]["to"] == "1.2.1" and s["live_version"] == "1.3.0", s
    assert migrations_applied(shop, s["in_progress"]["id"]) == []
    add_users(shop, "canary@shop.test")
    by_d = orders_answered_by(shop, "1.3.0", "canary@shop.test", "canary", 6)
    during = snapshot(url)
    written = int(by_d[-1].rsplit("-", 1)[1]) + 1  # by both releases of the split
    assert during == {
        "revision": "r6",
        "tables": {
            "users": {**USERS_R3, "rows": 5},
            "orders": {**ORDERS, "rows": 6 + written},
            "order_items": {**ORDER_ITEMS, "rows": 4 + written},
            "payments": {**PAYMENTS, "rows": 4 + written},
            "shipments": {**SHIPMENTS, "rows": 2 + 6},
        },
    }
    assert set(column_values(url, "SELECT order_id FROM shipments")) >= set(by_d)

    aborted = shop.cli("abort")

    assert aborted.returncode == 0, output(aborted)
    out, err = proc.communicate(timeout=90)
    assert "deploy aborted" in f"{out}\n{err}", f"{out}\n{err}"
    assert snapshot(url) == during, f"{out}\n{err}"
    assert parked(shop) == {}
    assert_serving(shop, "1.3.0")
    kind, _, to, state = newest(shop)
    assert (kind, to) == ("deploy", "1.2.1") and state != "succeeded"
    after = [
        request(
            shop,
            "POST",
            "/orders",
            {"id": f"after-{n}", "email": "canary@shop.test", "total": "3.00", "carrier": "ups"},
        )
        for n in range(6)
    ]
    assert [(code, answered) for code, _, answered in after] == [(201, "1.3.0")] * 6, after
    assert snapshot(url)["tables"]["shipments"]["rows"] == 2 + 6 + 6
    assert sorted(column_values(url, "SELECT order_id FROM shipments WHERE carrier = 'ups'")) == [
        f"after-{n}" for n in range(6)
    ]
    assert_serving(shop, "1.3.0")


# k (SQLite only: the refusal is planned before anything runs)


def test_given_d_live_when_b_is_deployed_then_refused_as_r4_r5_are_not_expand(shop):
    given_a_b_c_d(shop)
    before = settled(shop)

    older = shop.cli("deploy", "1.1.0")

    assert older.returncode == ExitCode.ERROR, output(older)
    assert "rollback --to 1.1.0" in output(older)
    assert settled(shop) == before
    assert before["database"]["revision"] == "r6"
    assert_serving(shop, "1.3.0")
    assert newest(shop) == ("deploy", "1.2.0", "1.3.0", "succeeded")
