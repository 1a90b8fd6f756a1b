"""End to end: what rollwise leaves on disk. Files under `.rollwise/` are their owner's alone
(0600 in 0700 folders) whatever the caller's umask, no file holds a secret's value, and the
app still gets its secrets, also from an agent restarted after a crash."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from rollwise.agent.client import AgentClient
from rollwise.errors import ExitCode
from rollwise.secrets import KEY_ENV, new_key
from tests.conftest import Project

SECRET = "tok-9b41e7c05d-never-on-disk"
NAME = "MARKETPLACE_TOKEN"
DATABASE = {"url": "sqlite:///{shared}/orders.db"}


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The CLI (a child of this process) starts with the usual umask 022: the modes below
    are rollwise's doing, not the caller's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def with_secret(p: Project) -> dict[str, str]:
    """The `dev` environment needs NAME, stored encrypted; returns the variables that let a
    command read it."""
    p.configure(secrets=[NAME], database=DATABASE)
    env = {KEY_ENV: new_key()}
    p.cli("secrets", "set", NAME, "--env", "dev", env=env, stdin=SECRET, check=True)
    return env


def deploy_and_roll_back(p: Project, env: dict[str, str]) -> None:
    p.release("1.0.0", "1.1.0")
    p.cli("deploy", "1.0.0", env=env, check=True)
    p.cli("deploy", "1.1.0", env=env, check=True)
    p.cli("rollback", env=env, check=True)


def wrong_modes(top: Path) -> dict[str, str]:
    """Every path under `top` (itself too) whose mode is not 0700 for a folder, 0600 for a
    file, or owner-only for a socket, with its mode."""
    wrong = {}
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        ok = (
            mode == 0o700
            if stat.S_ISDIR(st.st_mode)
            else mode == 0o600
            if stat.S_ISREG(st.st_mode)
            else stat.S_ISLNK(st.st_mode) or not mode & 0o077
        )
        if not ok:
            wrong[str(path.relative_to(top))] = oct(mode)
    return wrong


def files_holding(top: Path, value: str) -> list[str]:
    return [
        str(f.relative_to(top))
        for f in top.rglob("*")
        if f.is_file() and not f.is_symlink() and value.encode() in f.read_bytes()
    ]


def agent(p: Project) -> AgentClient:
    env_dir = p.root / ".rollwise" / "envs" / "dev"
    return AgentClient(env_dir, "dev")


def serving_pid(p: Project) -> int:
    """The pid of the instance the router sends traffic to."""
    client = agent(p)
    weights = client.call("weights")
    return int(next(i["pid"] for i in client.call("instances") if weights.get(i["name"])))


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def kill_agent(p: Project) -> None:
    """SIGKILL the agent, as a crash would; its instances go with it."""
    client = agent(p)
    info = client.alive()
    assert info is not None
    instance = serving_pid(p)
    os.kill(int(info["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (
        client.alive() is not None or Path(f"/proc/{instance}").exists()
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.alive() is None and not Path(f"/proc/{instance}").exists()


def live_version(p: Project) -> str:
    out = p.cli("status", "--json", check=True).stdout
    return str(json.loads(out)["environments"]["dev"]["live_version"])


def test_given_deploys_a_rollback_and_a_backup_under_umask_022_then_every_file_is_0600_and_every_folder_0700(  # noqa: E501
    project: Project, umask_022: None
) -> None:
    env = with_secret(project)
    deploy_and_roll_back(project, env)
    project.cli("backup", "create", env=env, check=True)
    state = project.root / ".rollwise"
    # a reader under umask 022 too: SQLite gives -wal and -shm the database's mode
    with closing(sqlite3.connect(state / "state.db")) as db:
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM deployments").fetchone()
        names = {p.name for p in state.rglob("*")}
        assert {
            "state.db",
            "state.db-wal",
            "state.db-shm",
            "agent.json",
            "agent.log",
            "orders.db",
            "dev.enc",
        } <= names
        folders = {p.parent.name for p in state.rglob("*") if p.is_file()}
        assert {"logs", "backups", "artifacts", "1.0.0", "shared"} <= folders, folders
        assert wrong_modes(state) == {}


def test_given_a_secret_then_no_file_holds_it_and_the_app_gets_it_also_after_an_agent_crash(
    project: Project, umask_022: None
) -> None:
    env = with_secret(project)
    deploy_and_roll_back(project, env)
    pid = serving_pid(project)
    assert environ(pid)[NAME] == SECRET

    kill_agent(project)
    # the controller that restarts the agent resolves the secret again: without the key it
    # cannot, says so, and the restored instance waits for it
    no_key = project.cli("recover")
    assert no_key.returncode == ExitCode.CONFIG, no_key.stderr
    assert KEY_ENV in no_key.stderr
    waiting = [i for i in agent(project).call("instances") if not i["alive"]]
    assert [i["waiting_for"] for i in waiting] == [["DATABASE_URL", NAME]]
    project.cli("recover", env=env, check=True)

    pid = serving_pid(project)
    app_env = environ(pid)
    assert app_env[NAME] == SECRET
    # the app gets its own secrets only: not the key to the file, not other values
    assert not [k for k in app_env if k == KEY_ENV or k.startswith("ROLLWISE_SECRET")]
    assert live_version(project) == "1.0.0"
    agent_pid = int(agent(project).call("ping")["pid"])
    assert SECRET.encode() not in cmdline(pid) + cmdline(agent_pid)
    assert files_holding(project.root, SECRET) == []


def test_given_a_state_folder_an_older_version_left_open_then_the_next_command_closes_it(
    project: Project, umask_022: None
) -> None:
    env = with_secret(project)
    project.release("1.0.0")
    project.cli("deploy", "1.0.0", env=env, check=True)
    state = project.root / ".rollwise"
    for path in [state, *state.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert wrong_modes(state) != {}

    seen = project.cli("status", check=True)

    assert "Traceback" not in seen.stderr
    assert wrong_modes(state) == {}


def test_given_hooks_then_they_get_neither_the_secrets_key_nor_secret_values_nor_the_store_url(
    project, tmp_path
):
    seen = tmp_path / "hook-env.json"
    dump = f'python3 -c \'import json, os; json.dump(dict(os.environ), open("{seen}", "w"))\''
    cfg = yaml.safe_load((project.root / "rollwise.yaml").read_text())
    cfg["hooks"] = {"post_deploy": [dump]}
    (project.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = with_secret(project)
    store = f"sqlite:///{project.root / '.rollwise' / 'state.db'}"
    project.release("1.0.0")

    project.cli(
        "deploy",
        "1.0.0",
        env={**env, "ROLLWISE_SECRET_OTHER": SECRET, "ROLLWISE_DATABASE_URL": store},
        check=True,
    )

    got = json.loads(seen.read_text())
    assert got["ROLLWISE_VERSION"] == "1.0.0" and got["ROLLWISE_ENV"] == "dev"
    assert not {KEY_ENV, "ROLLWISE_SECRET_OTHER", "ROLLWISE_DATABASE_URL"} & set(got)
    assert SECRET not in seen.read_text() and env[KEY_ENV] not in seen.read_text()
