"""The per-environment agent: embedded router, process supervisor and control socket."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from rollwise.errors import RollwiseError

SUN_PATH_MAX = 107  # bytes of a unix socket path, without its NUL (Linux sun_path is 108)


def socket_path(env_dir: Path) -> Path:
    """The agent's control socket: `<env_dir>/agent.sock`, or, when that path is too long for
    a unix socket (a deep project directory), a short one named after it in a private
    `rollwise-<uid>` folder of the temporary directory."""
    natural = env_dir / "agent.sock"
    if len(os.fsencode(natural)) <= SUN_PATH_MAX:
        return natural
    folder = Path(tempfile.gettempdir()) / f"rollwise-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RollwiseError(
            f"{folder} is not a private folder of this user",
            where=str(folder),
            hint="remove it (rollwise recreates it, mode 0700), or use a shorter project path",
        )
    name = hashlib.sha256(os.fsencode(natural.resolve())).hexdigest()[:24]
    return folder / f"{name}.sock"
