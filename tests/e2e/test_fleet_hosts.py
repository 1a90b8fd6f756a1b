"""The SSH test hosts (tests/fleethosts.py) are real, distinct and verifiable machines:
each answers with its own hostname and /srv, unknown host keys are refused, a stopped sshd
or a cut link makes it unreachable, and its services are reachable from the test."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncssh
import pytest

from tests.fleethosts import Fleet, Host, fleet

pytestmark = pytest.mark.xdist_group("fleet_hosts")


async def run(f: Fleet, host: Host, command: str, **kw: object) -> str:
    async with asyncssh.connect(
        host.address, **{**f.connect_kwargs(), "connect_timeout": 5, **kw}
    ) as conn:
        result = await conn.run(command, check=True, timeout=10)
    assert isinstance(result.stdout, str)
    return result.stdout


def test_given_five_hosts_when_asked_over_ssh_then_each_answers_with_its_own_name_and_srv(
    tmp_path: Path,
) -> None:
    with fleet(5, tmp_path, small_disk={4: 2}) as f:
        assert f.up_seconds < 5, f"5 hosts took {f.up_seconds:.2f}s to come up"
        assert len({h.address for h in f.hosts}) == len({h.name for h in f.hosts}) == 5
        for h in f.hosts:
            (h.root / "marker").write_text(f"marker-of-{h.name}\n")

        async def ask_all() -> list[str]:
            return await asyncio.gather(*(run(f, h, "hostname; cat /srv/marker") for h in f.hosts))

        answers = asyncio.run(ask_all())
        assert answers == [f"{h.name}\nmarker-of-{h.name}\n" for h in f.hosts]

        # exec runs as on the host too (no SSH), and a file written there lands in its root
        done = f.exec(f.hosts[1], ["sh", "-c", "hostname; echo written > /srv/out"], check=True)
        assert done.stdout == f"{f.hosts[1].name}\n"
        assert (f.hosts[1].root / "out").read_text() == "written\n"
        assert not (f.hosts[0].root / "out").exists()

        # the small disk is full at 2 MiB; the others are not
        small, big = f.hosts[4], f.hosts[3]
        fill = "head -c 3145728 /dev/zero > /srv/big"
        assert f.exec(small, ["sh", "-c", fill]).returncode != 0
        assert f.exec(big, ["sh", "-c", fill]).returncode == 0


def test_given_a_host_key_not_in_known_hosts_when_connecting_then_refused(tmp_path: Path) -> None:
    with fleet(2, tmp_path) as f:
        a, b = f.hosts
        lines = f.known_hosts.read_text().splitlines()
        assert any(line.startswith(f"{a.address} ") for line in lines)
        missing = tmp_path / "known_hosts_without_a"
        missing.write_text(
            "".join(f"{line}\n" for line in lines if not line.startswith(f"{a.address} "))
        )
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            asyncio.run(run(f, a, "true", known_hosts=str(missing)))
        # b's key presented as a's: a different key for the same address is refused as well
        b_key = (b.dir / "ssh_host_ed25519_key.pub").read_text()
        wrong = tmp_path / "known_hosts_wrong_key"
        wrong.write_text(f"{a.address} {b_key}")
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            asyncio.run(run(f, a, "true", known_hosts=str(wrong)))
        assert asyncio.run(run(f, a, "hostname")) == f"{a.name}\n"  # the right one works


def test_given_sshd_stopped_or_link_cut_when_connecting_then_fails_until_brought_back(
    tmp_path: Path,
) -> None:
    with fleet(2, tmp_path) as f:
        a, b = f.hosts
        f.stop_sshd(a)
        started = time.monotonic()
        with pytest.raises(OSError):  # refused: the machine is up, sshd is not
            asyncio.run(run(f, a, "true", connect_timeout=3))
        assert time.monotonic() - started < 3
        assert asyncio.run(run(f, b, "hostname")) == f"{b.name}\n"  # the other is unaffected
        f.start_sshd(a)
        assert asyncio.run(run(f, a, "hostname")) == f"{a.name}\n"

        f.cut(a)
        with pytest.raises((asyncio.TimeoutError, OSError)):  # no answer at all
            asyncio.run(run(f, a, "true", connect_timeout=1))
        f.restore(a)
        assert asyncio.run(run(f, a, "hostname")) == f"{a.name}\n"


def test_given_a_service_started_over_ssh_when_fetched_from_the_test_then_reachable(
    tmp_path: Path,
) -> None:
    with fleet(1, tmp_path) as f:
        (h,) = f.hosts
        (h.root / "marker").write_text(f"served by {h.name}")
        pid = asyncio.run(
            run(
                f,
                h,
                f"setsid python3 -m http.server --bind {h.address} --directory /srv 8000 "
                "</dev/null >/dev/null 2>&1 & echo $!",
            )
        ).strip()
        assert pid.isdigit()
        url = f"http://{h.address}:8000/marker"
        deadline = time.monotonic() + 5
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        assert body == f"served by {h.name}"
        asyncio.run(run(f, h, f"kill {pid}"))
        assert refused_within(url, seconds=5), f"{url} still answers after kill"


def refused_within(url: str, seconds: float) -> bool:
    """True once connecting to url is refused (a reset while the server dies is not)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False
