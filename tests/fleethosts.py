"""Real OpenSSH hosts for tests, each in its own Linux network namespace.

A `Fleet` puts `n` hosts on a private bridge (`10.200.<k>.0/24`, the bridge is `.1`, the hosts
`.2`, `.3`, ...). Each host runs its own `sshd` (root login by key only) with its own hostname,
its own `/srv` (the host's data: `Host.root` on this side), its own `/root` (`Host.home`) and an
`/etc/hosts` naming every host of the fleet (`gateway` is the test side), so clients see
distinct machines. DNS fails at once on the hosts (they have no way out). Clients verify host
keys against `Fleet.known_hosts` and log in as `root` with `Fleet.client_key`. A service a host
starts on `<address>:<port>` is reachable from the test process.

Needs root, `/usr/sbin/sshd` and `ip`: call `require_fleet()` (done by `fleet()`), which fails in
CI and skips elsewhere when they are missing.

Containers (`Fleet(..., containers=True)`): hosts run rootful podman over SSH. The hosts share
this machine's filesystem, so by default they would share one container storage (images,
containers, names); here each host gets its own instead (a test-bed property, set through
`SetEnv CONTAINERS_STORAGE_CONF=...` in its sshd_config): its images and containers live
under its /srv, its run state under its dir, so an image this machine has is not on a host
until it is pulled or loaded there. Podman's settings this machine needs (runc, ulimits the
sandbox allows) come from `CONTAINERS_CONF`. Containers use the host's network
(`--network host`); hosts enter their namespace with `nsenter --net` (not `ip netns exec`,
which mounts a fresh /sys without the cgroup hierarchies runc needs).

Concurrent fleets (several per process, several processes under pytest-xdist) never collide:
fleet `k` holds an exclusive lock on `/tmp/rollwise-fleet/<k>.lock` for its lifetime and only
uses `k` when none of its names (bridge `rwb<k>`, namespaces and veths `rw<k>h<i>`) and no
address in `10.200.<k>.0/24` exist yet. Teardown removes only what the fleet created.

    with fleet(3, tmp_path, small_disk={2: 4}) as f:
        (f.hosts[0].root / "marker").write_text("a")
        async with asyncssh.connect(f.hosts[0].address, **f.connect_kwargs()) as conn: ...
        f.stop_sshd(f.hosts[1]); f.start_sshd(f.hosts[1])  # refused, then back
        f.cut(f.hosts[1]); f.restore(f.hosts[1])            # unreachable (timeouts), then back
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

SSHD = "/usr/sbin/sshd"
LOCK_DIR = Path("/tmp/rollwise-fleet")
SUBNET_PREFIX = "10.200"
HOW = "apt-get install -y openssh-server iproute2, and run the tests as root"


def fleet_missing() -> list[str]:
    """What this machine lacks to run a fleet (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if shutil.which("ip") is None:
        missing.append("ip (iproute2)")
    if shutil.which("unshare") is None:
        missing.append("unshare (util-linux)")
    return missing


def require_fleet() -> None:
    """Fail in CI, skip elsewhere, when SSH hosts in network namespaces cannot be made here."""
    from tests.conftest import require

    missing = fleet_missing()
    require(not missing, "SSH test hosts (" + ", ".join(missing) + ")", HOW)


@dataclass
class Host:
    name: str  # its hostname (`hostname` on the host prints it)
    address: str  # its IPv4 address, reachable from the test process
    root: Path  # this directory is the host's /srv (its data)
    home: Path  # this directory is the host's /root
    netns: str  # its network namespace
    veth: str  # its link on the bridge (in the test's namespace)
    dir: Path  # its sshd_config, host key, sshd.log
    index: int  # its position in Fleet.hosts

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"


def _ip(
    *args: str, netns: str | None = None, check: bool = True, batch: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, input=batch, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed: {proc.stderr.strip()}\n{batch or ''}")
    return proc


def _existing_names() -> set[str]:
    links = _ip("-o", "link", "show").stdout
    names = {line.split(":", 2)[1].strip().split("@")[0] for line in links.splitlines()}
    netns = _ip("netns", "list").stdout
    names.update(line.split()[0] for line in netns.splitlines() if line.strip())
    return names


def _subnet_in_use(k: int) -> bool:
    net = f"{SUBNET_PREFIX}.{k}."
    return net in _ip("-4", "-o", "addr", "show").stdout or net in _ip("route", "show").stdout


class Fleet:
    """`n` SSH hosts on a private bridge; a context manager (teardown on exit)."""

    user = "root"

    def __init__(
        self,
        n: int,
        workdir: Path,
        *,
        small_disk: Mapping[int, int] | None = None,
        ready_timeout: float = 10.0,
        containers: bool = False,
    ) -> None:
        """`small_disk` maps a host index to a size in MiB: that host's /srv is a tmpfs of
        that size (for disk-full tests); `containers`: each host its own podman storage."""
        self.containers = containers
        if not 1 <= n <= 200:
            raise ValueError("a fleet has 1 to 200 hosts")
        self.n = n
        self.workdir = Path(workdir)
        self.small_disk = dict(small_disk or {})
        if any(not 0 <= i < n for i in self.small_disk):
            raise ValueError(f"small_disk indexes must be in 0..{n - 1}")
        self.ready_timeout = ready_timeout
        self.hosts: list[Host] = []
        self.known_hosts = self.workdir / "known_hosts"
        self.client_key = self.workdir / "client_key"  # private key; .pub next to it
        self.authorized_keys = self.workdir / "authorized_keys"
        self.k = -1  # subnet / name index, from the lock
        self.bridge = ""
        self.gateway = ""  # the bridge's address, the test side of the subnet
        self.up_seconds = 0.0  # time __enter__ took (namespaces, keys, sshd ready)
        self._lock: IO[str] | None = None
        self._sshd: dict[str, subprocess.Popen[bytes]] = {}
        self._tmpfs: list[Path] = []
        self._entered = False

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        start = time.monotonic()
        self._entered = True
        try:
            self._claim()
            self._make_files()
            self._make_network()
            for host in self.hosts:
                self._spawn(host)
            self._wait_ready(self.hosts)
        except BaseException:
            self.close()
            raise
        self.up_seconds = time.monotonic() - start
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _claim(self) -> None:
        """Take the first free index k: its lock, names and subnet unused."""
        LOCK_DIR.mkdir(mode=0o755, exist_ok=True)
        for k in range(1, 255):
            lock = open(LOCK_DIR / f"{k}.lock", "a+")  # noqa: SIM115 (held until close())
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                existing = _existing_names()
                ours = [f"rwb{k}", *(f"rw{k}h{i}" for i in range(1, self.n + 1))]
                if (
                    f"rwb{k}" in existing
                    or _subnet_in_use(k)
                    or any(name.startswith(f"rw{k}h") for name in existing)
                ):
                    # left by a process that died, or someone else's: never ours to touch
                    lock.close()
                    continue
                lock.seek(0)
                lock.truncate()
                lock.write(f"{os.getpid()} {' '.join(ours)}\n")  # who holds it, for people
                lock.flush()
            except BlockingIOError:  # another fleet holds k
                lock.close()
                continue
            except BaseException:
                lock.close()
                raise
            self._lock, self.k = lock, k
            break
        else:
            raise RuntimeError(
                f"no free fleet subnet {SUBNET_PREFIX}.1-254.0/24 (locks in {LOCK_DIR})"
            )
        self.bridge = f"rwb{self.k}"
        self.gateway = f"{SUBNET_PREFIX}.{self.k}.1"
        for i in range(self.n):
            name = f"h{i + 1}"
            d = self.workdir / name
            self.hosts.append(
                Host(
                    name=name,
                    address=f"{SUBNET_PREFIX}.{self.k}.{i + 2}",
                    root=d / "srv",
                    home=d / "root",
                    netns=f"rw{self.k}{name}",
                    veth=f"rw{self.k}{name}",
                    dir=d,
                    index=i,
                )
            )

    def _make_files(self) -> None:
        import asyncssh

        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        client = asyncssh.generate_private_key("ssh-ed25519", comment="rollwise-test-client")
        client.write_private_key(str(self.client_key))
        self.client_key.chmod(0o600)
        client.write_public_key(str(self.client_key) + ".pub")
        self.authorized_keys.write_bytes(client.export_public_key())
        known = []
        for host in self.hosts:
            for d in (host.dir, host.root, host.home):
                d.mkdir(parents=True, exist_ok=True)
            key = asyncssh.generate_private_key("ssh-ed25519", comment=host.name)
            key_path = host.dir / "ssh_host_ed25519_key"
            key_path.write_bytes(key.export_private_key())
            key_path.chmod(0o600)
            pub = key.export_public_key().decode().strip()
            (host.dir / "ssh_host_ed25519_key.pub").write_text(pub + "\n")
            known.append(f"{host.address} {pub}\n")
            (host.dir / "sshd_config").write_text(
                f"ListenAddress {host.address}\n"
                "Port 22\n"
                f"HostKey {key_path}\n"
                f"PidFile {host.dir / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {self.authorized_keys}\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "MaxStartups 500:30:600\n"
                "MaxSessions 100\n"
                "AllowStreamLocalForwarding yes\n"
                "AllowTcpForwarding yes\n"
                "Subsystem sftp internal-sftp\n"
                "LogLevel INFO\n" + self._podman(host)
            )
            if host.index in self.small_disk:
                subprocess.run(
                    [
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        f"size={self.small_disk[host.index]}m,mode=0755",
                        f"rwfleet{self.k}{host.name}",
                        str(host.root),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
                self._tmpfs.append(host.root)
        self.known_hosts.write_text("".join(known))
        # names resolve locally on every host (hosts know each other by name); DNS fails fast:
        # the namespaces have no way out, and a lookup (e.g. http.server's getfqdn) would
        # otherwise wait for the machine's resolver to time out
        names = "".join(f"{h.address} {h.name}\n" for h in self.hosts)
        for host in self.hosts:
            (host.dir / "hosts").write_text(f"127.0.0.1 localhost\n{self.gateway} gateway\n{names}")
            (host.dir / "resolv.conf").write_text(
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
            )

    def _podman(self, host: Host) -> str:
        """sshd_config lines giving the host its own container storage (see the module)."""
        if not self.containers:
            return ""
        (host.dir / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            f'[engine]\nruntime = "runc"\ntmp_dir = "{host.dir}/libpod"\n'
            # its own locks: a fresh storage frees every lock of the machine-wide shm segment
            # at its first start, under the feet of containers of the machine's own storage
            'lock_type = "file"\n'
        )
        (host.dir / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "/srv/containers"\n'
            f'runroot = "{host.dir}/containers-run"\n'
        )
        return (
            f"SetEnv CONTAINERS_CONF={host.dir / 'containers.conf'} "
            f"CONTAINERS_STORAGE_CONF={host.dir / 'storage.conf'}\n"
        )

    def _make_network(self) -> None:
        root_ns = [
            f"link add {self.bridge} type bridge",
            f"addr add {self.gateway}/24 dev {self.bridge}",
            f"link set {self.bridge} up",
        ]
        for host in self.hosts:
            root_ns += [
                f"netns add {host.netns}",
                f"link add {host.veth} type veth peer name eth0 netns {host.netns}",
                f"link set {host.veth} master {self.bridge} up",
            ]
        _ip("-batch", "-", batch="\n".join(root_ns) + "\n")
        for host in self.hosts:
            _ip(
                "-batch",
                "-",
                netns=host.netns,
                batch=(
                    "link set lo up\n"
                    f"addr add {host.address}/24 dev eth0\n"
                    "link set eth0 up\n"
                    f"route add default via {self.gateway}\n"
                ),
            )

    def _in_host(self, host: Host, argv: Sequence[str]) -> list[str]:
        """argv run as on the host: its netns, hostname, /srv, /root, /etc/hosts and
        /etc/resolv.conf."""
        binds = {
            host.root: "/srv",
            host.home: "/root",
            host.dir / "hosts": "/etc/hosts",
            host.dir / "resolv.conf": "/etc/resolv.conf",
        }
        setup = (
            f"hostname {shlex.quote(host.name)} && "
            + "".join(
                f"mount --bind {shlex.quote(str(src))} {dst} && " for src, dst in binds.items()
            )
            + 'exec "$@"'
        )
        return [
            "nsenter",
            f"--net=/run/netns/{host.netns}",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            setup,
            "sh",
            *argv,
        ]

    def _spawn(self, host: Host) -> None:
        # `nsenter`, `unshare` and `sh` all exec: the Popen's pid is sshd's
        self._sshd[host.name] = subprocess.Popen(
            self._in_host(
                host, [SSHD, "-D", "-f", str(host.dir / "sshd_config"), "-E", str(host.log)]
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ready(self, hosts: Sequence[Host]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        pending = list(hosts)
        while pending:
            for host in list(pending):
                proc = self._sshd[host.name]
                if proc.poll() is not None:
                    log = host.log.read_text() if host.log.exists() else ""
                    raise RuntimeError(f"sshd of {host.name} exited {proc.returncode}:\n{log}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((host.address, 22), timeout=0.5),
                ):
                    pending.remove(host)
            if pending:
                if time.monotonic() > deadline:
                    names = ", ".join(h.name for h in pending)
                    raise TimeoutError(f"sshd not accepting after {self.ready_timeout}s: {names}")
                time.sleep(0.005)

    def close(self) -> None:
        """Tear down what this fleet created; safe to call again or after a partial start."""
        if not self._entered:
            return
        self._entered = False
        for name in list(self._sshd):
            self._stop(name)
        if self.k >= 0:
            leftovers: list[int] = []
            for host in self.hosts:  # processes started over SSH (setsid ... &) still in there
                out = _ip("netns", "pids", host.netns, check=False).stdout
                leftovers += [int(p) for p in out.split() if p.isdigit()]
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while leftovers and time.monotonic() < deadline:
                leftovers = [p for p in leftovers if _alive(p)]
                time.sleep(0.01)
            undo = [f"link del {h.veth}" for h in self.hosts]
            undo += [f"netns del {h.netns}" for h in self.hosts]
            undo.append(f"link del {self.bridge}")
            _ip("-force", "-batch", "-", check=False, batch="\n".join(undo) + "\n")
        for mount in self._tmpfs:
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        self._tmpfs = []
        if self._lock is not None:
            self._lock.close()  # releases the flock: k is free again
            self._lock = None

    # -- faults and helpers for tests ----------------------------------------------------

    def _stop(self, name: str) -> None:
        proc = self._sshd.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_sshd(self, host: Host) -> None:
        """Stop the host's sshd (new connections are refused); open sessions carry on."""
        self._stop(host.name)

    def start_sshd(self, host: Host) -> None:
        """Start the host's sshd again and wait until it accepts connections."""
        if host.name in self._sshd and self._sshd[host.name].poll() is None:
            return
        self._spawn(host)
        self._wait_ready([host])

    def cut(self, host: Host) -> None:
        """Take the host's link down: it is unreachable (connects time out, nothing refuses)."""
        _ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        """Bring the host's link back up after `cut`."""
        _ip("link", "set", host.veth, "up")

    def exec(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 30,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as on the host (its netns, hostname, /srv, /root), without SSH."""
        return subprocess.run(
            self._in_host(host, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `asyncssh.connect(host.address, **...)`."""
        return {
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
        }

    def ssh_argv(self, host: Host, *command: str) -> list[str]:
        """An OpenSSH client command line for the host (strict host key checking)."""
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            f"{self.user}@{host.address}",
            *command,
        ]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@contextlib.contextmanager
def fleet(n: int, tmp_path: Path, **kw: Any) -> Iterator[Fleet]:
    """`n` SSH hosts for a test (skips, or fails in CI, when the machine cannot make them);
    keyword arguments go to `Fleet`."""
    require_fleet()
    with Fleet(n, Path(tempfile.mkdtemp(prefix="fleet", dir=tmp_path)), **kw) as f:
        yield f
