"""Releases as container images on Podman: a small service in shell (busybox httpd and CGI
scripts) built from a Containerfile on a base imported from a rootfs tarball (no registry
here). A bad image's canary rolled back automatically under load with no failed request
caused by switching, a rollback to the image a release recorded after its tag moved, a
container that exits at start, an image that is gone and cannot be pulled."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rollwise import loadgen
from rollwise.errors import ExitCode
from rollwise.ports import free_port, free_ports
from tests.conftest import Project, require, require_binary
from tests.helpers import incident_of

BASE = "localhost/rollwise-test/busybox:base"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "containers"
APP = f"shop-{os.getpid()}"  # one per test process: parallel workers never share a name
ORDERS = """#!/bin/sh
cat > /dev/null
printf 'Status: %s\\r\\nContent-Length: 3\\r\\nContent-Type: application/json\\r\\n' "{status}"
printf 'X-Version: %s\\r\\n\\r\\n{}\\n' "$ROLLWISE_VERSION"
"""
CRASH = """#!/bin/sh
echo "cannot reach the marketplace" >&2
exit 3
"""


def podman_env(tmp: Path) -> dict[str, str]:
    """Podman as this machine runs it: runc, and ulimits the sandbox allows."""
    conf = tmp / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    return {"CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    podman, busybox = shutil.which("podman"), shutil.which("busybox")
    require(
        podman is not None and busybox is not None and shutil.which("runc") is not None,
        "podman, runc and busybox",
        "apt-get install -y podman runc busybox-static",
    )
    tmp = tmp_path_factory.mktemp("base")
    env = {**os.environ, **podman_env(tmp)}
    root = tmp / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(str(busybox), root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    with tarfile.open(tmp / "base.tar", "w") as tar:
        tar.add(root, arcname=".")
    subprocess.run(
        [str(podman), "import", str(tmp / "base.tar"), BASE],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return env


@pytest.fixture
def shop(
    tmp_path: Path, base_image: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    root = tmp_path / "shop"
    copy_example(root)
    cfg = yaml.safe_load((root / "rollwise.yaml").read_text())
    cfg["app"] = APP
    cfg["image"]["stop_timeout_s"] = 2
    cfg["stop"] = {"drain_timeout_s": 2, "grace_s": 2}
    cfg["environments"]["dev"] = {
        "target": {"type": "container"},
        "router": {"listen": f"127.0.0.1:{free_port()}"},
        "analysis": {"interval_s": 0.5, "router": {"min_requests": 10}},
    }
    (root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = Project(root)
    monkeypatch.setenv("CONTAINERS_CONF", base_image["CONTAINERS_CONF"])
    try:
        yield p
    finally:
        p.stop_agents()
        ids = subprocess.run(
            ["podman", "ps", "-aq", "--filter", f"label=io.rollwise.app={APP}"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", *ids], capture_output=True, timeout=120)


def copy_example(root: Path) -> None:
    """The example project at `root`, its image built on the imported base."""
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".rollwise"))
    containerfile = root / "Containerfile"  # no registry here: the base is a local import
    # the app's name in the image: the same files built by two workers would otherwise be
    # one cached image (one ID, its tags and registry digests seen by both)
    containerfile.write_text(
        re.sub(r"(?m)^FROM .*$", f"FROM {BASE}", containerfile.read_text())
        + f"LABEL test.app={APP}\n"
    )


def write_app(root: Path, status: str, crash: bool = False) -> None:
    """The example's app, answering orders with `status` (or, `crash`, exiting at start)."""
    (root / "www" / "cgi-bin" / "orders").write_text(ORDERS.replace("{status}", status))
    (root / "www" / "start.sh").write_text(
        CRASH if crash else (EXAMPLE / "www" / "start.sh").read_text()
    )


def release(p: Project, version: str, status: str = "200 OK", crash: bool = False) -> str:
    write_app(p.root, status, crash)
    p.write_version(version)
    out = p.cli("release", "create", "--version", version, check=True).stdout
    write_app(p.root, "200 OK")
    return out


def containers() -> dict[str, str]:
    out = subprocess.run(
        ["podman", "ps", "--filter", f"label=io.rollwise.app={APP}", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {
        c["Labels"]["io.rollwise.instance"]: c["Labels"]["io.rollwise.version"]
        for c in json.loads(out.stdout or "[]")
    }


def image_id(version: str) -> str:
    return subprocess.run(
        [
            "podman",
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            f"localhost/rollwise/{APP}:{version}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def status(p: Project) -> dict:
    out = p.cli("status", "--env", "dev", "--json", check=True).stdout
    return json.loads(out)["environments"]["dev"]


def orders(p: Project, rate: float) -> loadgen.Load:
    host, port = status(p)["router"].rsplit(":", 1)
    return loadgen.Load(
        host, int(port), rate=rate, max_duration_s=120, path="/cgi-bin/orders"
    ).start()


def test_a_bad_image_canary_is_rolled_back_and_no_request_fails_by_switching(shop):
    made = release(shop, "1.0.0")
    assert ", image sha256:" in made and f"(localhost/rollwise/{APP}:1.0.0)" in made
    release(shop, "1.1.0", status="500 Internal Server Error")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    assert set(containers().values()) == {"1.0.0"}
    shop.configure(strategy={"type": "canary", "steps": [20, 100], "pause_s": 20})
    load = orders(shop, 60)
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    results = load.stop()
    assert res.returncode == ExitCode.ERROR, res.stderr
    assert "router metrics" in res.stderr and "canary:20" in res.stderr
    assert set(containers().values()) == {"1.0.0"}
    s = status(shop)
    assert s["live_version"] == "1.0.0" and s["marks"]["1.1.0"] == "bad" and s["healthy"]
    assert len(results) >= 50
    assert [r for r in results if not 200 <= r.status < 300 and r.version != "1.1.0"] == []


def test_rollback_runs_the_image_a_release_recorded_after_its_tag_moved(shop):
    release(shop, "1.0.0")
    release(shop, "1.1.0")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    shop.cli("deploy", "1.1.0", "--env", "dev", check=True)
    first = image_id("1.0.0")
    assert first != image_id("1.1.0")
    # the 1.0.0 tag now names 1.1.0's image: the release still runs its own
    subprocess.run(
        ["podman", "tag", f"localhost/rollwise/{APP}:1.1.0", f"localhost/rollwise/{APP}:1.0.0"],
        check=True,
        timeout=60,
    )
    load = orders(shop, 60)
    back = shop.cli("rollback", "--env", "dev", "--yes")
    results = load.stop()
    assert back.returncode == 0, back.stderr
    assert set(containers().values()) == {"1.0.0"}
    assert [r for r in results if not 200 <= r.status < 300] == []
    assert {r.version for r in results} >= {"1.0.0"}
    assert {r.version for r in results[-10:]} == {"1.0.0"}
    running = subprocess.run(
        ["podman", "ps", "--filter", f"label=io.rollwise.app={APP}", "--format", "{{.ImageID}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert [first.removeprefix("sha256:")[:12]] == [i[:12] for i in running]
    limits = subprocess.run(
        [
            "podman",
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            f"rollwise-{APP}-dev-" + status(shop)["instances"][0]["name"],
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert limits.split() == [str(128 * 1024 * 1024), "500000000"]  # the example's limits


def test_a_container_that_exits_at_start_is_named_with_its_log(shop):
    release(shop, "1.0.0")
    release(shop, "1.1.0", crash=True)
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode == ExitCode.HEALTH, res.stderr
    assert "exited before it was ready" in res.stderr
    assert "cannot reach the marketplace" in res.stderr  # its log tail
    assert f"container rollwise-{APP}-dev-1.1.0" in res.stderr
    assert set(containers().values()) == {"1.0.0"} and status(shop)["healthy"]


def test_an_image_that_is_gone_and_cannot_be_pulled_stops_the_deploy_before_anything(shop):
    release(shop, "1.0.0")
    release(shop, "1.1.0")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    subprocess.run(
        ["podman", "rmi", "-f", f"localhost/rollwise/{APP}:1.1.0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    res = shop.cli("deploy", "1.1.0", "--env", "dev")
    assert res.returncode == ExitCode.NOT_FOUND, res.stderr
    assert "of release 1.1.0 is not on this machine" in res.stderr
    assert set(containers().values()) == {"1.0.0"} and status(shop)["live_version"] == "1.0.0"


def test_a_project_with_container_environments_needs_an_image(shop):
    cfg = yaml.safe_load((shop.root / "rollwise.yaml").read_text())
    del cfg["image"]
    (shop.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg))
    res = shop.cli("config", "check")
    assert res.returncode == ExitCode.CONFIG
    assert "environment 'dev' runs containers: add `image:" in res.stderr


def test_kube_manifests_need_settings_and_an_image_nodes_can_pull(shop):
    release(shop, "1.0.0")
    none = shop.cli("kube", "manifests", "1.0.0", "--env", "dev")
    assert none.returncode == ExitCode.CONFIG and "has no `kubernetes` settings" in none.stderr
    shop.configure(kubernetes={"namespace": "shop", "gateway": "public"})
    local = shop.cli("kube", "manifests", "1.0.0", "--env", "dev")
    assert local.returncode == ExitCode.CONFIG, local.stderr
    assert "has no registry digest: nodes cannot pull it" in local.stderr

    # an image named for a registry (as a pull from it names it): its digest goes in
    subprocess.run(
        [
            "podman",
            "tag",
            f"localhost/rollwise/{APP}:1.0.0",
            f"registry.example.com/shop/{APP}:1.1.0",
        ],
        check=True,
        timeout=60,
    )
    cfg = yaml.safe_load((shop.root / "rollwise.yaml").read_text())
    cfg["image"] = {"ref": f"registry.example.com/shop/{APP}:1.1.0"}
    (shop.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shop.write_version("1.1.0")
    shop.cli("release", "create", "--version", "1.1.0", check=True)
    out = shop.cli(
        "kube",
        "manifests",
        "1.1.0",
        "--env",
        "dev",
        "--percent",
        "10",
        "--live",
        "1.0.0",
        "--json",
        check=True,
    ).stdout
    objects = json.loads(out)
    image = objects[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith(f"registry.example.com/shop/{APP}@sha256:")
    assert objects[2]["spec"]["rules"][0]["backendRefs"] == [
        {"name": f"{APP}-dev-1-0-0", "port": 80, "weight": 90},
        {"name": f"{APP}-dev-1-1-0", "port": 80, "weight": 10},
    ]
    subprocess.run(
        ["podman", "rmi", f"registry.example.com/shop/{APP}:1.1.0"], capture_output=True, timeout=60
    )


class Registry(subprocess.Popen[bytes]):
    """A registry's process, and the address it listens on."""

    address: str


def start_registry(tmp_path: Path, host: str = "127.0.0.1") -> Registry:
    """A real registry (Debian's docker-registry) on `host`, without TLS; its address is
    `.address`. The caller kills it."""
    exe = require_binary("docker-registry", "apt-get install -y docker-registry")
    d, port = tmp_path / "registry", free_ports(1, host)[0]
    d.mkdir()
    (d / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{d / 'data'}\nhttp:\n  addr: {host}:{port}\n"
    )
    with (d / "log").open("wb") as log:
        proc = Registry([exe, "serve", str(d / "config.yml")], stdout=log, stderr=log)
    proc.address = f"{host}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    proc = start_registry(tmp_path)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_a_pushed_image_comes_back_by_digest_and_a_rollback_needs_no_registry(shop, registry):
    cfg = yaml.safe_load((shop.root / "rollwise.yaml").read_text())
    repo = f"{registry.address}/shop/{APP}"
    cfg["image"].update(push=repo, tls_verify=False)
    (shop.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    made = {}
    for v in ("1.0.0", "1.1.0"):
        shop.write_version(v)
        out = shop.cli("release", "create", "--version", v, "--json", check=True).stdout
        made[v] = json.loads(out)["image"]
        assert made[v]["repo_digests"][0].startswith(f"{repo}@sha256:")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    # 1.1.0's image leaves this machine: the deploy pulls it back by its digest
    subprocess.run(
        ["podman", "rmi", "-f", made["1.1.0"]["id"]], check=True, capture_output=True, timeout=60
    )
    shop.cli("deploy", "1.1.0", "--env", "dev", check=True)
    running = subprocess.run(
        ["podman", "ps", "--filter", f"label=io.rollwise.app={APP}", "--format", "{{.ImageID}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert [i[:12] for i in running] == [made["1.1.0"]["id"].removeprefix("sha256:")[:12]]

    registry.kill()  # the registry is down: 1.0.0's image is here, the rollback needs nothing
    registry.wait(10)
    load = orders(shop, 50)
    back = shop.cli("rollback", "--env", "dev", "--yes")
    results = load.stop()
    assert back.returncode == 0, back.stderr
    assert set(containers().values()) == {"1.0.0"}
    assert len(results) >= 30 and [r for r in results if not 200 <= r.status < 300] == []

    subprocess.run(
        ["podman", "rmi", "-f", made["1.1.0"]["id"]], check=True, capture_output=True, timeout=60
    )
    why = f"{incident_of(shop, '1.1.0')}: retry"
    gone = shop.cli("deploy", "1.1.0", "--env", "dev", "--force", "--reason", why)
    assert gone.returncode == ExitCode.NOT_FOUND, gone.stderr
    assert "could not be pulled" in gone.stderr and repo in gone.stderr
    assert set(containers().values()) == {"1.0.0"}


def test_a_controller_killed_mid_canary_is_put_back_by_recover(shop):
    release(shop, "1.0.0")
    release(shop, "1.1.0")
    shop.cli("deploy", "1.0.0", "--env", "dev", check=True)
    shop.configure(strategy={"type": "canary", "steps": [50, 100], "pause_s": 120})
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwise", "deploy", "1.1.0", "--env", "dev", "-C", str(shop.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = status(shop)
        if s["in_progress"] and any(
            w > 0 for n, w in s["weights"].items() if n.startswith("1.1.0")
        ):
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # traffic is split between the two images
    proc.communicate(timeout=30)
    split = status(shop)
    assert split["interrupted"] and set(containers().values()) == {"1.0.0", "1.1.0"}
    again = status(shop)  # status only reads
    keys = ("live_version", "weights", "interrupted", "in_progress", "instances")
    assert {k: again[k] for k in keys} == {k: split[k] for k in keys}

    load = orders(shop, 50)
    rec = shop.cli("recover", "--env", "dev")
    results = load.stop()
    assert rec.returncode == 0, rec.stderr
    s = status(shop)
    assert s["live_version"] == "1.0.0" and s["healthy"] and not s["interrupted"]
    assert set(containers().values()) == {"1.0.0"}
    assert [r for r in results if not 200 <= r.status < 300] == []
