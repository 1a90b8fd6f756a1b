"""The quick path of `hosts run` takes exactly the command line the full CLI takes, reads
the fleet cache only for the same rollwise.yaml, appends the same audit row through the
standard library, and declines (None, before connecting) whenever it is not sure. The runs
on real SSH hosts are in tests/e2e/test_fleet.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollwise import audit, chain, fleetcache, notify
from rollwise.cli import quick
from rollwise.cli.quick import Args
from rollwise.controller.context import Context
from rollwise.store import URL_ENV

HOSTS = [
    {"address": "10.9.0.2", "name": "web-1", "port": 2222, "user": "deploy"},
    {"address": "10.9.0.3", "key_file": "/keys/b"},
]
SSH = {"known_hosts": "/keys/known", "key_file": "/keys/a", "concurrency": 7, "jump_host": "j"}


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (["hostname"], Args("hostname")),
        (
            ["uptime", "-e", "prod", "--host", "a", "--host=b", "-C", "/p", "--json"],
            Args("uptime", "prod", ["a", "b"], "/p", True),
        ),
        (["--env=prod", "--dir=/p", "df -h"], Args("df -h", "prod", [], "/p")),
        (["--env", "prod", "--", "-v"], Args("-v", "prod")),
        (["--help"], None),
        (["hostname", "--help"], None),
        (["hostname", "--progress", "json"], None),
        (["hostname", "-x"], None),
        (["hostname", "--json=yes"], None),
        (["hostname", "--env"], None),
        (["a", "b"], None),
        ([], None),
    ],
)
def test_the_command_line_is_read_as_the_full_cli_reads_it_or_left_to_it(argv, args) -> None:
    assert quick.parse(argv) == args


def test_the_quick_parser_knows_every_option_of_the_full_command_and_no_other() -> None:
    import typer.main

    from rollwise.cli.app import hosts_app

    group = typer.main.get_command(hosts_app)
    run = group.commands["run"]  # type: ignore[attr-defined]
    options = {o for p in run.params for o in p.opts if o.startswith("-")}
    assert options == {*quick.VALUED, "--json"}


def test_no_audit_subscriber_acts_on_a_hosts_run_event() -> None:
    """The quick path appends the event and nothing else: no notification, no checkpoint."""
    for outcome in ("ok", "error"):
        ev = chain.Event("hosts_run", outcome, "ana", env="prod")
        assert notify.kind_of(ev) is None
        assert ev.action not in audit.CHECKPOINT_AFTER


def test_the_sqlite_append_writes_the_row_audit_append_writes_and_the_chain_holds(
    tmp_path: Path,
) -> None:
    from rollwise.store.db import open_engine
    from rollwise.store.tables import events

    db = tmp_path / "state.db"
    engine = open_engine(f"sqlite:///{db}")
    ev = chain.Event("hosts_run", "ok", "ana", env="prod", data={"command": "é", "n": [1]})
    assert audit.append(engine, ev) == 1
    assert chain.append_sqlite(db, ev) == 2
    assert audit.append(engine, replace(ev, outcome="error")) == 3
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(events.select().order_by(events.c.seq))]
    assert rows[1] == chain.new_row(ev, 2, rows[0]["hash"])
    assert audit.verify(engine) == audit.VerifyResult(True, 3, note=audit.NO_CHECKPOINT)


@pytest.fixture
def fleet_project(tmp_path: Path) -> Path:
    """A project with a fleet environment `prod`, its store opened by the full path."""
    root = tmp_path / "p"
    root.mkdir()
    config = {
        "app": "shop",
        "run": {"command": "python3 app.py --port {port}"},
        "environments": {
            "prod": {"target": {"type": "ssh", "hosts": HOSTS, "ssh": SSH}},
            "dev": {"router": {"listen": "127.0.0.1:8081"}},
        },
    }
    (root / "rollwise.yaml").write_text(yaml.safe_dump(config))
    ctx = Context.open(root)
    target = ctx.env("prod").target
    fleetcache.write(ctx.state_dir, ctx.config_sha256, "prod", target.hosts, target.ssh)
    ctx.engine.dispose()
    return root


def test_the_cache_holds_what_a_connection_needs_of_the_validated_settings(
    fleet_project: Path,
) -> None:
    ctx = Context.open(fleet_project)
    target = ctx.env("prod").target
    cached = fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod")
    assert cached == fleetcache.Fleet(
        (
            fleetcache.CachedHost("10.9.0.2", 2222, "deploy", None, "web-1"),
            fleetcache.CachedHost("10.9.0.3", 22, None, "/keys/b", "10.9.0.3"),
        ),
        fleetcache.CachedSSH("root", "/keys/a", "/keys/known", 10.0, 120.0, 3, 7, "j"),
    )
    assert [(h.address, h.port, h.user, h.key_file, h.label) for h in target.hosts] == [
        (h.address, h.port, h.user, h.key_file, h.label) for h in cached.hosts
    ]
    assert fleetcache.read(ctx.state_dir, "0" * 64, "prod") is None  # another file
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "dev") is None  # no entry
    # another environment of the same file keeps prod's entry; another file drops it
    fleetcache.write(ctx.state_dir, ctx.config_sha256, "dev", cached.hosts[:1], cached.ssh)
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod") == cached
    fleetcache.write(ctx.state_dir, "1" * 64, "dev", cached.hosts[:1], cached.ssh)
    assert fleetcache.read(ctx.state_dir, "1" * 64, "prod") is None
    assert os.stat(ctx.state_dir / fleetcache.FILE).st_mode & 0o077 == 0
    (ctx.state_dir / fleetcache.FILE).write_text('{"stamp": ')
    assert fleetcache.read(ctx.state_dir, "1" * 64, "dev") is None
    ctx.engine.dispose()


def test_opening_a_project_leaves_its_fleets_hosts_and_a_failed_write_stops_nothing(
    fleet_project: Path,
) -> None:
    ctx = Context.open(fleet_project)
    state, cached = ctx.state_dir, fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod")
    ctx.engine.dispose()
    assert cached is not None
    (state / fleetcache.FILE).unlink()
    ctx = Context.open(fleet_project)
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod") == cached
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "dev") is None  # this machine
    ctx.engine.dispose()
    (state / fleetcache.FILE).unlink()
    (state / fleetcache.FILE).mkdir()  # cannot be replaced by a file
    ctx = Context.open(fleet_project)
    assert ctx.environment("prod").name == "prod"
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod") is None
    ctx.engine.dispose()


def test_a_cache_another_rollwise_wrote_does_not_count(
    fleet_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Context.open(fleet_project)
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod") is not None
    monkeypatch.setattr("rollwise.__version__", "0.0.0-other")
    assert fleetcache.read(ctx.state_dir, ctx.config_sha256, "prod") is None
    ctx.engine.dispose()


def declines(root: Path, *argv: str) -> bool:
    return quick.hosts_run(["hostname", "-e", "prod", "-C", str(root), *argv]) is None


def test_the_quick_path_declines_before_connecting_whenever_it_is_not_sure(
    fleet_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = fleet_project / ".rollwise"
    config = fleet_project / "rollwise.yaml"
    # every refusal below comes before any connection: the hosts do not exist
    assert declines(fleet_project, "--help")
    assert declines(fleet_project, "--host", "nowhere")
    assert declines(fleet_project, "-e", "dev")  # no entry: not a fleet
    assert declines(fleet_project.parent)  # no rollwise.yaml there
    with monkeypatch.context() as m:
        m.setenv(URL_ENV, "postgresql+psycopg://db/rollwise")
        assert declines(fleet_project)
    os.chmod(state, 0o755)
    assert declines(fleet_project)
    os.chmod(state, 0o700)
    os.chmod(state / "state.db", 0o644)
    assert declines(fleet_project)
    os.chmod(state / "state.db", 0o600)
    (state / "state.db").rename(state / "moved.db")
    assert declines(fleet_project)
    (state / "moved.db").rename(state / "state.db")
    config.write_text(config.read_text() + "\n# edited\n")
    assert declines(fleet_project)


def test_the_quick_path_loads_neither_the_full_cli_nor_pydantic_nor_sqlalchemy() -> None:
    """Checked in a new interpreter, where a hosts run is as cold as a user's."""
    code = (
        "import sys\n"
        "from rollwise.cli import quick\n"
        "assert quick.parse(['hostname']) is not None\n"
        "heavy = ('typer', 'rich', 'pydantic', 'sqlalchemy', 'yaml', 'rollwise.config.schema')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


ROWS: list[dict[str, Any]] = [
    {"name": "web1", "exit": 0, "stdout": "active\n", "stderr": "", "error": None},
    {"name": "web2", "exit": 3, "stdout": "a\n", "stderr": "b\n", "error": None},
    {"name": "web3", "exit": None, "stdout": "", "stderr": "", "error": "unreachable: x"},
]


def test_each_host_is_shown_as_the_full_cli_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from rollwise import hostsrun

    assert [hostsrun.segments(r) for r in ROWS] == [
        [("web1", "bold"), (": active", "")],
        [("web2", "bold"), (" (exit 3)", "red"), (":\na\nb", "")],
        [("web3: ", "bold"), ("failed", "red"), (" unreachable: x", "")],
    ]
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert quick._text(ROWS) == "web1: active\nweb2 (exit 3):\na\nb\nweb3: failed unreachable: x\n"
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert quick._text(ROWS[:1]) == "\x1b[1mweb1\x1b[0m: active\n"
    assert hostsrun.exit_code(ROWS[:1]) == 0 and hostsrun.exit_code(ROWS) == 1
    assert hostsrun.record("c", ROWS) == (
        "error",
        {"command": "c", "hosts": ["web1", "web2", "web3"], "failed": ["web2", "web3"]},
    )
