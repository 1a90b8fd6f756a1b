"""Containers on SSH hosts (`target: {type: ssh, runtime: container}`): the example image
(busybox httpd and CGI scripts) run with rootful podman on three real OpenSSH hosts (sshd in
network namespaces, each host with its own container storage: see tests/fleethosts.py),
behind the embedded router or HAProxy. Images reach the hosts streamed over SSH (`podman
save` into `podman load`) or pulled from a real registry; a rolling deploy and a rollback
under load, status with each host's containers and their image IDs, a bad image halted on
its first host, an unreachable host named, blue-green behind HAProxy. The first tests need
no host: what the target runs, as data."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.switch import process

from rollwise import loadgen
from rollwise.config.schema import ImageConfig, ProjectConfig
from rollwise.domain import Endpoint
from rollwise.errors import ExitCode, RollwiseError
from rollwise.ports import free_port
from rollwise.targets.container import run_argv
from rollwise.targets.ssh import pick_ports
from tests.conftest import Project, require_binary
from tests.e2e import test_containers as single
from tests.fleethosts import Fleet, Host, fleet

pytestmark = pytest.mark.xdist_group("fleet_containers")

base_image = single.base_image  # the busybox base, imported on this machine once per module
APP = single.APP
HOSTS = 3


# -- commands as data (no host needed) ----------------------------------------------------


def test_on_a_host_a_container_shares_its_network_and_listens_on_the_hosts_address() -> None:
    image = ImageConfig(build="Containerfile", memory="128m", cpus=0.5)
    labels = {"app": "shop", "instance": "1.1.0-ab12cd-0"}
    args = (
        "rollwise-shop-dev-1.1.0-ab12cd-0",
        "sha256:feed",
        "/bin/sh /www/start.sh {port}",
        Endpoint("10.0.0.2", 12000),
        labels,
        ["TOKEN", "PORT"],
        image,
    )
    assert run_argv(*args, host_network=True) == [
        "run",
        "-d",
        "--name",
        "rollwise-shop-dev-1.1.0-ab12cd-0",
        "--network",
        "host",
        "--label",
        "io.rollwise.app=shop",
        "--label",
        "io.rollwise.instance=1.1.0-ab12cd-0",
        "-e",
        "PORT",
        "-e",
        "TOKEN",
        "--memory",
        "128m",
        "--cpus",
        "0.5",
        "sha256:feed",
        "/bin/sh",
        "/www/start.sh",
        "12000",
    ]
    here = run_argv(args[0], args[1], "serve --bind {host}:{port}", *args[3:], host_network=False)
    assert here[4:6] == ["-p", "10.0.0.2:12000:12000"]
    assert here[-3:] == ["serve", "--bind", "0.0.0.0:12000"]


def test_free_ports_on_a_host_avoid_every_port_in_use_and_the_ephemeral_range() -> None:
    proc = (
        "10010\t60999\n"  # ip_local_port_range: only 10000..10009 may be chosen
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
        "   0: 0A00000A:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n"
        "   1: 0100007F:2713 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n"
        "  sl  local_address                         rem_address\n"
        "   0: 00000000000000000000000000000000:2719 00000000000000000000000000000000:0000 "
        "0A\n"
    )
    got = pick_ports(proc, 7, random.Random(1))
    assert sorted(got) == [10001, 10002, 10004, 10005, 10006, 10007, 10008]
    with pytest.raises(RollwiseError, match="only 7 free ports from 10000 to 10009, 8 needed"):
        pick_ports(proc, 8, random.Random(1))


def test_runtime_container_needs_ssh_hosts_and_an_image() -> None:
    hosts = [{"address": "10.0.0.2"}]
    fleet = {"target": {"type": "ssh", "runtime": "container", "hosts": hosts}}
    with pytest.raises(ValueError, match="environment 'prod' runs containers: add `image:"):
        ProjectConfig.model_validate(
            {"app": "shop", "run": {"command": "x"}, "environments": {"prod": fleet}}
        )
    with pytest.raises(ValueError, match="`runtime` is for SSH hosts"):
        ProjectConfig.model_validate(
            {
                "app": "shop",
                "run": {"command": "x"},
                "environments": {"prod": {"target": {"type": "local", "runtime": "container"}}},
            }
        )


# -- on real hosts ---------------------------------------------------------------------------


@dataclass
class Shop:
    p: Project
    f: Fleet

    def cli(self, *args: str, **kw: Any) -> Any:
        try:
            return self.p.cli(*args, **kw)
        except subprocess.TimeoutExpired as e:  # what it was doing when it hung
            raise AssertionError((e.stderr or b"").decode()[-6000:]) from None

    def release(self, version: str, status: str = "200 OK") -> None:
        single.release(self.p, version, status)

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--env", "dev", "--json", check=True).stdout
        return dict(json.loads(out)["environments"]["dev"])

    def podman(self, host: Host, *args: str) -> str:
        """podman on the host, over SSH (its own storage, as rollwise sees it)."""
        return subprocess.run(
            self.f.ssh_argv(host, "podman", *args),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def running(self) -> dict[str, dict[str, str]]:
        """Per host: its running containers of the app, name -> version label."""
        out = {}
        for h in self.f.hosts:
            rows = json.loads(
                self.podman(h, "ps", "--filter", f"label=io.rollwise.app={APP}", "--format", "json")
                or "[]"
            )
            out[h.name] = {r["Names"][0]: r["Labels"]["io.rollwise.version"] for r in rows}
        return out

    def versions(self) -> dict[str, list[str]]:
        return {h: sorted(set(c.values())) for h, c in self.running().items()}

    def load(self, rate: float) -> loadgen.Load:
        host, port = self.status()["router"].rsplit(":", 1)
        return loadgen.Load(
            host, int(port), rate=rate, max_duration_s=120, path="/cgi-bin/orders"
        ).start()


def configure(p: Project, f: Fleet, **ssh: Any) -> None:
    p.configure(
        target={
            "type": "ssh",
            "runtime": "container",
            "hosts": [{"address": h.address, "name": h.name} for h in f.hosts],
            "ssh": {
                "known_hosts": str(f.known_hosts),
                "key_file": str(f.client_key),
                "connect_attempts": 1,
                "connect_timeout_s": 3,
                **ssh,
            },
        }
    )


@pytest.fixture
def shop(
    tmp_path: Path, base_image: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Shop]:
    root = tmp_path / "shop"
    single.copy_example(root)
    cfg = yaml.safe_load((root / "rollwise.yaml").read_text())
    cfg.update(app=APP, stop={"drain_timeout_s": 2, "grace_s": 2})
    cfg["image"]["stop_timeout_s"] = 2
    cfg["environments"]["dev"] = {
        "router": {"listen": f"127.0.0.1:{free_port()}"},
        "strategy": {"type": "rolling", "batch_size": 1, "pause_s": 1},
        "analysis": {"interval_s": 0.5, "router": {"min_requests": 10}},
    }
    (root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("CONTAINERS_CONF", base_image["CONTAINERS_CONF"])
    (tmp_path / "hosts").mkdir()
    with fleet(HOSTS, tmp_path / "hosts", containers=True) as f:
        p = Project(root)
        configure(p, f)
        try:
            yield Shop(p, f)
        finally:
            p.stop_agents()  # the front router; the hosts' containers end with the fleet


def host_events(stderr: str) -> list[dict[str, Any]]:
    """The per-host progress events of a command run with `--progress json`."""
    events = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]
    return [e["data"] for e in events if e.get("action") == "host"]


def failed(results: list[loadgen.Result]) -> list[loadgen.Result]:
    return [r for r in results if not 200 <= r.status < 300]


def test_a_rolling_deploy_and_a_rollback_on_three_hosts_fail_no_request(shop: Shop) -> None:
    # given two releases as images on this machine, none on the hosts
    shop.release("1.0.0")
    shop.release("1.1.0")
    ids = {v: "sha256:" + single.image_id(v) for v in ("1.0.0", "1.1.0")}
    assert {h.name: shop.podman(h, "images", "-q").split() for h in shop.f.hosts} == {
        h.name: [] for h in shop.f.hosts
    }

    # when 1.0.0 is deployed, each host is sent its image over SSH and runs one container
    first = shop.cli("--progress", "json", "deploy", "1.0.0", "--env", "dev")
    assert first.returncode == 0, first.stderr
    sent = sorted(
        (e["host"], e["image"], e["sent_bytes"] > 1_000_000)
        for e in host_events(first.stderr)
        if e["step"] == "prepare"
    )
    assert sent == sorted(
        [(h.name, "loaded", True) for h in shop.f.hosts]  # pre-flight
        + [(h.name, "present", False) for h in shop.f.hosts]
    )  # the step
    assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}

    # and 1.1.0 rolls host by host under load, then is rolled back: no request fails
    load = shop.load(60)
    deploy = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert deploy.returncode == 0, deploy.stderr
    assert [
        ln.strip().split()[1]
        for ln in deploy.stderr.splitlines()
        if ln.strip().startswith("✓ rolling")
    ] == ["rolling:1", "rolling:2", "rolling:3"]
    assert shop.versions() == {h.name: ["1.1.0"] for h in shop.f.hosts}
    middle = shop.status()
    back = shop.cli("--progress", "json", "rollback", "--env", "dev", "--yes")
    results = load.stop()
    assert back.returncode == 0, back.stderr
    assert {e["image"] for e in host_events(back.stderr) if e["step"] == "prepare"} == {
        "present"
    }  # the hosts kept 1.0.0's image: nothing sent
    assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}
    assert len(results) >= 100 and failed(results) == []
    assert {r.version for r in results} == {"1.0.0", "1.1.0"}

    # then status shows each host's container with the image ID it runs
    s = shop.status()
    assert s["live_version"] == "1.0.0" and s["healthy"] is True
    assert sorted(
        (i["host"], i["version"], i["image"], i["alive"]) for i in s["instances"]
    ) == sorted((h.address, "1.0.0", ids["1.0.0"], True) for h in shop.f.hosts)
    assert sorted((i["host"], i["image"]) for i in middle["instances"]) == sorted(
        (h.address, ids["1.1.0"]) for h in shop.f.hosts
    )
    text = shop.cli("status", "--env", "dev", check=True).stdout
    assert all(f"on {h.address}:" in text for h in shop.f.hosts)
    assert text.count(f" image {ids['1.0.0'][:19]}") == len(shop.f.hosts), text
    logs = json.loads(shop.cli("logs", "--env", "dev", "--json", check=True).stdout)
    assert sorted(r["host"] for r in logs) == sorted(h.address for h in shop.f.hosts)


def test_a_bad_image_is_halted_on_its_first_host(shop: Shop) -> None:
    shop.release("1.0.0")
    shop.release("1.1.0", status="500 Internal Server Error")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    load = shop.load(60)
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "rolling:1" in res.stderr and "router metrics" in res.stderr
    assert "✓ rolling:2" not in res.stderr
    assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}
    assert [r for r in failed(results) if r.version != "1.1.0"] == []
    assert shop.status()["marks"]["1.1.0"] == "bad"


def test_an_unreachable_host_is_named_and_nothing_moves(shop: Shop) -> None:
    shop.release("1.0.0")
    shop.release("1.1.0")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    down = shop.f.hosts[1]
    shop.f.stop_sshd(down)
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert f"host {down.name} ({down.address}:22): unreachable" in res.stderr
    assert "nothing was changed on it" in res.stderr
    shop.f.start_sshd(down)
    assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}
    assert [
        d["to_version"]
        for d in json.loads(shop.cli("history", "--env", "dev", "--json", check=True).stdout)
    ] == ["1.0.0"]


def test_hosts_pull_a_pushed_image_from_the_registry(shop: Shop, tmp_path: Path) -> None:
    """The registry listens on the bridge's address (the hosts reach this machine there);
    `tls_verify: false` lets the hosts pull over plain HTTP."""
    registry = single.start_registry(tmp_path, shop.f.gateway)
    try:
        cfg = yaml.safe_load((shop.p.root / "rollwise.yaml").read_text())
        cfg["image"].update(push=f"{registry.address}/shop/{APP}", tls_verify=False)
        (shop.p.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        shop.release("1.0.0")
        res = shop.cli("--progress", "json", "deploy", "1.0.0", "--env", "dev")
        assert res.returncode == 0, res.stderr
        got = {
            (e["host"], e["image"], e["sent_bytes"])
            for e in host_events(res.stderr)
            if e["step"] == "prepare"
        }
        assert got == {(h.name, how, 0) for h in shop.f.hosts for how in ("pulled", "present")}
        assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}
    finally:
        registry.kill()
        registry.wait(10)


def test_blue_green_behind_haproxy_switches_the_hosts_containers(
    shop: Shop, tmp_path: Path
) -> None:
    """HAProxy (its runtime API) as the front: it reaches each host's containers on the
    host's address; the switch and the rollback fail no request."""
    exe = require_binary("haproxy", "apt-get install -y haproxy")
    d, port = tmp_path / "haproxy", free_port()
    d.mkdir()
    slots = [f"s{i}" for i in range(2 * HOSTS)]  # old and new on each host
    servers = "".join(f"  server {s} 127.0.0.1:{free_port()} weight 0\n" for s in slots)
    (d / "haproxy.cfg").write_text(
        f"global\n  stats socket {d}/admin.sock level admin\n  maxconn 4096\n"
        "  log stderr format raw local0\n"
        "defaults\n  mode http\n  log global\n  option httplog\n"
        "  timeout connect 5s\n  timeout client 30s\n"
        f"  timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
        f"backend be\n  balance roundrobin\n  option http-server-close\n{servers}"
    )  # busybox httpd answers HTTP/1.1 without "connection: close", then closes: kept for
    # reuse, HAProxy would send the next request into the closed connection and close the
    # client's connection unanswered for it to retry (this load never retries)
    shop.p.configure(
        router={"type": "haproxy", "admin": str(d / "admin.sock"), "backend": "be", "slots": slots},
        strategy={"type": "blue-green", "bake_s": 2},
    )
    shop.release("1.0.0")
    shop.release("1.1.0")
    with process([exe, "-f", str(d / "haproxy.cfg")], port, d / "log"):
        shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
        load = loadgen.Load(
            "127.0.0.1", port, rate=60, max_duration_s=120, path="/cgi-bin/orders"
        ).start()
        deploy = shop.cli("deploy", "1.1.0", "--env", "dev")
        assert deploy.returncode == 0, deploy.stderr
        assert shop.versions() == {h.name: ["1.1.0"] for h in shop.f.hosts}
        back = shop.cli("rollback", "--env", "dev", "--yes")
        results = load.stop()
    assert back.returncode == 0, back.stderr
    assert shop.versions() == {h.name: ["1.0.0"] for h in shop.f.hosts}
    # HAProxy's log names what cut a failed request (its termination state, e.g. SD--)
    log = (d / "log").read_text().splitlines()
    posts = [ln for ln in log if '"POST' in ln]
    cut = [ln for ln in log if '"POST' not in ln or " ---- " not in ln]
    assert len(results) >= 100 and failed(results) == [], (len(posts), cut[-30:])
    assert {r.version for r in results} == {"1.0.0", "1.1.0"}
