"""A bundle of three services (R24) on the local target: inventory, pricing (needs
inventory) and orders (needs both), each a copy of the example app with its own router,
database, state and audit log. Deployed in dependency order; a failure puts back what had
moved, dependents first, while the services keep answering; `bundle rollback`; a bundle
command killed mid-way and recovered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise import loadgen
from rollwise.demo import prepare_example
from rollwise.errors import ExitCode
from tests.conftest import EXAMPLE, Project

FILE_ORDER = ("orders", "pricing", "inventory")  # as written: dependents before what they need
DEPENDS = {"orders": ["pricing", "inventory"], "pricing": ["inventory"], "inventory": []}
DEPLOY_ORDER = ["inventory", "pricing", "orders"]


@dataclass
class Shop:
    root: Path
    services: dict[str, Project]

    def cli(self, *args: str, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "rollwise", *args, "-C", str(self.root)],
            capture_output=True,
            text=True,
            timeout=300,
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"rollwise {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def live(self) -> dict[str, str | None]:
        data = json.loads(self.cli("bundle", "status", "--json", check=True).stdout)
        return {s["service"]: s["live_version"] for s in data["services"]}

    def marks(self, service: str) -> dict[str, str]:
        out = self.services[service].cli("status", "--env", "dev", "--json", check=True).stdout
        return dict(json.loads(out)["environments"]["dev"]["marks"])

    def history(self, service: str) -> list[dict[str, Any]]:
        out = self.services[service].cli("history", "--env", "dev", "--json", check=True)
        return list(json.loads(out.stdout))

    def rollbacks_in_order(self) -> list[str]:
        """Services whose newest deployment is a rollback, by when it started."""
        last = {s: self.history(s)[0] for s in self.services}
        rolled = [(h["created_at"], s) for s, h in last.items() if h["kind"] == "rollback"]
        return [s for _, s in sorted(rolled)]

    def router(self, service: str) -> tuple[str, int]:
        out = self.services[service].cli("status", "--env", "dev", "--json", check=True).stdout
        host, port = json.loads(out)["environments"]["dev"]["router"].rsplit(":", 1)
        return host, int(port)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    services: dict[str, Project] = {}
    for name in FILE_ORDER:
        p = Project(prepare_example(EXAMPLE, tmp_path / name))
        cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
        cfg["app"] = name
        cfg["health"]["ready_timeout_s"] = 5
        (p.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        services[name] = p
    (tmp_path / "rollwise-bundle.yaml").write_text(
        yaml.safe_dump(
            {
                "bundle": "shop",
                "services": {
                    n: {"dir": f"{n}/order-sync", "depends_on": DEPENDS[n]} for n in FILE_ORDER
                },
            },
            sort_keys=False,
        )
    )
    s = Shop(tmp_path, services)
    try:
        yield s
    finally:
        for p in services.values():
            p.stop_agents()


def crashing_release(p: Project, version: str) -> None:
    app = p.root / "app.py"
    good = app.read_text()
    app.write_text("raise SystemExit('cannot reach the marketplace')\n")
    try:
        p.release(version)
    finally:
        app.write_text(good)


def all_at(version: str) -> dict[str, str]:
    return {"bundle": "shop", **{s: f"{s}={version}" for s in DEPLOY_ORDER}}


def versions(version: str) -> list[str]:
    return [f"{s}={version}" for s in FILE_ORDER]


def test_a_bundle_deploys_in_dependency_order_and_a_failure_puts_back_dependents_first(shop):
    for s in ("inventory", "pricing"):
        shop.services[s].release("1.0.0", "1.1.0")
    shop.services["orders"].release("1.0.0")
    crashing_release(shop.services["orders"], "1.1.0")

    first = shop.cli("bundle", "deploy", *versions("1.0.0"), check=True)
    started = [ln.split()[1] for ln in first.stderr.splitlines() if ln.startswith("▶")]
    assert started == DEPLOY_ORDER
    assert shop.live() == {s: "1.0.0" for s in DEPLOY_ORDER}

    host, port = shop.router("inventory")  # inventory keeps answering while it moves
    load = loadgen.Load(host, port, rate=80, max_duration_s=120).start()
    res = shop.cli("bundle", "deploy", *versions("1.1.0"))
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "orders 1.1.0 failed" in res.stderr
    assert (
        "put back, dependents first: pricing 1.1.0 -> 1.0.0, inventory 1.1.0 -> 1.0.0" in res.stderr
    )
    assert shop.live() == {s: "1.0.0" for s in DEPLOY_ORDER}
    assert shop.rollbacks_in_order() == ["pricing", "inventory"]
    assert shop.marks("orders")["1.1.0"] == "bad"
    assert shop.marks("inventory")["1.1.0"] == "good"  # it did not fail; it can go again
    assert len(results) >= 50
    assert [r for r in results if not 200 <= r.status < 300] == []
    assert {r.version for r in results} == {"1.0.0", "1.1.0"}
    last = json.loads(shop.cli("bundle", "status", "--json", check=True).stdout)["last"]
    assert last["state"] == "rolled_back"
    assert [(m["service"], m["state"]) for m in last["moves"]] == [
        ("inventory", "back"),
        ("pricing", "back"),
        ("orders", "failed"),
    ]


def test_bundle_rollback_goes_dependents_first_and_refuses_a_service_moved_since(shop):
    for p in shop.services.values():
        p.release("1.0.0", "1.1.0", "1.2.0")
    shop.cli("bundle", "deploy", *versions("1.0.0"), check=True)
    shop.cli("bundle", "deploy", *versions("1.1.0"), check=True)
    dry = shop.cli("bundle", "rollback", "--dry-run", check=True)
    assert "dry run" in dry.stdout and shop.live() == {s: "1.1.0" for s in DEPLOY_ORDER}

    back = shop.cli("bundle", "rollback", "--yes", check=True)
    assert "orders 1.1.0 -> 1.0.0, pricing 1.1.0 -> 1.0.0, inventory 1.1.0 -> 1.0.0" in back.stdout
    assert shop.live() == {s: "1.0.0" for s in DEPLOY_ORDER}
    assert shop.rollbacks_in_order() == ["orders", "pricing", "inventory"]
    assert all(shop.marks(s)["1.1.0"] == "bad" for s in DEPLOY_ORDER)

    again = shop.cli("bundle", "rollback", "--yes")  # the last operation was the rollback
    assert again.returncode == ExitCode.NOT_FOUND and "no completed bundle deploy" in again.stderr

    bad = shop.cli("bundle", "deploy", *versions("1.1.0"))  # refused before anything moves
    assert bad.returncode == ExitCode.ERROR and "1.1.0 is marked bad" in bad.stderr
    assert shop.live() == {s: "1.0.0" for s in DEPLOY_ORDER}

    shop.cli("bundle", "deploy", *versions("1.2.0"), check=True)
    shop.services["pricing"].cli("rollback", "--env", "dev", "--yes", check=True)
    moved = shop.cli("bundle", "rollback", "--yes")
    assert moved.returncode == ExitCode.ERROR
    assert "pricing is at 1.0.0, not 1.2.0 the bundle deployed" in moved.stderr
    assert shop.live() == {"inventory": "1.2.0", "pricing": "1.0.0", "orders": "1.2.0"}


def test_bad_bundle_input_is_named_and_changes_nothing(shop):
    for p in shop.services.values():
        p.release("1.0.0")
    cases = {
        ("shipping=1.0.0",): (ExitCode.USAGE, "'shipping' is not a service of bundle shop"),
        ("inventory",): (ExitCode.USAGE, "expected SERVICE=VERSION"),
        ("inventory=1.0.0", "orders=9.9.9"): (ExitCode.NOT_FOUND, "release 9.9.9 does not exist"),
    }
    for args, (code, message) in cases.items():
        res = shop.cli("bundle", "deploy", *args)
        assert (res.returncode, message in res.stderr) == (code, True), res.stderr
    assert shop.live() == {s: None for s in DEPLOY_ORDER}

    bundle_file = shop.root / "rollwise-bundle.yaml"
    cfg = yaml.safe_load(bundle_file.read_text())
    cfg["services"]["inventory"]["depends_on"] = ["orders"]
    bundle_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = shop.cli("bundle", "status")
    assert res.returncode == ExitCode.CONFIG
    assert "rollwise-bundle.yaml:" in res.stderr
    assert "circle: orders -> pricing -> inventory -> orders" in res.stderr


def test_a_bundle_deploy_killed_mid_way_is_recovered_and_put_back(shop):
    for p in shop.services.values():
        p.release("1.0.0", "1.1.0")
    shop.cli("bundle", "deploy", *versions("1.0.0"), check=True)
    shop.services["orders"].configure(
        strategy={"type": "canary", "steps": [50, 100], "pause_s": 60}
    )
    shop.services["orders"].release("1.1.1")  # its canary waits 60 s at 50%
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollwise",
            "bundle",
            "deploy",
            "inventory=1.1.0",
            "pricing=1.1.0",
            "orders=1.1.1",
            "-C",
            str(shop.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _canary_started(shop):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert shop.live()["inventory"] == "1.1.0" and shop.live()["pricing"] == "1.1.0"

    refused = shop.cli("bundle", "deploy", "inventory=1.0.0")
    assert refused.returncode == ExitCode.ERROR and "was interrupted" in refused.stderr
    status = json.loads(shop.cli("bundle", "status", "--json", check=True).stdout)
    assert status["last"]["state"] == "running"

    rec = shop.cli("bundle", "recover", check=True)
    assert (
        "put back, dependents first: pricing 1.1.0 -> 1.0.0, inventory 1.1.0 -> 1.0.0" in rec.stdout
    )
    assert shop.live() == {s: "1.0.0" for s in DEPLOY_ORDER}
    orders = json.loads(
        shop.services["orders"].cli("status", "--env", "dev", "--json", check=True).stdout
    )["environments"]["dev"]
    assert orders["healthy"] is True and orders["in_progress"] is None
    assert {i["version"] for i in orders["instances"]} == {"1.0.0"}
    again = shop.cli("bundle", "recover", check=True)
    assert "nothing to recover" in again.stdout


def _canary_started(shop: Shop) -> bool:
    out = shop.services["orders"].cli("status", "--env", "dev", "--json").stdout
    try:
        s = json.loads(out)["environments"]["dev"]
    except (ValueError, KeyError):
        return False
    return bool(s["in_progress"]) and "1.1.1" in {i["version"] for i in s["instances"]}
