"""SSH to the hosts of a fleet, with asyncssh.

One connection per host, opened on first use and reused for the whole operation; every host
key is checked against `ssh.known_hosts` (an unknown or changed key is refused, naming the
host and the key's fingerprint). Connecting is retried with backoff; a command is never
retried, since it may have run. The controller is synchronous: `Hosts` runs asyncssh on
its own event loop thread and waits for each call, and `each` works on many hosts at once,
at most `ssh.concurrency` at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import asyncssh

from rollwise import retry
from rollwise.errors import ConfigError, IntegrityError, RollwiseError, Unreachable

T = TypeVar("T")


class Host(Protocol):
    """What a connection needs of a host: a `HostConfig`, or the quick path's cached one."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def label(self) -> str: ...


class Options(Protocol):
    """What a connection needs of the `ssh` settings (an `Options`)."""

    @property
    def user(self) -> str: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def known_hosts(self) -> str: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def command_timeout_s(self) -> float: ...
    @property
    def connect_attempts(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def jump_host(self) -> str | None: ...


H = TypeVar("H", bound=Host)
MAX_BACKOFF_S = 4.0  # between connects: 0.5 s, 1 s, 2 s, 4 s, 4 s...
UNREACHABLE = (TimeoutError, OSError, asyncssh.Error)  # a connect that may work later


class HostError(RollwiseError):
    """A host could not be reached or refused us; `where` names it."""


@dataclass(frozen=True)
class Result:
    host: str
    exit: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 5) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-lines:])


def known_hosts_path(cfg: Options) -> Path:
    return Path(os.path.expanduser(cfg.known_hosts))


def where(host: Host) -> str:
    return f"host {host.label} ({host.address}:{host.port})"


class Hosts(Generic[H]):
    """Connections to some hosts of one environment, closed by `close()` (or `with`)."""

    def __init__(self, hosts: Iterable[H], cfg: Options, env: str) -> None:
        self.hosts = list(hosts)
        self.cfg = cfg
        self.env = env
        self.conns: dict[str, asyncssh.SSHClientConnection] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        # hosts that stopped answering during this operation: later calls fail at once
        self.down: dict[str, Unreachable] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="rollwise-ssh", daemon=True
        )
        self.thread.start()
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self._known: asyncssh.SSHKnownHosts | None = None  # read at the first connect, once

    def __enter__(self) -> Hosts[H]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            self._sync(self._close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            self.loop.close()

    async def _close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        for conn in self.conns.values():
            await conn.wait_closed()
        self.conns.clear()

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    # -- synchronous API for the controller -------------------------------------------
    def each(
        self, fn: Callable[[H], Awaitable[T]], hosts: Iterable[H] | None = None
    ) -> dict[str, T | RollwiseError]:
        """`fn` on every host at once (at most `ssh.concurrency`); per host label, its result
        or the error that stopped it."""
        chosen = list(self.hosts if hosts is None else hosts)

        async def one(h: H) -> T | RollwiseError:
            async with self.sem:
                try:
                    return await fn(h)
                except RollwiseError as e:
                    return e
                except (TimeoutError, OSError, asyncssh.Error) as e:
                    return HostError(f"failed: {_reason(e)}", where=where(h))

        async def every() -> list[T | RollwiseError]:
            return list(await asyncio.gather(*(one(h) for h in chosen)))

        return dict(zip((h.label for h in chosen), self._sync(every()), strict=True))

    def all(
        self, fn: Callable[[H], Awaitable[T]], hosts: Iterable[H] | None = None
    ) -> dict[str, T]:
        """`each`, raising the first host's error (after every host has finished)."""
        got = self.each(fn, hosts)
        errors = [e for e in got.values() if isinstance(e, RollwiseError)]
        if errors:
            if len(errors) > 1:
                errors[0].hint = (errors[0].hint + "; " if errors[0].hint else "") + (
                    f"{len(errors) - 1} more host(s) failed: "
                    + ", ".join(e.where for e in errors[1:])
                )
            raise errors[0]
        return {k: v for k, v in got.items() if not isinstance(v, RollwiseError)}

    def run(
        self,
        host: H,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        stdin: Path | None = None,
    ) -> Result:
        return self._sync(
            self.arun(host, command, check=check, timeout=timeout, input=input, stdin=stdin)
        )

    def call(self, host: H, sock: str, op: str, **args: Any) -> Any:
        return self._sync(self.acall(host, sock, op, **args))

    # -- the same, as coroutines for `each` ----------------------------------------------
    async def arun(
        self,
        host: H,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        stdin: Path | None = None,
    ) -> Result:
        """`input`: text for the command's stdin (values it reads, never in its arguments);
        `stdin`: a local file streamed to it as bytes (an image archive)."""
        conn = await self.connect(host)
        io: dict[str, Any] = (
            {"input": input} if stdin is None else {"stdin": str(stdin), "encoding": None}
        )
        try:
            r = await asyncio.wait_for(
                conn.run(command, check=False, **io), timeout or self.cfg.command_timeout_s
            )
        except TimeoutError:
            raise self._lost(
                host,
                f"`{_short(command)}` did not finish within "
                f"{timeout or self.cfg.command_timeout_s:g} s",
            ) from None
        except (OSError, asyncssh.Error) as e:
            raise self._lost(host, f"the connection broke: {_reason(e)}") from None
        res = Result(
            host.label,
            int(r.exit_status if r.exit_status is not None else 255),
            _text(r.stdout),
            _text(r.stderr),
        )
        if check and res.exit != 0:
            raise HostError(
                f"`{_short(command)}` exited {res.exit}: {res.tail()}", where=where(host)
            )
        return res

    async def acall(self, host: H, sock: str, op: str, **args: Any) -> Any:
        """One request to the agent listening on `sock` on the host (through the SSH
        connection, a direct stream-local channel): the same JSON lines as the local agent."""
        conn = await self.connect(host)
        timeout = float(args.pop("timeout", self.cfg.command_timeout_s))
        try:
            reader, writer = await asyncio.wait_for(
                conn.open_unix_connection(sock), self.cfg.connect_timeout_s
            )
        except asyncssh.ChannelOpenError as e:
            raise HostError(
                f"its agent does not answer at {sock}: {e.reason}",
                where=where(host),
                hint="`rollwise hosts check` shows each host's agent; a deploy starts it again",
            ) from None
        except TimeoutError:
            raise self._lost(
                host, f"no channel to its agent within {self.cfg.connect_timeout_s:g} s"
            ) from None
        except (OSError, asyncssh.Error) as e:
            raise self._lost(host, f"the connection broke: {_reason(e)}") from None
        try:
            writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            raise self._lost(
                host, f"its agent did not answer {op!r} within {timeout:g} s"
            ) from None
        except (OSError, asyncssh.Error) as e:
            raise self._lost(host, f"the connection broke: {_reason(e)}") from None
        finally:
            writer.close()
        if not line:
            raise HostError(f"its agent closed the connection during {op!r}", where=where(host))
        reply = json.loads(line)
        if not reply["ok"]:
            raise HostError(f"its agent refused {op!r}: {reply['error']}", where=where(host))
        return reply["result"]

    async def put(self, host: H, local: Path, remote: str) -> None:
        """Copy a file to the host (to a temporary name, renamed when complete)."""
        conn = await self.connect(host)
        tmp = f"{remote}.part"
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), tmp)
                await sftp.posix_rename(tmp, remote)
        except (asyncssh.SFTPError, OSError) as e:
            raise HostError(
                f"copying {local.name} to {remote} failed: {_reason(e)}",
                where=where(host),
                hint="free space on the host (`df -h`) or fix the folder's "
                "permissions; nothing was switched",
            ) from None

    def _lost(self, host: H, what: str) -> Unreachable:
        """The host stopped answering: remembered, so that later calls fail at once."""
        e = Unreachable(
            f"unreachable: {what}",
            where=where(host),
            hint="check the host and its network; what it runs was not changed "
            "by this step, and `rollwise recover` finishes the job once it answers",
        )
        self.down[host.label] = e
        if (conn := self.conns.pop(host.label, None)) is not None:
            conn.abort()
        return e

    async def connect(self, host: H) -> asyncssh.SSHClientConnection:
        if (e := self.down.get(host.label)) is not None:
            raise Unreachable(e.message, where=e.where, hint=e.hint)
        lock = self.locks.setdefault(host.label, asyncio.Lock())
        async with lock:
            if (conn := self.conns.get(host.label)) is not None:
                return conn
            conn = await self._connect(host)
            self.conns[host.label] = conn
            return conn

    async def _connect(self, host: H) -> asyncssh.SSHClientConnection:
        key_file = host.key_file or self.cfg.key_file
        options: dict[str, Any] = {
            "port": host.port,
            "username": host.user or self.cfg.user,
            "known_hosts": self._trusted(),
            "connect_timeout": self.cfg.connect_timeout_s,
        }
        if key_file:
            options["client_keys"] = [os.path.expanduser(key_file)]
        if self.cfg.jump_host:
            options["tunnel"] = self.cfg.jump_host

        async def connect() -> asyncssh.SSHClientConnection:
            try:
                return await asyncssh.connect(host.address, **options)
            except asyncssh.HostKeyNotVerifiable:
                raise await self._key_refused(host) from None
            except asyncssh.PermissionDenied:
                raise ConfigError(
                    f"refused user {options['username']!r}"
                    + (
                        f" with key {key_file}"
                        if key_file
                        else " with the SSH agent's and ~/.ssh keys"
                    ),
                    where=where(host),
                    hint="check `user` and `key_file` for this host (or `ssh.user`, "
                    "`ssh.key_file`), and the host's authorized_keys",
                ) from None

        try:
            return await retry.acall(
                connect,
                attempts=self.cfg.connect_attempts,
                on_error=lambda e: isinstance(e, UNREACHABLE),
                wait=lambda n, _: retry.backoff_s(n, cap=MAX_BACKOFF_S),
            )
        except UNREACHABLE as e:
            down = Unreachable(
                f"unreachable after {self.cfg.connect_attempts} attempt(s): {_reason(e)}",
                where=where(host),
                hint="check that the host is up and sshd listens on "
                f"{host.address}:{host.port}; nothing was changed on it",
            )
            self.down[host.label] = down
            raise down from None

    def _trusted(self) -> asyncssh.SSHKnownHosts:
        """`ssh.known_hosts`, parsed once per operation (it is read for every host otherwise:
        a 100-host file, 100 times, is 80 ms)."""
        if self._known is None:
            self._known = _known_hosts(known_hosts_path(self.cfg))
        return self._known

    async def _key_refused(self, host: H) -> RollwiseError:
        path = known_hosts_path(self.cfg)
        try:
            fp = (await fingerprint(host, self.cfg)).fingerprint
        except (TimeoutError, OSError, asyncssh.Error) as e:
            fp = f"(unreadable: {_reason(e)})"
        hint = (
            f"check the fingerprint with the host's owner (on the host: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub), then `rollwise hosts trust {host.label} "
            f"-e {self.env} --fingerprint {fp}`"
        )
        if known_entry(path, host):
            return IntegrityError(
                f"its host key CHANGED: it now offers {fp}, which {path} does not have for "
                "it. Someone may be intercepting the connection, or the host was reinstalled",
                where=where(host),
                hint=hint + " (after removing the old line)",
            )
        return IntegrityError(f"its host key {fp} is not in {path}", where=where(host), hint=hint)


@dataclass(frozen=True)
class HostKey:
    line: str  # a known_hosts line for the host
    fingerprint: str


async def fingerprint(host: Host, cfg: Options) -> HostKey:
    """The key the host offers now (not trusted by reading it)."""
    key = await asyncio.wait_for(
        asyncssh.get_server_host_key(host.address, host.port, tunnel=cfg.jump_host or ()),
        cfg.connect_timeout_s,
    )
    if key is None:
        raise HostError("offered no host key", where=where(host))
    name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
    line = f"{name} {key.export_public_key('openssh').decode().strip()}"
    return HostKey(line, key.get_fingerprint("sha256"))


def known_entry(path: Path, host: Host) -> bool:
    """Whether `path` has any key for the host (as ssh matches it)."""
    if not path.exists():
        return False
    trusted = asyncssh.read_known_hosts(str(path))
    found = trusted.match(host.address, "", host.port)
    return any(found[:3])


def _known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    return (
        asyncssh.read_known_hosts(str(path)) if path.exists() else asyncssh.import_known_hosts("")
    )


def _text(out: str | bytes | None) -> str:
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


def _short(command: str) -> str:
    return command if len(command) <= 80 else command[:77] + "..."


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "unknown error"
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, asyncssh.Error):
        return e.reason or type(e).__name__
    return str(e) or type(e).__name__
