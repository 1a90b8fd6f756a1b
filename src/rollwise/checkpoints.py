"""Signed checkpoints of the audit chain, kept outside the state store.

A checkpoint says "the log held `count` events, and event `count` hashed to `head`". It is
signed with an Ed25519 key kept outside `.rollwise/` and names the checkpoint before it, so
checkpoints chain too (RFC 6962 tree heads, CloudTrail digest files). Whoever can edit the
state store can cut the log's tail or empty it, but cannot sign a checkpoint that agrees.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import logging.handlers
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import Engine

from rollwise.chain import GENESIS
from rollwise.config.schema import ProjectConfig
from rollwise.errors import ConfigError, IntegrityError, RollwiseError
from rollwise.secrets import Secret

if TYPE_CHECKING:
    import httpx

KEY_ENV = "ROLLWISE_AUDIT_KEY_FILE"
FILE_ENV = "ROLLWISE_AUDIT_CHECKPOINT_FILE"
FORMAT = 1
TAIL_BYTES = 64 * 1024  # a checkpoint line is ~450 bytes; the newest is within the last 64 KiB
STATE_DIR_NAME = ".rollwise"


@contextmanager
def _os_errors(path: Path, doing: str) -> Iterator[None]:
    """An OSError (permissions, full disk) as an error that names the file."""
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise  # the callers deal with these
    except OSError as e:
        raise RollwiseError(
            f"cannot {doing}: {e.strerror}",
            where=str(path),
            hint="check the folder's owner and permissions, or choose other "
            "paths (audit.* in rollwise.yaml, docs/audit.md)",
        ) from e


@dataclass(frozen=True)
class Checkpoint:
    """The log held `count` events, event `count` hashing to `head` (GENESIS when empty),
    at `ts`. `seq` is its place in the checkpoint file (from 1), `prev` the digest of the
    checkpoint before it (GENESIS for the first), `key_id` names the signing key, and
    `sig` signs everything else."""

    seq: int
    count: int
    head: str
    ts: float
    prev: str
    app: str
    key_id: str
    sig: str = ""
    v: int = FORMAT

    def body(self) -> bytes:
        """What is signed and hashed: every field but `sig`, as canonical JSON."""
        fields = asdict(self)
        del fields["sig"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.body()).hexdigest()

    def when(self) -> str:
        try:
            return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.ts))
        except (OverflowError, OSError, ValueError):  # an edited line: show what it says
            return f"ts {self.ts!r}"

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n"

    def label(self) -> str:
        """How messages name it: `checkpoint #5 of 2026-11-25 06:15:22Z`."""
        return f"checkpoint #{self.seq} of {self.when()}"


_TYPES: dict[str, type | tuple[type, ...]] = {
    "seq": int,
    "count": int,
    "head": str,
    "ts": (int, float),
    "prev": str,
    "app": str,
    "key_id": str,
    "sig": str,
    "v": int,
}


def parse(line: str) -> Checkpoint:
    """One line of a checkpoint file; ValueError when it is not a checkpoint."""
    data = json.loads(line)
    if not isinstance(data, dict) or set(data) != set(_TYPES):
        raise ValueError(f"expected a JSON object with the keys {', '.join(sorted(_TYPES))}")
    wrong = [k for k, t in _TYPES.items() if not isinstance(data[k], t)]
    if wrong:
        raise ValueError(f"wrong type of {', '.join(wrong)}")
    return Checkpoint(**{**data, "ts": float(data["ts"])})


# --- keys -----------------------------------------------------------------------------


def key_id(pub: Ed25519PublicKey) -> str:
    """A short name of a public key: the start of the sha256 of its raw bytes."""
    raw = pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, cp: Checkpoint) -> Checkpoint:
    return replace(cp, sig=base64.b64encode(key.sign(cp.body())).decode())


def signed_by(pub: Ed25519PublicKey, cp: Checkpoint) -> bool:
    try:
        pub.verify(base64.b64decode(cp.sig, validate=True), cp.body())
    except (InvalidSignature, ValueError):
        return False
    return True


def create_key(path: Path) -> Ed25519PrivateKey:
    """A new signing key at `path`, mode 0600 (a new folder 0700); never replaces one."""
    try:
        with _os_errors(path, "create the audit key"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            "an audit key is already there; not replacing it",
            where=str(path),
            hint="checkpoints signed by it would no longer verify with a "
            "new one; keep it, or move it aside to start a new chain",
        ) from None
    key = Ed25519PrivateKey.generate()
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        os.fsync(f.fileno())
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`; refused when others may read it (like ssh does)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"the audit key is readable by others (mode {mode:o})",
            where=str(path),
            hint=f"chmod 600 {path}",
        )
    try:
        key = ser.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as e:
        raise ConfigError(
            f"not a PEM private key: {e}",
            where=str(path),
            hint="point audit.key_file (or ROLLWISE_AUDIT_KEY_FILE) at the key "
            "`rollwise audit keygen` created",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            "the audit key must be an Ed25519 key",
            where=str(path),
            hint="create one with `rollwise audit keygen`",
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        pub = ser.load_pem_public_key(path.read_bytes())
    except ValueError as e:
        raise IntegrityError(
            f"not a PEM public key: {e}",
            where=str(path),
            hint="restore it from a copy, or check with `rollwise audit verify --public-key FILE`",
        ) from e
    if not isinstance(pub, Ed25519PublicKey):
        raise IntegrityError("not an Ed25519 public key", where=str(path))
    return pub


def pem(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)


# --- where things live ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where the signing key and the checkpoints live, and where copies go."""

    app: str
    key_file: Path
    checkpoint_file: Path
    syslog_address: str | None = None  # None: no syslog copy
    webhook_url: str | None = None
    webhook_token_env: str | None = None

    @property
    def public_key_file(self) -> Path:
        """The public half, beside the checkpoints: enough to verify them."""
        return self.checkpoint_file.with_name(self.checkpoint_file.name + ".pub")


def settings(config: ProjectConfig, state_dir: Path, engine: Engine) -> Settings:
    """Paths from ROLLWISE_AUDIT_KEY_FILE / ROLLWISE_AUDIT_CHECKPOINT_FILE, else `audit:` in
    rollwise.yaml (relative to the project directory, `state_dir`'s parent), else the
    defaults under XDG_CONFIG_HOME and XDG_STATE_HOME. Nothing may live in `state_dir`."""
    cfg, root = config.audit, state_dir.parent
    key = _path(os.environ.get(KEY_ENV) or cfg.key_file, root) or default_key_file(config.app)
    file = _path(os.environ.get(FILE_ENV) or cfg.checkpoint_file, root) or default_checkpoint_file(
        config.app, store_name(engine)
    )
    for what, path in (("audit.key_file", key), ("audit.checkpoint_file", file)):
        _outside(what, path, state_dir)
    return Settings(
        config.app,
        key,
        file,
        cfg.syslog_address if cfg.syslog else None,
        cfg.webhook_url,
        cfg.webhook_token_env,
    )


def default_key_file(app: str) -> Path:
    return _xdg("XDG_CONFIG_HOME", Path.home() / ".config") / "rollwise" / f"audit-{app}.key"


def default_checkpoint_file(app: str, store: str) -> Path:
    name = f"audit-{app}-{store}.jsonl"
    return _xdg("XDG_STATE_HOME", Path.home() / ".local" / "state") / "rollwise" / name


def store_name(engine: Engine) -> str:
    """Eight hex digits naming the state store (its file, or its URL without password), so
    two projects of the same app on one machine keep separate checkpoint files."""
    url = engine.url
    text = (
        str(Path(url.database or "").resolve())
        if url.get_backend_name() == "sqlite"
        else url.render_as_string(hide_password=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _xdg(var: str, fallback: Path) -> Path:
    value = os.environ.get(var, "")
    return Path(value) if os.path.isabs(value) else fallback  # the spec ignores relative ones


def _path(value: str | None, root: Path) -> Path | None:
    return (root / Path(value).expanduser()).resolve() if value else None


def _outside(what: str, path: Path, state_dir: Path) -> None:
    if path.resolve().is_relative_to(state_dir.resolve()):
        raise ConfigError(
            f"{what} {path} is inside the state directory {state_dir}, which "
            "whoever edits the state store can rewrite",
            hint=f"put it outside {STATE_DIR_NAME}/ (or unset it for the "
            "default, see docs/audit.md)",
        )


def signing_key(s: Settings) -> Ed25519PrivateKey:
    """The key that signs checkpoints. Created on first use, unless checkpoints signed by an
    earlier key exist: a new key would not verify them. Its public half is written beside
    the checkpoints the first time, and must match afterwards."""
    if s.key_file.exists():
        with _os_errors(s.key_file, "read the audit key"):
            key = load_key(s.key_file)
    elif s.public_key_file.exists():
        raise ConfigError(
            f"the audit key is missing, but the checkpoints in {s.checkpoint_file} were "
            f"signed with key {key_id(load_public_key(s.public_key_file))}",
            where=str(s.key_file),
            hint=f"restore the key (or point {KEY_ENV} at it); to start a new checkpoint "
            f"chain with a new key, move {s.checkpoint_file} and {s.public_key_file} aside",
        )
    else:
        try:
            key = create_key(s.key_file)
        except ConfigError:  # another process created it a moment ago
            key = load_key(s.key_file)
    _pin(s, key.public_key())
    return key


def _pin(s: Settings, pub: Ed25519PublicKey) -> None:
    try:
        with _os_errors(s.public_key_file, "write the public key"):
            s.public_key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(s.public_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # pinned before: it must be this key
        pinned = load_public_key(s.public_key_file)
        if key_id(pinned) != key_id(pub):
            raise IntegrityError(
                f"the audit key {s.key_file} (id {key_id(pub)}) is not the key that signed "
                f"the checkpoints in {s.checkpoint_file} (id {key_id(pinned)})",
                where=str(s.public_key_file),
                hint="use the key that signed them; to start a new chain with this key, "
                f"move {s.checkpoint_file} and {s.public_key_file} aside",
            ) from None
        return
    with os.fdopen(fd, "wb") as f:
        f.write(pem(pub))


# --- sinks ------------------------------------------------------------------------------


class CheckpointSink(Protocol):
    """Somewhere a signed checkpoint is written; the file sink is the one verify reads."""

    @property
    def name(self) -> str: ...

    def write(self, cp: Checkpoint) -> None: ...


@dataclass(frozen=True)
class FileSink:
    """The append-only JSON-lines file of checkpoints (mode 0600, opened O_APPEND)."""

    path: Path

    @property
    def name(self) -> str:
        return f"file {self.path}"

    def write(self, cp: Checkpoint) -> None:
        fd = self._open()
        try:
            with _os_errors(self.path, "write the checkpoint file"):
                os.write(fd, cp.line().encode())  # one write: a line is never interleaved
                os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's lock while reading the newest checkpoint and appending the next,
        so two writers never both chain onto the same one."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read_latest(self) -> Checkpoint | None:
        try:
            with _os_errors(self.path, "read the checkpoint file"), self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_BYTES))
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        return self._parse(lines[-1], None) if lines else None

    def read_all(self) -> list[Checkpoint]:
        try:
            with _os_errors(self.path, "read the checkpoint file"):
                lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [self._parse(line, n) for n, line in enumerate(lines, 1)]

    def _parse(self, line: bytes, n: int | None) -> Checkpoint:
        try:
            return parse(line.decode())
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            where = f"{self.path}:{n}" if n else f"{self.path} (last line)"
            raise IntegrityError(
                f"not a checkpoint: {e}",
                where=where,
                hint="the checkpoint file was edited, or a write was cut "
                "short; compare it with the syslog or webhook copies",
            ) from e

    def _open(self) -> int:
        with _os_errors(self.path, "open the checkpoint file"):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


class _RaisingSysLogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        raise  # report a failed send instead of printing it to stderr


@dataclass(frozen=True)
class SyslogSink:
    """A copy of each checkpoint to syslog: a Unix socket path, or `host:port` over UDP."""

    address: str

    @property
    def name(self) -> str:
        return f"syslog {self.address}"

    def write(self, cp: Checkpoint) -> None:
        handler = _RaisingSysLogHandler(address=syslog_address(self.address))
        handler.ident = "rollwise-audit: "
        try:
            handler.emit(
                logging.makeLogRecord(
                    {"msg": cp.line().rstrip("\n"), "levelno": logging.INFO, "levelname": "INFO"}
                )
            )
        finally:
            handler.close()


def syslog_address(text: str) -> str | tuple[str, int]:
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class WebhookSink:
    """A copy of each checkpoint POSTed as JSON, with an optional bearer token."""

    url: str
    token_env: str | None = None  # the variable holding the token, read at each write
    timeout_s: float = 10.0
    transport: httpx.BaseTransport | None = None  # tests pass httpx.MockTransport

    @property
    def name(self) -> str:
        return f"webhook {self.url}"

    def write(self, cp: Checkpoint) -> None:
        import httpx  # only when a webhook is configured

        token = _token(self.token_env)
        headers = {"Authorization": f"Bearer {token.reveal()}"} if token else {}
        with httpx.Client(transport=self.transport, timeout=self.timeout_s) as client:
            client.post(self.url, json=asdict(cp), headers=headers).raise_for_status()


def copies(s: Settings) -> list[CheckpointSink]:
    """The configured sinks besides the file: syslog, webhook."""
    sinks: list[CheckpointSink] = []
    if s.syslog_address:
        sinks.append(SyslogSink(s.syslog_address))
    if s.webhook_url:
        sinks.append(WebhookSink(s.webhook_url, s.webhook_token_env))
    return sinks


def _token(env: str | None) -> Secret | None:
    if env is None:
        return None
    if not (value := os.environ.get(env)):
        raise ConfigError(
            f"audit.webhook_token_env names {env}, which is not set",
            hint=f"export {env} with the webhook's token",
        )
    return Secret(value)


def ship(cp: Checkpoint, sinks: Sequence[CheckpointSink]) -> None:
    """Write `cp` to every sink; a failed one does not stop the others."""
    failed = []
    for sink in sinks:
        try:
            sink.write(cp)
        except Exception as e:  # OSError, httpx errors...: all reported below
            failed.append(f"{sink.name}: {e}")
    if failed:
        raise RollwiseError(
            f"{cp.label()} was written but not sent to " + "; ".join(failed),
            hint="check the sink; `rollwise audit checkpoint` sends the next one",
        )


# --- reading the file back ----------------------------------------------------------------


def load(s: Settings, public_key: Path | None = None) -> list[Checkpoint]:
    """Every checkpoint in the file, checked: each links to the one before, none covers fewer
    events than the one before, all name the audit key and the newest is signed by it
    (through the links, its signature covers all of them). IntegrityError names the first
    problem; [] when no checkpoint was ever written."""
    cps = FileSink(s.checkpoint_file).read_all()
    if not cps:
        _never_written(s)
        return []
    pub = _public_key(s, public_key)
    for n, (before, cp) in enumerate(zip([None, *cps], cps, strict=False), 1):
        _check_link(f"{s.checkpoint_file}:{n}", before, cp, key_id(pub))
    if not signed_by(pub, cps[-1]):
        raise IntegrityError(
            f"{cps[-1].label()} is not signed by the audit key "
            f"{key_id(pub)}: the checkpoint file was edited",
            where=f"{s.checkpoint_file}:{len(cps)}",
            hint=_RESTORE,
        )
    return cps


_RESTORE = "compare it with the syslog or webhook copies of the checkpoints"


def _never_written(s: Settings) -> None:
    if s.public_key_file.exists():
        raise IntegrityError(
            f"the checkpoint file is missing or empty, but its public key "
            f"{s.public_key_file} is there: the checkpoints were removed",
            where=str(s.checkpoint_file),
            hint=f"restore it from a copy (syslog, webhook); if no checkpoint was ever "
            f"written, remove {s.public_key_file}",
        )


def _public_key(s: Settings, given: Path | None) -> Ed25519PublicKey:
    """`given`, else the one beside the checkpoints; when the signing key is readable here,
    its public half must be that one (else both file and public key were replaced)."""
    path = given or s.public_key_file
    if not path.exists():
        raise IntegrityError(
            "the checkpoints' public key is missing",
            where=str(path),
            hint="restore it, or pass the one you keep with --public-key",
        )
    pub = load_public_key(path)
    own = _own_public_key(s)
    if own is not None and key_id(own) != key_id(pub):
        raise IntegrityError(
            f"the public key {path} (id {key_id(pub)}) is not the audit key's "
            f"{s.key_file} (id {key_id(own)}): the checkpoints were re-signed with another key",
            where=str(path),
            hint=_RESTORE,
        )
    return pub


def _own_public_key(s: Settings) -> Ed25519PublicKey | None:
    try:
        return load_key(s.key_file).public_key()
    except (FileNotFoundError, PermissionError):
        return None  # verified somewhere else than where checkpoints are signed


def _check_link(where: str, before: Checkpoint | None, cp: Checkpoint, key: str) -> None:
    prev, seq, floor = (
        (before.digest(), before.seq + 1, before.count) if before else (GENESIS, 1, 0)
    )
    if cp.seq != seq or cp.prev != prev:
        after = f"checkpoint #{before.seq}" if before else "the start of the chain"
        raise IntegrityError(
            f"{cp.label()} does not link to {after}: the checkpoint file was "
            "edited (a checkpoint changed, removed or inserted)",
            where=where,
            hint=_RESTORE,
        )
    if cp.count < floor:
        raise IntegrityError(
            f"{cp.label()} covers {cp.count} events, fewer than the "
            f"{floor} of the checkpoint before it",
            where=where,
            hint=_RESTORE,
        )
    if cp.key_id != key:
        raise IntegrityError(
            f"{cp.label()} was signed with key {cp.key_id}, not with the audit key {key}",
            where=where,
            hint=_RESTORE,
        )
