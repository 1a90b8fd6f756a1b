"""Immutable, content-addressed release artifacts: build, verify, unpack, retention."""

from __future__ import annotations

import contextlib
import getpass
import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollwise.errors import ConfigError, IntegrityError, RollwiseError

if TYPE_CHECKING:  # the hosts' agent imports this module for `unpack`: standard library only
    from pathspec import GitIgnoreSpec

    Layer = tuple[int, str, GitIgnoreSpec]  # (which ignore file, its folder, its rules)

MARKER = ".rollwise-sha256"
GITIGNORE = ".gitignore"
IGNORE_FILES = (GITIGNORE, ".rollwiseignore")  # read in every folder; the later one wins
MAX_LINK_HOPS = 40  # as Linux: more links than this followed for one path is a loop
_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
HINT_ABSOLUTE = (
    "a release is unpacked in another directory (and on other hosts), where an "
    "absolute link points elsewhere or nowhere: make it relative to a file inside "
    "`source` (ln -sfn <relative path> <link>), copy the file into the tree, or add "
    "the link's name to build.exclude"
)
HINT_OUTSIDE = (
    "a release holds only what is inside `source`, and deploy refuses links that "
    "leave it: point the link at a file inside the tree, copy the file in, or add "
    "the link's name to build.exclude"
)
HINT_LOOP = "make each link point at a file or folder, not back at itself through other links"
HINT_NOT_A_FILE = (
    "a release holds regular files, folders and links inside the tree: delete "
    "it, move it out of `source`, or add its name to build.exclude"
)


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Tree:
    """A folder to pack, and the ignore files that apply in it (in each of its folders)."""

    root: Path
    ignore_files: tuple[str, ...] = IGNORE_FILES


@contextmanager
def built(source: Path, command: str | None, exclude: list[str]) -> Iterator[Tree]:
    """The tree a release is packed from. Without a build command: `source` itself. With
    one: a private copy of the files `source` would have packed, where the command runs,
    so nothing untracked or ignored gets in and the build cannot change the project; what
    it makes is packed unless `.rollwiseignore` or `exclude` leaves it out (a `.gitignore`
    chose what the build starts from, and build output is what it usually names)."""
    tree = Tree(source)
    if not source.is_dir():
        raise ConfigError(
            f"source directory {source} does not exist",
            where="source",
            hint="`source` in rollwise.yaml is the folder the release is packed "
            "from, relative to the project: fix the path",
        )
    if command is None:
        yield tree
        return
    with tempfile.TemporaryDirectory(prefix="rollwise-build-") as tmp:
        copy = Path(tmp, source.name)
        _copy(tree, exclude, copy)
        run_build(command, copy)
        yield Tree(copy, tuple(f for f in IGNORE_FILES if f != GITIGNORE))


def _copy(tree: Tree, exclude: list[str], dest: Path) -> None:
    """Copy what `tree` packs into `dest`: files with their mode bits, links as links."""
    dest.mkdir()
    for path in files(tree, exclude):
        target = dest / path.relative_to(tree.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _member(tree.root, path).issym():  # refuses what `pack` would refuse, named here
            target.symlink_to(os.readlink(path))
        else:
            shutil.copy2(path, target)


def run_build(command: str, cwd: Path) -> None:
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RollwiseError(
            f"build command exited with {proc.returncode}: {command}",
            where="build.command",
            hint="\n".join(tail) or "run it by hand",
        )


def files(tree: Tree, exclude: list[str]) -> Iterator[Path]:
    """Every path packed, in a stable order; a link to a directory is a path, not a folder.
    Left out: what the ignore files say, with git's rules (a pattern in a folder's file is
    relative to that folder; a deeper file and a later line win; `!` takes a path back in;
    nothing inside a folder left out is looked at), `.rollwiseignore` after `.gitignore`,
    and whatever `exclude` matches, always."""
    from pathspec import GitIgnoreSpec  # not on the hosts (see TYPE_CHECKING above)

    always = GitIgnoreSpec.from_lines(exclude)
    layers: dict[str, list[Layer]] = {}
    for root, dirs, names in os.walk(tree.root):
        rel = Path(root).relative_to(tree.root).as_posix()
        rel = "" if rel == "." else rel
        here = layers[rel] = sorted(
            [*layers.get(rel.rpartition("/")[0], []), *_rules(Path(root), rel, tree.ignore_files)],
            key=lambda layer: layer[0],
        )  # by file name, then depth
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in links and not _ignored(f"{rel}/{d}/".lstrip("/"), always, here)
        )
        for name in sorted([*names, *links]):
            if not _ignored(f"{rel}/{name}".lstrip("/"), always, here):
                yield Path(root, name)


def _rules(folder: Path, rel: str, ignore_files: tuple[str, ...]) -> list[Layer]:
    """The rules of the ignore files in `folder` (`rel` in the tree)."""
    from pathspec import GitIgnoreSpec

    out = []
    for i, name in enumerate(ignore_files):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            lines = (folder / name).read_text(errors="replace").splitlines()
            out.append((i, rel, GitIgnoreSpec.from_lines(lines)))
    return out


def _ignored(path: str, always: GitIgnoreSpec, layers: list[Layer]) -> bool:
    """`path` (relative to the tree; a folder's ends in /) is left out: the last rule that
    matches it decides."""
    if always.match_file(path):
        return True
    verdict = False
    for _, base, spec in layers:
        got = spec.check_file(path.removeprefix(f"{base}/") if base else path).include
        verdict = verdict if got is None else got
    return verdict


# gzip's own default: a third of level 9's time for the same size on a release with its
# dependencies vendored (114 MB, 6,217 files: 6.9 s against 23.5 s, 32 MB both)
PACK_LEVEL = 6


def pack(
    tree: Tree, exclude: list[str], dest_dir: Path, extra: dict[str, bytes] | None = None
) -> tuple[str, int, Path]:
    """A deterministic tar.gz of `tree`: same files, same bytes, same sha256. `extra`:
    files rollwise adds at the top (the release's image ID), in place of any of that name."""
    source = tree.root
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=PACK_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, content in sorted((extra or {}).items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
        for path in files(tree, exclude):
            if path.relative_to(source).as_posix() in (extra or {}):
                continue
            info = _member(source, path)
            if info.issym():
                tar.addfile(info)
                continue
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


def _member(source: Path, path: Path) -> tarfile.TarInfo:
    """The tar header of one path: a regular file (each hard link is stored as its own
    file) or a link that stays inside the tree; anything else is refused."""
    info = tarfile.TarInfo(path.relative_to(source).as_posix())
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, _link(source, path), 0o777
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
    else:
        raise _refused(
            source, path, f"is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a file')}", HINT_NOT_A_FILE
        )
    return info


def _link(source: Path, path: Path) -> str:
    """The link's target, when it stays inside the tree wherever the release is unpacked:
    relative, and inside both as written and followed through other links."""
    target = os.readlink(path)
    rel = path.relative_to(source)
    if os.path.isabs(target):
        raise _refused(source, path, f"is a link to the absolute path {target}", HINT_ABSOLUTE)
    as_written = os.path.normpath(os.path.join(*rel.parent.parts, target))
    if as_written.split(os.sep)[0] == os.pardir:
        raise _refused(
            source, path, f"is a link to {target}, which is outside `source`", HINT_OUTSIDE
        )
    if _follow(source, rel.parent.parts, target, path) is None:
        raise _refused(
            source,
            path,
            f"is a link to {target}, which leads outside `source` "
            "when the links on its way are followed",
            HINT_OUTSIDE,
        )
    return target


def _follow(source: Path, here: tuple[str, ...], target: str, link: Path) -> tuple[str, ...] | None:
    """Where the relative `target`, read from the folder `here` (parts under `source`),
    leads as the system follows it, through other links; None when it leaves `source`."""
    parts, todo, hops = list(here), target.split("/")[::-1], 0
    while todo:
        part = todo.pop()
        if part == os.pardir and not parts:
            return None
        if part == os.pardir:
            parts.pop()
        elif part not in ("", os.curdir):
            parts.append(part)
            if not source.joinpath(*parts).is_symlink():
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise _refused(source, link, "is a link in a loop of links", HINT_LOOP)
            inner = os.readlink(source.joinpath(*parts))
            if os.path.isabs(inner):
                return None
            parts.pop()
            todo += inner.split("/")[::-1]
    return tuple(parts)


def _refused(source: Path, path: Path, what: str, hint: str) -> ConfigError:
    return ConfigError(
        f"{path.relative_to(source).as_posix()} {what}; nothing was stored",
        where=str(path),
        hint=hint,
    )


def git_commit(source: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "."],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
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
        raise IntegrityError(
            f"artifact of release {version} is missing",
            where=str(path),
            hint="re-create the release under a new version",
        )
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
        _extract(tar, tmp)
    (tmp / MARKER).write_text(sha256)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract with the `data` filter (nothing outside `dest`, no devices, no set-id bits).
    A Python without it (3.11 before 3.11.4, as some fleet hosts have) gets the same checks
    here, member by member."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()) or not target.is_relative_to(
            root
        ):
            raise IntegrityError(
                f"{m.name}: not a plain file, folder or link inside the release",
                where=str(tar.name),
                hint="re-create the release",
            )
        if m.issym() or m.islnk():
            base = target.parent if m.issym() else root
            if not (base / m.linkname).resolve().is_relative_to(root):
                raise IntegrityError(
                    f"{m.name} links outside the release ({m.linkname})",
                    where=str(tar.name),
                    hint="re-create the release",
                )
        m.mode &= 0o755
    tar.extractall(dest)  # every member was checked above


def prune_plan(versions_oldest_first: Iterable[str], keep: int, protected: set[str]) -> list[str]:
    """Versions to prune: all but the newest `keep`, never a protected one."""
    versions = list(versions_oldest_first)
    candidates = versions[: max(0, len(versions) - keep)]
    return [v for v in candidates if v not in protected]


def now() -> float:
    return time.time()
