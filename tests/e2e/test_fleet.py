"""A fleet: the example app on real OpenSSH hosts (sshd in network namespaces), driven over
SSH by each host's rollwise agent, behind the embedded router as the front. Rolling deploys
and rollbacks under load, a bad release halted on its first host, host keys, credentials,
an unreachable host, a full disk, and a controller killed mid-rollout."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.switch import process

from rollwise import loadgen
from rollwise.demo import prepare_example
from rollwise.errors import ExitCode
from rollwise.ports import free_port
from tests.conftest import EXAMPLE, Project, require_binary
from tests.fleethosts import Fleet, fleet

HOSTS = 5
ROLLING = {"type": "rolling", "batch_size": 1, "pause_s": 1}
ANALYSIS = {"interval_s": 0.5, "checks_every_s": 1, "router": {"min_requests": 10}}


@dataclass
class FleetProject:
    p: Project
    f: Fleet

    def cli(self, *args: str, **kw: Any) -> Any:
        return self.p.cli(*args, **kw)

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--env", "dev", "--json", check=True).stdout
        return dict(json.loads(out)["environments"]["dev"])

    def versions_by_host(self) -> dict[str, list[str]]:
        """What each host runs now, read on the host from its agent's state file."""
        out: dict[str, list[str]] = {}
        for h in self.f.hosts:
            state = h.root / "rollwise" / "order-sync" / "dev" / "agent.json"
            records = json.loads(state.read_text())["instances"] if state.exists() else []
            out[h.name] = sorted(r["version"] for r in records)
        return out

    def load(self, rate: float) -> loadgen.Load:
        host, port = self.status()["router"].rsplit(":", 1)
        return loadgen.Load(host, int(port), rate=rate, max_duration_s=120).start()


def configure(p: Project, f: Fleet, hosts: list[Any] | None = None, **ssh: Any) -> None:
    p.configure(
        target={
            "type": "ssh",
            "hosts": [{"address": h.address, "name": h.name} for h in hosts or f.hosts],
            "ssh": {
                "known_hosts": str(f.known_hosts),
                "key_file": str(f.client_key),
                "connect_attempts": 1,
                "connect_timeout_s": 3,
                **ssh,
            },
        },
        strategy=ROLLING,
        analysis=ANALYSIS,
    )


@pytest.fixture
def fp(tmp_path: Path) -> Iterator[FleetProject]:
    (tmp_path / "hosts").mkdir()
    with fleet(HOSTS, tmp_path / "hosts") as f:
        p = Project(prepare_example(EXAMPLE, tmp_path / "project"))
        configure(p, f)
        try:
            yield FleetProject(p, f)
        finally:
            p.stop_agents()  # the front router here; the hosts' agents die with the fleet


def setup_and_deploy(fp: FleetProject, *versions: str) -> None:
    fp.cli("hosts", "setup", "--env", "dev", check=True)
    fp.p.release(*versions)
    fp.cli("deploy", versions[0], "--env", "dev", check=True)


def failed(results: list[loadgen.Result], but: str | None = None) -> list[loadgen.Result]:
    return [r for r in results if not 200 <= r.status < 300 and r.version != but]


def test_a_host_canary_and_a_rollback_across_five_hosts_fail_no_request(fp: FleetProject):
    fp.p.configure(strategy={**ROLLING, "batches": [1, "40%", "100%"]})  # 1, 2, then 5 hosts
    setup_and_deploy(fp, "1.0.0", "1.1.0")
    assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in fp.f.hosts}
    load = fp.load(150)
    deploy = fp.cli("deploy", "1.1.0", "--env", "dev")
    assert deploy.returncode == 0, deploy.stderr
    assert [
        ln.strip().split()[1]
        for ln in deploy.stderr.splitlines()
        if ln.strip().startswith("✓ rolling")
    ] == ["rolling:1", "rolling:2", "rolling:3"]
    assert fp.versions_by_host() == {h.name: ["1.1.0"] for h in fp.f.hosts}
    back = fp.cli("rollback", "--env", "dev", "--yes")
    results = load.stop()
    assert back.returncode == 0, back.stderr
    assert f"hosts:   5: h1 ({fp.f.hosts[0].address}), h2 (" in back.stderr  # what it touches
    assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in fp.f.hosts}
    assert len(results) >= 300 and failed(results) == []
    served = {r.version for r in results}
    assert served == {"1.0.0", "1.1.0"}
    s = fp.status()
    assert s["live_version"] == "1.0.0" and s["healthy"] is True
    assert sorted(i["host"] for i in s["instances"]) == sorted(h.address for h in fp.f.hosts)
    logs = json.loads(fp.cli("logs", "--env", "dev", "--json", check=True).stdout)
    assert sorted(r["host"] for r in logs) == sorted(h.address for h in fp.f.hosts)
    assert all(
        f"order-sync 1.0.0 listening on {r['host']}:{r['port']}" in r["log"] for r in logs
    )  # read on each host


def test_a_bad_release_is_halted_on_its_first_host_and_the_fleet_goes_back(fp: FleetProject):
    setup_and_deploy(fp, "1.0.0")
    fp.p.release("1.1.0", faults={"order_error_rate": 0.5})
    load = fp.load(150)
    res = fp.cli("deploy", "1.1.0", "--env", "dev")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "rolling:1" in res.stderr and "router metrics" in res.stderr
    assert "✓ rolling:2" not in res.stderr  # halted before the second host
    assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in fp.f.hosts}
    assert failed(results, but="1.1.0") == []
    s = fp.status()
    assert s["live_version"] == "1.0.0" and s["marks"]["1.1.0"] == "bad"


def test_an_unknown_host_key_is_refused_and_trusted_only_on_purpose(fp: FleetProject):
    lines = fp.f.known_hosts.read_text().splitlines()
    stranger = fp.f.hosts[2]
    fp.f.known_hosts.write_text(
        "".join(ln + "\n" for ln in lines if not ln.startswith(stranger.address + " "))
    )
    res = fp.cli("hosts", "setup", "--env", "dev")
    assert res.returncode == ExitCode.INTEGRITY, res.stderr
    assert f"host {stranger.name} ({stranger.address}:22)" in res.stderr
    fingerprint = res.stderr.split("its host key ")[1].split()[0]
    assert fingerprint.startswith("SHA256:")
    assert "rollwise hosts trust" in res.stderr
    no_tty = fp.cli("hosts", "trust", stranger.name, "--env", "dev")
    assert no_tty.returncode == ExitCode.USAGE and fingerprint in no_tty.stderr
    wrong = fp.cli(
        "hosts", "trust", stranger.name, "--env", "dev", "--fingerprint", "SHA256:" + "A" * 43
    )
    assert wrong.returncode == ExitCode.INTEGRITY and "nothing was recorded" in wrong.stderr
    assert stranger.address not in fp.f.known_hosts.read_text()
    ok = fp.cli("hosts", "trust", stranger.name, "--env", "dev", "--fingerprint", fingerprint)
    assert ok.returncode == 0, ok.stderr
    fp.cli("hosts", "setup", "--env", "dev", check=True)
    # a changed key (the host "reinstalled"): refused as CHANGED, never replaced silently
    lines = fp.f.known_hosts.read_text().splitlines()
    other_key = next(ln for ln in lines if ln.startswith(fp.f.hosts[0].address + " "))
    fp.f.known_hosts.write_text(
        "".join(
            (
                f"{stranger.address} {other_key.split(' ', 1)[1]}"
                if ln.startswith(stranger.address + " ")
                else ln
            )
            + "\n"
            for ln in lines
        )
    )
    changed = fp.cli("hosts", "check", "--env", "dev")
    assert changed.returncode == 1
    assert "CHANGED" in changed.stdout and stranger.name in changed.stdout


def test_wrong_credentials_are_refused_naming_user_and_key(fp: FleetProject, tmp_path: Path):
    import asyncssh

    other = tmp_path / "other_key"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    os.chmod(other, 0o600)
    configure(fp.p, fp.f, key_file=str(other))
    res = fp.cli("hosts", "setup", "--env", "dev")
    assert res.returncode == ExitCode.CONFIG, res.stderr
    assert f"refused user 'root' with key {other}" in res.stderr
    assert "authorized_keys" in res.stderr


def test_an_unreachable_host_stops_the_deploy_before_anything_moves(fp: FleetProject):
    setup_and_deploy(fp, "1.0.0", "1.1.0")
    down = fp.f.hosts[3]
    fp.f.stop_sshd(down)
    res = fp.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert f"host {down.name} ({down.address}:22): unreachable" in res.stderr
    assert "nothing was changed on it" in res.stderr
    assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in fp.f.hosts}
    fp.f.start_sshd(down)
    s = fp.status()
    assert s["live_version"] == "1.0.0" and s["healthy"] is True
    assert fp.cli("hosts", "check", "--env", "dev").returncode == 0


def test_a_full_disk_on_one_host_fails_the_upload_before_traffic_moves(tmp_path: Path):
    (tmp_path / "hosts").mkdir()
    with fleet(3, tmp_path / "hosts", small_disk={1: 6}) as f:
        p = Project(prepare_example(EXAMPLE, tmp_path / "project"))
        configure(p, f)
        fp = FleetProject(p, f)
        try:
            setup_and_deploy(fp, "1.0.0")
            (p.root / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))  # incompressible
            p.release("1.1.0")
            res = p.cli("deploy", "1.1.0", "--env", "dev")
            assert res.returncode == ExitCode.ERROR, res.stderr
            full = f.hosts[1]
            assert f"host {full.name}" in res.stderr and "free space" in res.stderr
            assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in f.hosts}
            assert [
                d["to_version"]
                for d in json.loads(p.cli("history", "--env", "dev", "--json", check=True).stdout)
            ] == ["1.0.0"]
        finally:
            p.stop_agents()


def test_a_controller_killed_mid_rollout_is_finished_or_undone_by_recover(fp: FleetProject):
    setup_and_deploy(fp, "1.0.0", "1.1.0")
    load = fp.load(100)
    killed = fp.cli(
        "deploy", "1.1.0", "--env", "dev", env={"ROLLWISE_FAILPOINT": "rolling:2:after"}
    )
    assert killed.returncode == -9
    mixed = fp.versions_by_host()
    assert sorted(v for vs in mixed.values() for v in vs).count("1.1.0") == 2
    assert all(len(vs) == 1 for vs in mixed.values())  # never two versions on one host
    rec = fp.cli("recover", "--env", "dev")
    results = load.stop()
    assert rec.returncode == 0, rec.stderr
    after = fp.versions_by_host()
    assert len({v for vs in after.values() for v in vs}) == 1, after
    assert failed(results) == []


def test_a_host_lost_mid_rollout_is_named_and_the_others_go_back(fp: FleetProject):
    import subprocess
    import sys
    import time

    configure(fp.p, fp.f, command_timeout_s=5)
    setup_and_deploy(fp, "1.0.0", "1.1.0")
    load = fp.load(100)
    lost = fp.f.hosts[3]
    deploy = subprocess.Popen(
        [sys.executable, "-m", "rollwise", "deploy", "1.1.0", "--env", "dev", "-C", str(fp.p.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while fp.versions_by_host()[fp.f.hosts[1].name] != ["1.1.0"]:  # batch 2 is done
            assert deploy.poll() is None and time.monotonic() < deadline, deploy.stderr
            time.sleep(0.2)
        fp.f.cut(lost)  # the host's network goes: SSH and its instance with it
        _, stderr = deploy.communicate(timeout=180)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    results = load.stop()
    assert deploy.returncode == ExitCode.ERROR, stderr
    assert f"host {lost.name} ({lost.address}:22): unreachable" in stderr, stderr
    fp.f.restore(lost)
    others = {h: v for h, v in fp.versions_by_host().items() if h != lost.name}
    assert others == {h: ["1.0.0"] for h in others}, stderr  # hosts 1 and 2 went back
    s = fp.status()
    assert s["live_version"] == "1.0.0"
    # the lost host never started 1.1.0 (or it was stopped since): one version everywhere
    rec = fp.cli("recover", "--env", "dev")
    assert rec.returncode == 0, rec.stderr
    assert fp.versions_by_host() == {h.name: ["1.0.0"] for h in fp.f.hosts}
    served = [r for r in results if 200 <= r.status < 300]
    assert len(served) >= 100


def test_two_services_on_three_hosts_go_back_in_order_when_the_dependent_fails(tmp_path: Path):
    """inventory on h1 and h2, orders (needs inventory) on h2 and h3: a bundle deploy whose
    orders release crashes on its host puts inventory back, and `bundle status` shows each
    service on each of its hosts."""
    (tmp_path / "hosts").mkdir()
    with fleet(3, tmp_path / "hosts") as f:
        placement = {"inventory": f.hosts[:2], "orders": f.hosts[1:]}
        services: dict[str, Project] = {}
        for name, hosts in placement.items():
            p = Project(prepare_example(EXAMPLE, tmp_path / name))
            cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
            cfg["app"] = name
            (p.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            configure(p, f, hosts)
            services[name] = p
        (tmp_path / "rollwise-bundle.yaml").write_text(
            yaml.safe_dump(
                {
                    "bundle": "shop",
                    "services": {
                        "orders": {"dir": "orders/order-sync", "depends_on": ["inventory"]},
                        "inventory": {"dir": "inventory/order-sync"},
                    },
                }
            )
        )
        shop = Project(tmp_path)
        try:
            for p in services.values():
                p.cli("hosts", "setup", "--env", "dev", check=True)
            services["inventory"].release("1.0.0", "1.1.0")
            services["orders"].release("1.0.0")
            app = services["orders"].root / "app.py"
            good = app.read_text()
            app.write_text("raise SystemExit('cannot reach the marketplace')\n")
            services["orders"].release("1.1.0")
            app.write_text(good)
            shop.cli("bundle", "deploy", "orders=1.0.0", "inventory=1.0.0", check=True)

            loads = [FleetProject(p, f).load(60) for p in services.values()]
            res = shop.cli("bundle", "deploy", "orders=1.1.0", "inventory=1.1.0")
            results = [r for load in loads for r in load.stop()]
            assert res.returncode == ExitCode.ERROR, res.stderr
            assert len(results) >= 100 and failed(results) == []
            assert "cannot reach the marketplace" in res.stderr  # the host's log tail
            assert "put back, dependents first: inventory 1.1.0 -> 1.0.0" in res.stderr
            on_hosts = {
                (name, h.name): versions_on(h, name)
                for name, hosts in placement.items()
                for h in hosts
            }
            assert on_hosts == {
                ("inventory", "h1"): ["1.0.0"],
                ("inventory", "h2"): ["1.0.0"],
                ("orders", "h2"): ["1.0.0"],
                ("orders", "h3"): ["1.0.0"],
            }
            status = json.loads(
                shop.cli("bundle", "status", "--env", "dev", "--json", check=True).stdout
            )
            where = {
                s["service"]: sorted(i["host"] for i in s["instances"]) for s in status["services"]
            }
            assert where == {n: sorted(h.address for h in hs) for n, hs in placement.items()}
            assert [s["service"] for s in status["services"]] == ["inventory", "orders"]
            text = shop.cli("bundle", "status", "--env", "dev", check=True).stdout
            assert (
                f"on {f.hosts[2].address}:" in text and "service orders (needs inventory)" in text
            )
        finally:
            for p in services.values():
                p.stop_agents()


def versions_on(h: Any, app: str) -> list[str]:
    state = h.root / "rollwise" / app / "dev" / "agent.json"
    records = json.loads(state.read_text())["instances"] if state.exists() else []
    return sorted(r["version"] for r in records)


def test_blue_green_behind_haproxy_switches_the_whole_fleet_at_once(tmp_path: Path):
    """HAProxy (its runtime API) as the front across three hosts: every host starts the new
    release, the front switches at once, and a rollback switches back, under load."""
    exe = require_binary("haproxy", "apt-get install -y haproxy")
    (tmp_path / "hosts").mkdir()
    with fleet(3, tmp_path / "hosts") as f:
        p = Project(prepare_example(EXAMPLE, tmp_path / "project"))
        d, port = tmp_path / "haproxy", free_port()
        d.mkdir()
        slots = [f"s{i}" for i in range(6)]  # old and new on three hosts
        servers = "".join(f"  server {s} 127.0.0.1:{free_port()} weight 0\n" for s in slots)
        (d / "haproxy.cfg").write_text(
            f"global\n  stats socket {d}/admin.sock level admin\n  maxconn 4096\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
            f"backend be\n  balance roundrobin\n{servers}"
        )
        configure(p, f)
        p.configure(
            router={
                "type": "haproxy",
                "admin": str(d / "admin.sock"),
                "backend": "be",
                "slots": slots,
            },
            strategy={"type": "blue-green", "bake_s": 2},
        )
        with process([exe, "-f", str(d / "haproxy.cfg")], port, d / "log"):
            try:
                setup_and_deploy(FleetProject(p, f), "1.0.0", "1.1.0")
                load = loadgen.Load("127.0.0.1", port, rate=150, max_duration_s=120).start()
                res = p.cli("deploy", "1.1.0", "--env", "dev")
                mid = load.stop()
                assert res.returncode == 0, res.stderr
                assert {h.name: versions_on(h, "order-sync") for h in f.hosts} == {
                    h.name: ["1.1.0"] for h in f.hosts
                }
                load = loadgen.Load("127.0.0.1", port, rate=150, max_duration_s=120).start()
                back = p.cli("rollback", "--env", "dev", "--yes")
                results = mid + load.stop()
                assert back.returncode == 0, back.stderr
                assert {h.name: versions_on(h, "order-sync") for h in f.hosts} == {
                    h.name: ["1.0.0"] for h in f.hosts
                }
                assert len(results) >= 200 and failed(results) == []
                assert {r.version for r in results} == {"1.0.0", "1.1.0"}
            finally:
                p.stop_agents()


QUICK = (
    "import sys\n"
    "from rollwise.cli import quick\n"
    "code = quick.hosts_run(sys.argv[1:])\n"
    "heavy = ('typer', 'rich', 'pydantic', 'sqlalchemy', 'rollwise.config.schema')\n"
    "sys.stderr.write(repr((code, [m for m in heavy if m in sys.modules])))\n"
)
FULL = "import sys\nfrom rollwise.cli.app import main\nsys.argv[0] = 'rollwise'\nmain()\n"


def test_hosts_run_takes_its_quick_path_once_a_full_run_left_the_hosts(fp: FleetProject):
    """The first `hosts run` loads rollwise.yaml and leaves the hosts in the fleet cache;
    the next one, in a new interpreter, runs from the cache without the full CLI, pydantic
    or SQLAlchemy: the same output, exit code and audit event, the chain intact. An edited
    rollwise.yaml sends the next run through the full path again, until any command that
    loads it has left the hosts."""
    bad = fp.f.hosts[2]
    command = f"hostname; test $(hostname) != {bad.name}"
    argv = ["hosts", "run", command, "--env", "dev", "-C", str(fp.p.root)]

    def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )

    def quick(*extra: str) -> tuple[str, tuple[int | None, list[str]]]:
        done = run(QUICK, *argv[2:], *extra)
        return done.stdout, ast.literal_eval(done.stderr)

    assert quick() == ("", (None, []))  # no cache yet: left to the full CLI
    full = run(FULL, *argv)
    assert full.returncode == 1, full.stderr
    assert full.stdout == "".join(
        f"{h.name}" + (" (exit 1)" if h is bad else "") + f": {h.name}\n" for h in fp.f.hosts
    )
    assert quick() == (full.stdout, (1, []))
    full_json = run(FULL, *argv, "--json")
    assert full_json.returncode == 1 and json.loads(full_json.stdout)[2]["exit"] == 1
    assert quick("--json") == (full_json.stdout, (1, []))
    assert quick("--host", fp.f.hosts[0].name)[1] == (0, [])

    events = [json.loads(x) for x in fp.cli("audit", "export", check=True).stdout.splitlines()]
    runs = [(e["outcome"], e["data"]) for e in events if e["action"] == "hosts_run"]
    every = {"command": command, "hosts": [h.name for h in fp.f.hosts], "failed": [bad.name]}
    one = {"command": command, "hosts": [fp.f.hosts[0].name], "failed": []}
    assert runs == [("error", every)] * 4 + [("ok", one)]
    verify = fp.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    config = fp.p.root / "rollwise.yaml"
    config.write_text(config.read_text() + "# edited\n")
    assert quick() == ("", (None, []))
    fp.cli("status", "--env", "dev", check=True)  # any command that loads rollwise.yaml
    assert quick()[1] == (1, [])
