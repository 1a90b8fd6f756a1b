"""Immutable, content-addressed release artifacts: build, verify, unpack, retention."""

from __future__ import annotations

import fnmatch
import getpass
import gzip
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollwise.errors import ConfigError, IntegrityError, RollwiseError

SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
MARKER = ".rollwise-sha256"


@dataclass(frozen=True)
class ReleaseMeta:
    app: str
    version: str
    sha256: str
    size: int
    git_commit: str | None
    built_at: float
    builder: str
    changelog: str | None
    config_sha256: str
    schema: dict[str, Any] | None = None


def check_version(version: str) -> str:
    v = version.removeprefix("v")
    if not SEMVER.match(v):
        raise RollwiseError(f"{version!r} is not a semantic version",
                            hint="use MAJOR.MINOR.PATCH, for example 1.2.3 or 1.2.3-rc.1")
    return v


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_build(command: str, cwd: Path) -> None:
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RollwiseError(f"build command exited with {proc.returncode}: {command}",
                            where="build.command", hint="\n".join(tail) or "run it by hand")


def _files(source: Path, exclude: list[str]) -> Iterator[Path]:
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not _excluded(d, exclude))
        for name in sorted(files):
            if not _excluded(name, exclude):
                yield Path(root, name)


def _excluded(name: str, exclude: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in exclude)


def pack(source: Path, exclude: list[str], dest_dir: Path) -> tuple[str, int, Path]:
    """A deterministic tar.gz of `source`: same files, same bytes, same sha256."""
    if not source.is_dir():
        raise ConfigError(f"source directory {source} does not exist", where="source")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(source, exclude):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(source)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{digest}.tar.gz"
    if not dest.exists():
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    return digest, len(data), dest


def git_commit(source: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "."],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def builder() -> str:
    try:
        user = getpass.getuser()
    except OSError:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def artifact_path(artifacts: Path, sha256: str) -> Path:
    return artifacts / f"{sha256}.tar.gz"


def verify(artifacts: Path, sha256: str, version: str) -> Path:
    """The artifact's path, after checking that its bytes still hash to `sha256`."""
    path = artifact_path(artifacts, sha256)
    if not path.exists():
        raise IntegrityError(f"artifact of release {version} is missing", where=str(path),
                             hint="re-create the release under a new version")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(
            f"artifact of release {version} was modified: sha256 {actual[:12]}..., "
            f"recorded {sha256[:12]}...",
            where=str(path),
            hint="the file was tampered with or damaged; re-create the release under a new "
            "version; nothing was deployed",
        )
    return path


def unpack(artifact: Path, sha256: str, dest: Path) -> Path:
    """Unpack into `dest` once; an existing directory with the same hash is reused."""
    marker = dest / MARKER
    if marker.exists() and marker.read_text() == sha256:
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(artifact, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    (tmp / MARKER).write_text(sha256)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def prune_plan(versions_oldest_first: Iterable[str], keep: int, protected: set[str]
               ) -> list[str]:
    """Versions to prune: all but the newest `keep`, never a protected one."""
    versions = list(versions_oldest_first)
    candidates = versions[: max(0, len(versions) - keep)]
    return [v for v in candidates if v not in protected]


def now() -> float:
    return time.time()
