"""Files only their owner reads: rollwise's state directories are 0700, its files 0600.

New files get these modes from the process umask (0o077, set by the CLI and the agent);
this module makes directories explicitly and closes trees that were made wider (by an
older rollwise, or unpacked from an archive with its own modes).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

OPEN_BITS = 0o077  # group and other


def private_dir(path: Path) -> Path:
    """`path`, made mode 0700 if missing; an existing one that others could enter has group
    and other permissions removed from everything under it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & OPEN_BITS:
        close_tree(path)
    return path


def close_tree(top: Path) -> None:
    """Remove group and other permissions from `top` and everything under it (links are
    left alone). `top` goes last, so a tree closed halfway is still seen as open and closed
    again next time. Paths this user may not change are skipped: nothing fails here."""
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            _close(os.path.join(root, name))
    _close(str(top))


def _close(path: str) -> None:
    with contextlib.suppress(OSError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and mode & OPEN_BITS:
            os.chmod(path, stat.S_IMODE(mode) & ~OPEN_BITS)


@contextlib.contextmanager
def open_private(path: Path) -> Iterator[IO[bytes]]:
    """A new or truncated file only its owner can read (mode 0600 whatever the umask, also
    when an older version left it wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        yield f


def replace_private(path: Path, data: bytes) -> None:
    """`path` holds `data`, mode 0600: written beside, then renamed, so a crash leaves the
    old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp) as f:
        f.write(data)
    os.replace(tmp, path)
