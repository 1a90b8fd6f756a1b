"""Helpers the end-to-end tests share: status, the router's version, load, background
commands and waiting for a condition."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from typing import cast

import httpx

from rollwise import loadgen
from rollwise.ports import free_port
from tests.conftest import Project

FAST = {"interval_s": 0.5, "checks_every_s": 1}


def incident_of(p: Project, version: str) -> str | None:
    """The id of the newest incident that marked `version` bad (INC-<n>), if any."""
    rows = json.loads(p.cli("incident", "list", "--json", check=True).stdout)
    return next((str(r["id"]) for r in rows if r["bad_version"] == version), None)


def status(p: Project, env: str = "dev") -> dict:
    out = p.cli("status", "--env", env, "--json", check=True).stdout
    return json.loads(out)["environments"][env]


def router_version(p: Project) -> str:
    host, port = status(p)["router"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("x-version") or ""
    finally:
        conn.close()


def start_load(p: Project, rate: float) -> loadgen.Load:
    host, port = status(p)["router"].rsplit(":", 1)
    return loadgen.Load(host, int(port), rate=rate, max_duration_s=120).start()


def failed_not_by(results: list[loadgen.Result], version: str) -> list[loadgen.Result]:
    return [r for r in results if not 200 <= r.status < 300 and r.version != version]


def run_in_background(p: Project, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollwise", *args, "-C", str(p.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.background.append(proc)
    return proc


def wait_for(p: Project, pred, timeout: float = 60) -> dict:
    """Polls status until pred holds; fails at once, with their output, if a background
    command has already exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(p)
        if pred(s):
            return s
        for proc in p.background:
            if proc.poll() is not None:
                out, err = proc.communicate()
                argv = cast(list[str], proc.args)  # run_in_background passes a list
                raise AssertionError(
                    f"{argv[3:5]} exited {proc.returncode} before the "
                    f"condition held:\n{out}\n{err}\nstatus: {s}"
                )
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout} s: {s}")


TOKEN = "t0ken-for-tests-0123456789"  # ROLLWISE_WEBHOOK_TOKEN of the servers tests start


def serve(p: Project) -> str:
    """`rollwise serve` for `p` on a free port, its stderr in serve.log; its URL once it
    answers /health. Stopped when the test ends."""
    port = free_port()
    log = (p.root / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollwise",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "-C",
            str(p.root),
        ],
        env={**os.environ, "ROLLWISE_WEBHOOK_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()

    p.cleanups.append(stop)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/health", timeout=1)
            return url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"rollwise serve did not start: {(p.root / 'serve.log').read_text()}")
