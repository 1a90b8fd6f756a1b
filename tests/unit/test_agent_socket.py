import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from rollwise.agent import SUN_PATH_MAX, socket_path
from rollwise.errors import RollwiseError


@pytest.fixture
def tmp_dir(monkeypatch):
    """A short temporary directory, as /tmp is (pytest's own can be too deep for a socket)."""
    short = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    yield short
    shutil.rmtree(short)


def test_given_a_short_env_dir_then_the_socket_is_in_it(tmp_path, tmp_dir):
    assert socket_path(tmp_path / "dev") == tmp_path / "dev" / "agent.sock"


def test_given_a_deep_env_dir_then_a_short_private_socket_path_that_binds(tmp_path, tmp_dir):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "envs" / "dev"
    other = tmp_path / ("d" * 60) / ("e" * 60) / "envs" / "prod"
    path = socket_path(deep)

    assert len(os.fsencode(path)) <= SUN_PATH_MAX
    assert path == socket_path(deep) != socket_path(other)
    assert path.parent == tmp_dir / f"rollwise-{os.getuid()}"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


def test_given_the_short_folder_open_to_others_then_it_is_refused(tmp_path, tmp_dir):
    folder = tmp_dir / f"rollwise-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)

    with pytest.raises(RollwiseError, match="not a private folder"):
        socket_path(tmp_path / ("d" * 120) / "dev")
