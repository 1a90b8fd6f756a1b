"""Fleet settings are checked when rollwise.yaml is read, and the agent a host runs needs
nothing beyond Python's standard library."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from rollwise.config.schema import TargetConfig
from rollwise.targets.ssh import Layout, agent_bundle


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ({"type": "ssh"}, "needs `hosts`"),
        ({"type": "local", "hosts": [{"address": "10.0.0.2"}]}, "`hosts` needs `type: ssh`"),
        (
            {"type": "ssh", "hosts": [{"address": "10.0.0.2"}, {"address": "10.0.0.2"}]},
            "host '10.0.0.2' is listed twice",
        ),
        ({"type": "ssh", "hosts": [{"address": "a b"}]}, "use letters, digits"),
        ({"type": "ssh", "hosts": [{"address": "h"}], "ssh": {"root": "srv"}}, "absolute path"),
        (
            {"type": "ssh", "hosts": [{"address": "h"}], "ssh": {"root": "/" + "x" * 70}},
            "at most 60",
        ),
    ],
)
def test_bad_fleet_settings_are_refused_with_what_to_write(target: dict, says: str) -> None:
    with pytest.raises(ValidationError) as e:
        TargetConfig.model_validate(target)
    assert says in str(e.value)


@pytest.mark.parametrize(
    ("batches", "says"),
    [
        ([1, "10%"], "must end with '100%'"),
        ([2, 1, "100%"], "must increase"),
        (["50%", "10%", "100%"], "must increase"),
        ([0, "100%"], "a count of instances"),
        (["150%"], "a count of instances"),
    ],
)
def test_bad_rolling_batches_are_refused(batches: list, says: str) -> None:
    from rollwise.config.schema import StrategyConfig

    with pytest.raises(ValidationError) as e:
        StrategyConfig(type="rolling", batches=batches)
    assert says in str(e.value)


def test_hosts_default_to_the_ssh_settings_and_bind_to_their_address() -> None:
    t = TargetConfig.model_validate(
        {
            "type": "ssh",
            "hosts": [
                {"address": "10.0.0.2", "name": "web1"},
                {"address": "10.0.0.3", "bind": "10.1.0.3"},
            ],
        }
    )
    assert [(h.label, h.listen_host) for h in t.hosts] == [
        ("web1", "10.0.0.2"),
        ("10.0.0.3", "10.1.0.3"),
    ]
    assert t.host("web1").address == "10.0.0.2" and t.ssh.user == "root"
    layout = Layout(t, "shop", "prod")
    assert layout.sock == "/srv/rollwise/shop/prod/agent.sock"
    assert layout.lib == f"/srv/rollwise/lib/{agent_bundle()[1][:16]}"


def test_the_agent_bundle_is_reproducible_and_runs_on_the_standard_library(tmp_path: Path):
    data, digest = agent_bundle()
    agent_bundle.cache_clear()
    assert agent_bundle() == (data, digest)  # the same bytes each time: a host's folder name
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path, filter="data")
    # -S: no site-packages, so pydantic, typer, SQLAlchemy... are out of reach
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys, rollwise.agent.server; "
            "print(sorted(m for m in ('pydantic', 'typer', 'sqlalchemy', 'cryptography') "
            "if m in sys.modules))",
        ],
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
    usage = subprocess.run(
        [sys.executable, "-S", "-m", "rollwise.agent", "--help"],
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 0 and "--env-dir" in usage.stdout


def _tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)


def test_a_host_python_without_the_data_filter_gets_the_same_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rollwise import artifacts
    from rollwise.errors import IntegrityError

    monkeypatch.delattr(tarfile, "data_filter")  # Python 3.11 before 3.11.4 (Debian 12's)
    ok = tarfile.TarInfo("app/run.sh")
    ok.size, ok.mode = 1, 0o4755
    link = tarfile.TarInfo("app/current")
    link.type, link.linkname = tarfile.SYMTYPE, "run.sh"
    _tar(tmp_path / "ok.tar.gz", [ok, link])
    out = artifacts.unpack(tmp_path / "ok.tar.gz", "sha", tmp_path / "ok")
    assert (out / "app" / "run.sh").stat().st_mode & 0o7777 == 0o755  # no set-uid bit
    assert (out / "app" / "current").resolve() == (out / "app" / "run.sh").resolve()
    for name, bad in [("up", tarfile.TarInfo("../evil")), ("abs", tarfile.TarInfo("/etc/evil"))]:
        bad.size = 1
        _tar(tmp_path / f"{name}.tar.gz", [bad])
        with pytest.raises(IntegrityError, match="inside the release"):
            artifacts.unpack(tmp_path / f"{name}.tar.gz", "sha", tmp_path / name)
    out_link = tarfile.TarInfo("app/passwd")
    out_link.type, out_link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    _tar(tmp_path / "link.tar.gz", [out_link])
    with pytest.raises(IntegrityError, match="links outside the release"):
        artifacts.unpack(tmp_path / "link.tar.gz", "sha", tmp_path / "link")
    dev = tarfile.TarInfo("app/null")
    dev.type = tarfile.CHRTYPE
    _tar(tmp_path / "dev.tar.gz", [dev])
    with pytest.raises(IntegrityError, match="not a plain file"):
        artifacts.unpack(tmp_path / "dev.tar.gz", "sha", tmp_path / "dev")
