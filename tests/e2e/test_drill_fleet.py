"""Drills on a fleet: the example app on three real OpenSSH hosts (sshd in network
namespaces, tests/fleethosts.py) behind the embedded router as the front, rolled out one host
at a time. The bad canary's fault runs on the host, behind the hosts' own Python and the
modules `rollwise hosts setup` copied there; each test asserts on what the drill measured.

A real fleet's instances share a database server; the example app keeps its orders in SQLite
under `$ROLLWISE_SHARED_DIR`, which on SSH hosts is each host's own. The hosts share this
machine's filesystem outside their /srv and /root, so here `run.command` points every host's
instances at one folder outside /srv (configuration, not a change to the app) and `database`
names the same file: the rows the drill compares are the ones all hosts wrote."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise.demo import prepare_example
from tests.conftest import EXAMPLE, Project
from tests.e2e.test_drill import (
    assert_alert_rolled_back,
    assert_data_kept,
    assert_manual_rollback_measured,
    assert_migration_undone,
    release_next,
)
from tests.fleethosts import Fleet, fleet

pytestmark = pytest.mark.xdist_group("fleet_drill")

HOSTS = 3
OBJECTIVES = {"restore_s": 60, "detect_s": 30}
ANALYSIS = {"interval_s": 0.5, "checks_every_s": 1, "router": {"min_requests": 10}}
ROLLING = {"type": "rolling", "batch_size": 1, "pause_s": 3}


@pytest.fixture
def fleet_env(tmp_path: Path) -> Iterator[tuple[Project, Fleet]]:
    """`dev` on three SSH hosts, agents set up, 1.0.0 live on every host."""
    (tmp_path / "hosts").mkdir()
    with fleet(HOSTS, tmp_path / "hosts") as f:
        p = Project(prepare_example(EXAMPLE, tmp_path / "project"))
        shared = tmp_path / "shared-db"  # one database for every host (see the module)
        shared.mkdir()
        share_database(p, shared)
        p.configure(
            target={
                "type": "ssh",
                "hosts": [{"address": h.address, "name": h.name} for h in f.hosts],
                "ssh": {
                    "known_hosts": str(f.known_hosts),
                    "key_file": str(f.client_key),
                    "connect_attempts": 1,
                    "connect_timeout_s": 3,
                },
            },
            strategy={**ROLLING, "pause_s": 0},
            database={"url": f"sqlite:///{shared}/orders.db"},
        )
        try:
            p.cli("hosts", "setup", "--env", "dev", check=True)
            p.release("1.0.0")
            p.cli("deploy", "1.0.0", "--env", "dev", check=True)
            p.configure(strategy=ROLLING, analysis=ANALYSIS, objectives=OBJECTIVES)
            yield p, f
        finally:
            p.stop_agents()  # the front router here; the hosts' agents die with the fleet


def share_database(p: Project, shared: Path) -> None:
    path = p.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["command"] = f"env ROLLWISE_SHARED_DIR={shared} {cfg['run']['command']}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def drill(p: Project, *args: str) -> dict[str, Any]:
    done = p.cli("drill", "run", "dev", "--load", "50", "--hold", "1", "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def versions_by_host(f: Fleet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for h in f.hosts:
        state = h.root / "rollwise" / "order-sync" / "dev" / "agent.json"
        records = json.loads(state.read_text())["instances"] if state.exists() else []
        out[h.name] = sorted(r["version"] for r in records)
    return out


def fault_logs(f: Fleet) -> dict[str, list[str]]:
    """Lines the fault wrapper wrote in instance logs, read on each host."""
    return {
        h.name: [
            line
            for log in sorted((h.root / "rollwise" / "order-sync" / "dev" / "logs").glob("*.log"))
            for line in log.read_text().splitlines()
            if line.startswith("rollwise drill faults on ")
        ]
        for h in f.hosts
    }


def test_given_a_fleet_when_a_bad_canary_drill_runs_then_its_first_host_is_caught_and_undone(
    fleet_env: tuple[Project, Fleet],
) -> None:
    p, f = fleet_env
    r = drill(p, "--scenario", "bad-canary", "--fault", "error-rate=0.3")
    assert r["passed"], r["objectives"]
    assert (r["status"], r["live_after"]) == ("rolled_back", "1.0.0")
    assert r["detected_by"].startswith("analysis (router metrics: error rate"), r["detected_by"]
    assert 0 < r["detect_s"] < OBJECTIVES["detect_s"]
    assert r["detect_s"] <= r["traffic_back_s"] <= r["restore_s"] < OBJECTIVES["restore_s"]
    drill_version = r["plan"]["version"]
    assert drill_version == "1.0.0+drill.1"
    assert r["requests"][drill_version]["failed"] > 0
    assert r["requests"]["1.0.0"]["failed"] == 0
    assert r["requests_failed"] == sum(v["failed"] for v in r["requests"].values())
    assert_data_kept(r)
    # the fault ran on the first host only, in its namespace, and the fleet is back on 1.0.0
    logs = fault_logs(f)
    assert [len(lines) for lines in logs.values()] == [1, 0, 0], logs
    assert logs["h1"][0].startswith(f"rollwise drill faults on {f.hosts[0].address}:")
    assert versions_by_host(f) == {h.name: ["1.0.0"] for h in f.hosts}
    s = json.loads(p.cli("status", "--env", "dev", "--json", check=True).stdout)
    dev = s["environments"]["dev"]
    assert dev["live_version"] == "1.0.0" and dev["healthy"] is True
    assert dev["marks"]["1.0.0"] == "good", "the live release is not blamed"
    assert drill_version not in p.cli("release", "list", check=True).stdout, "retired"


def test_given_a_fleet_when_a_manual_rollback_drill_runs_then_every_host_goes_back_whole(
    fleet_env: tuple[Project, Fleet],
) -> None:
    p, f = fleet_env
    p.configure(strategy={**ROLLING, "pause_s": 0})
    release_next(p)
    r = drill(p, "--scenario", "manual-rollback")
    assert_manual_rollback_measured(r, OBJECTIVES["restore_s"])
    assert versions_by_host(f) == {h.name: ["1.0.0"] for h in f.hosts}


def test_given_a_fleet_when_a_migration_fails_halfway_then_no_host_moves_and_nothing_stays(
    fleet_env: tuple[Project, Fleet],
) -> None:
    p, f = fleet_env
    release_next(p)
    r = drill(p, "--scenario", "failing-migration")
    assert_migration_undone(r, OBJECTIVES["restore_s"])
    assert r["requests_failed"] == 0
    assert versions_by_host(f) == {h.name: ["1.0.0"] for h in f.hosts}


def test_given_a_fleet_when_an_alert_drill_runs_then_the_webhook_rolls_the_hosts_back(
    fleet_env: tuple[Project, Fleet],
) -> None:
    p, f = fleet_env
    r = drill(p, "--scenario", "alert")
    assert_alert_rolled_back(r, OBJECTIVES["restore_s"])
    assert r["requests"]["1.0.0"]["failed"] == 0
    assert versions_by_host(f) == {h.name: ["1.0.0"] for h in f.hosts}
