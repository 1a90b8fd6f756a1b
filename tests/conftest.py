from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise.agent.client import AgentClient
from rollwise.demo import prepare_example
from tests.forks import run_shared

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "order-sync"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked `e2e`: `pytest -m "not e2e"` runs the logic and
    component tests alone, in seconds."""
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


def require(ok: bool, what: str, how: str) -> None:
    """Fail in CI, skip elsewhere, when a real service the test needs is missing."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing: {how}")
    pytest.skip(f"{what} missing; to run this test: {how}")


def require_binary(name: str, how: str) -> str:
    path = shutil.which(name) or (shutil.which(name, path=str(Path(sys.executable).parent)))
    require(path is not None, name, how)
    return str(path)


@pytest.fixture(autouse=True)
def _audit_files_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed audit checkpoints and their key go under XDG_CONFIG_HOME / XDG_STATE_HOME:
    keep each test's (and each CLI run's) away from the home directory and other tests."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    for var in ("ROLLWISE_AUDIT_KEY_FILE", "ROLLWISE_AUDIT_CHECKPOINT_FILE"):
        monkeypatch.delenv(var, raising=False)


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cleanups: list[Callable[[], object]] = []
        self.background: list[subprocess.Popen[str]] = []  # killed at teardown if still up

    def cli(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = False,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`python -m rollwise ARGS -C ROOT`, in a process forked from one that has imported
        rollwise already (tests/forks.py), or a new interpreter when that one is busy."""
        argv, environ = [*args, "-C", str(self.root)], {**os.environ, **(env or {})}
        proc = run_shared(argv, environ, stdin or "", 180) or subprocess.run(
            [sys.executable, "-m", "rollwise", *argv],
            capture_output=True,
            text=True,
            env=environ,
            input=stdin,
            timeout=180,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"rollwise {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def cli_tty(self, *args: str, answer: str) -> subprocess.CompletedProcess[str]:
        """Run on a terminal (a pseudo-terminal) and answer its question with `answer`;
        stdout and stderr come back together as stdout."""
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollwise", *args, "-C", str(self.root)],
            stdin=follower,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        os.write(leader, f"{answer}\n".encode())
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the follower side closed: the process is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        code = proc.wait(timeout=180)
        return subprocess.CompletedProcess(proc.args, code, b"".join(chunks).decode(), "")

    def write_version(self, v: str) -> None:
        (self.root / "VERSION").write_text(v + "\n")

    def release(self, *versions: str, faults: dict[str, object] | None = None) -> None:
        """Create releases; `faults` (see the example app) go into them to play a bad one."""
        (self.root / "faults.json").unlink(missing_ok=True)
        if faults:
            (self.root / "faults.json").write_text(json.dumps(faults))
        for v in versions:
            self.write_version(v)
            self.cli("release", "create", "--version", v, check=True)
        (self.root / "faults.json").unlink(missing_ok=True)

    def configure(self, **settings: Any) -> None:
        """Replace settings of the `dev` environment in rollwise.yaml."""
        path = self.root / "rollwise.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["environments"]["dev"].update(settings)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def stop_agents(self) -> None:
        envs = self.root / ".rollwise" / "envs"
        for d in envs.iterdir() if envs.exists() else []:
            client = AgentClient(d, d.name)
            if client.alive():
                client.call("shutdown")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(prepare_example(EXAMPLE, tmp_path))
    yield p
    for proc in p.background:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    for fn in p.cleanups:
        fn()
    p.stop_agents()
