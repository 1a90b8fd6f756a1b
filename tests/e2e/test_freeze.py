"""Freeze windows on real deploys of the example app: inside a window a deploy is refused
with the window's name and end, in its zone and the user's, and nothing changes; a rollback
still runs; breaking glass deploys and the audit log holds the break with its reason; a
window added with `rollwise freeze add` is enforced the same way. "Now" is ROLLWISE_NOW."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rollwise.demo import prepare_example
from rollwise.errors import ExitCode
from tests.conftest import EXAMPLE, Project
from tests.helpers import router_version, status

BEFORE_11_11 = {"ROLLWISE_NOW": "2026-10-20T12:00+08:00"}
ON_11_11 = {  # 20:00 in Shanghai; the user is in New York
    "ROLLWISE_NOW": "2026-11-11T20:00+08:00",
    "TZ": "America/New_York",
    "ROLLWISE_ACTOR": "ana",
}
DOUBLE_11 = {"name": "double-11", "zone": "Asia/Shanghai", "start": "11-01", "end": "11-12"}


def audit_events(project) -> list[dict]:
    lines = project.cli("audit", "export", check=True).stdout.splitlines()
    return [json.loads(x) for x in lines if x.startswith("{")]


def deployments(project) -> list[dict]:
    return json.loads(project.cli("history", "--json", check=True).stdout)


def bundle_of_two(root: Path) -> dict[str, Project]:
    """inventory, and orders that needs it: deployed in that order."""
    services = {}
    for name in ("inventory", "orders"):
        p = Project(prepare_example(EXAMPLE, root / name))
        cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
        cfg["app"] = name
        (p.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        services[name] = p
    bundle = {
        "bundle": "shop",
        "services": {
            "inventory": {"dir": "inventory/order-sync"},
            "orders": {"dir": "orders/order-sync", "depends_on": ["inventory"]},
        },
    }
    (root / "rollwise-bundle.yaml").write_text(yaml.safe_dump(bundle, sort_keys=False))
    return services


def test_given_a_window_in_the_config_then_deploys_are_refused_rollbacks_run_and_glass_breaks(
    project,
):
    project.release("1.0.0", "1.1.0", "1.2.0")
    project.configure(freeze=[DOUBLE_11])
    project.cli("deploy", "1.0.0", env=BEFORE_11_11, check=True)
    project.cli("deploy", "1.1.0", env=BEFORE_11_11, check=True)
    before, history = status(project), deployments(project)

    refused = project.cli("deploy", "1.2.0", env=ON_11_11)

    assert refused.returncode == ExitCode.ERROR, refused.stderr
    for said in (
        "deploys to dev are frozen by window 'double-11'",
        "until 2026-11-13 00:00 CST (Asia/Shanghai), 2026-11-12 11:00 EST (America/New_York) here",
        "1.2.0 was not deployed",
        "rollbacks are allowed",
        "--break-freeze --reason TEXT",
    ):
        assert said in refused.stderr, refused.stderr
    after = status(project)
    assert (after["live_version"], after["instances"]) == ("1.1.0", before["instances"])
    assert deployments(project) == history
    assert router_version(project) == "1.1.0"

    project.cli("rollback", "--yes", env=ON_11_11, check=True)
    assert (status(project)["live_version"], router_version(project)) == ("1.0.0", "1.0.0")

    blank = project.cli("deploy", "1.2.0", "--break-freeze", "--reason", " ", env=ON_11_11)
    assert blank.returncode == ExitCode.USAGE and "needs --reason" in blank.stderr
    broke = project.cli(
        "deploy", "1.2.0", "--break-freeze", "--reason", "checkout fix", env=ON_11_11
    )
    assert broke.returncode == 0, broke.stderr
    assert (status(project)["live_version"], router_version(project)) == ("1.2.0", "1.2.0")
    events = audit_events(project)
    [glass] = [e for e in events if e["action"] == "freeze-break"]
    assert (glass["actor"], glass["reason"], glass["version"], glass["data"]["window"]) == (
        "ana",
        "checkout fix",
        "1.2.0",
        "double-11",
    )
    refusals = [e for e in events if (e["action"], e["outcome"]) == ("deploy", "refused")]
    assert [(e["version"], e["data"]["window"]) for e in refusals] == [("1.2.0", "double-11")]


def test_given_a_window_added_with_the_cli_then_it_is_listed_and_enforced_until_removed(
    project,
):
    project.release("1.0.0")
    at_christmas = {"ROLLWISE_NOW": "2026-12-24T20:00+01:00", "TZ": "Asia/Shanghai"}
    add = ["freeze", "add", "dev", "christmas", "--zone", "Europe/Berlin"]
    project.cli(*add, "--start", "12-24", "--end", "12-26", check=True)
    again = project.cli(*add, "--start", "12-24", "--end", "12-26", check=True)
    assert "is there already" in again.stdout
    clash = project.cli(*add, "--start", "12-20", "--end", "12-26")
    assert clash.returncode == ExitCode.USAGE and "freeze remove dev christmas" in clash.stderr
    bad = project.cli(
        "freeze",
        "add",
        "dev",
        "sale",
        "--zone",
        "Asia/Shangai",
        "--start",
        "11-01",
        "--end",
        "11-12",
    )
    assert bad.returncode == ExitCode.USAGE and "did you mean Asia/Shanghai" in bad.stderr

    [listed] = json.loads(project.cli("freeze", "list", "--json", env=at_christmas).stdout)
    assert (listed["env"], listed["source"], listed["active"]) == ("dev", "store", True)
    assert (listed["start_zone"], listed["end_local"]) == (
        "2026-12-24T00:00:00+01:00",
        "2026-12-27T07:00:00+08:00",
    )

    refused = project.cli("deploy", "1.0.0", env=at_christmas)
    assert refused.returncode == ExitCode.ERROR and "window 'christmas'" in refused.stderr
    assert (status(project)["live_version"], deployments(project)) == (None, [])

    project.cli("freeze", "remove", "dev", "christmas", check=True)
    assert json.loads(project.cli("freeze", "list", "dev", "--json", check=True).stdout) == []
    project.cli("deploy", "1.0.0", env=at_christmas, check=True)
    assert status(project)["live_version"] == "1.0.0"
    kept = [(e["outcome"], e["data"].get("name")) for e in audit_events(project)]
    assert ("added", "christmas") in kept and ("removed", "christmas") in kept


def test_given_one_service_of_a_bundle_in_a_window_then_nothing_moves_unless_glass_breaks(
    tmp_path,
):
    services = bundle_of_two(tmp_path)
    try:
        for p in services.values():
            p.release("1.0.0")
        services["orders"].configure(freeze=[DOUBLE_11])

        def bundle(*args: str) -> subprocess.CompletedProcess[str]:
            argv = [sys.executable, "-m", "rollwise", "bundle", *args, "-C", str(tmp_path)]
            env = {**os.environ, **ON_11_11}
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)

        refused = bundle("deploy", "inventory=1.0.0", "orders=1.0.0")
        assert refused.returncode == ExitCode.ERROR, refused.stderr
        assert "service orders: deploys to dev are frozen by window 'double-11'" in refused.stderr
        assert "nothing moved" in refused.stderr and "bundle deploy" in refused.stderr
        assert [status(p)["live_version"] for p in services.values()] == [None, None]

        broke = bundle(
            "deploy", "inventory=1.0.0", "orders=1.0.0", "--break-freeze", "--reason", "launch"
        )
        assert broke.returncode == 0, broke.stderr
        assert [status(p)["live_version"] for p in services.values()] == ["1.0.0", "1.0.0"]
        breaks = {
            name: [e["reason"] for e in audit_events(p) if e["action"] == "freeze-break"]
            for name, p in services.items()
        }
        assert breaks == {"inventory": [], "orders": ["launch"]}
    finally:
        for p in services.values():
            p.stop_agents()


def test_given_a_window_then_through_the_team_server_only_an_admin_breaks_glass(project):
    from tests.e2e.test_server import Server, token

    project.release("1.0.0", "1.1.0")
    project.configure(freeze=[DOUBLE_11])
    project.cli("deploy", "1.0.0", env=BEFORE_11_11, check=True)
    ci, boss = token(project, "ci", "deployer"), token(project, "boss", "admin")
    server = Server(project, {"ROLLWISE_NOW": ON_11_11["ROLLWISE_NOW"]}, "freeze")

    def via(tok: str) -> dict[str, str]:
        return {"ROLLWISE_URL": server.url, "ROLLWISE_TOKEN": tok, "TZ": "America/New_York"}

    frozen = project.cli("deploy", "1.1.0", env=via(ci))
    assert frozen.returncode == ExitCode.ERROR, frozen.stderr
    assert "frozen by window 'double-11'" in frozen.stderr, frozen.stderr
    assert "2026-11-12 11:00 EST (America/New_York) here" in frozen.stderr  # the user's zone
    not_admin = project.cli("deploy", "1.1.0", "--break-freeze", "--reason", "hotfix", env=via(ci))
    assert not_admin.returncode == ExitCode.USAGE, not_admin.stderr
    assert (
        "breaking a freeze window: token 'ci' has role deployer; this needs admin or above"
        in not_admin.stderr
    )
    assert status(project)["live_version"] == "1.0.0"

    broke = project.cli(
        "deploy", "1.1.0", "--break-freeze", "--reason", "payment fix", env=via(boss)
    )
    assert broke.returncode == 0, broke.stderr
    assert (status(project)["live_version"], router_version(project)) == ("1.1.0", "1.1.0")
    [glass] = [e for e in audit_events(project) if e["action"] == "freeze-break"]
    assert (glass["actor"], glass["reason"], glass["data"]["window"]) == (
        "boss (api)",
        "payment fix",
        "double-11",
    )
