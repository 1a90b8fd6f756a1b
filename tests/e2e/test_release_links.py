"""`release create` stores only what `deploy` can unpack: links that stay inside the tree,
regular files (a hard link is stored as a plain file), never a pipe, socket or device."""

from __future__ import annotations

import json
import os
import socket
import stat
import tarfile

import pytest
import yaml

from rollwise.errors import ExitCode
from tests.conftest import Project


def stored(p: Project) -> tuple[list[str], list[str]]:
    """The artifact files and the recorded releases."""
    artifacts = p.root / ".rollwise" / "artifacts"
    files = sorted(f.name for f in artifacts.iterdir()) if artifacts.exists() else []
    releases = json.loads(p.cli("release", "list", "--all", "--json", check=True).stdout)
    return files, [r["version"] for r in releases]


def link(p: Project, name: str, target: str) -> None:
    path = p.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def members(p: Project, version: str) -> dict[str, tarfile.TarInfo]:
    releases = json.loads(p.cli("release", "list", "--json", check=True).stdout)
    sha = next(r["sha256"] for r in releases if r["version"] == version)
    with tarfile.open(p.root / ".rollwise" / "artifacts" / f"{sha}.tar.gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def refused(p: Project, words: list[str]) -> None:
    before = stored(p)
    p.write_version("2.0.0")
    res = p.cli("release", "create", "--version", "2.0.0")
    assert res.returncode == ExitCode.CONFIG, res.stderr
    for w in words:
        assert w in res.stderr
    assert "nothing was stored" in res.stderr and "hint:" in res.stderr
    assert stored(p) == before


OUTSIDE = "point the link at a file inside the tree, copy the file in, or add the link's name"


@pytest.mark.parametrize(
    ("links", "message", "hint"),
    [
        (
            [("hostname", "/etc/hostname")],
            "hostname is a link to the absolute path /etc/hostname",
            "make it relative to a file inside `source`",
        ),
        ([("up", "../..")], "up is a link to ../.., which is outside `source`", OUTSIDE),
        (
            [("lib/data", "../../shared/data")],
            "lib/data is a link to ../../shared/data, which is outside `source`",
            OUTSIDE,
        ),
        (
            [("a", "b"), ("b", "../outside")],
            "a is a link to b, which leads outside `source` when the links on its way are followed",
            OUTSIDE,
        ),
        (
            [("deep/er/top", "../.."), ("deep/er/x", "top/../etc")],
            "deep/er/x is a link to top/../etc, which leads outside `source`",
            OUTSIDE,
        ),
        (
            [("loop1", "loop2"), ("loop2", "loop1")],
            "loop1 is a link in a loop of links",
            "not back at itself",
        ),
    ],
)
def test_given_a_link_that_leaves_the_tree_when_release_create_then_refused_and_nothing_stored(
    project, links, message, hint
):
    project.release("1.0.0")
    for name, target in links:
        link(project, name, target)

    refused(project, [f"{project.root / message.split()[0]}: {message}", hint])


def test_given_a_link_back_in_through_the_project_folder_then_refused_as_outside(project):
    """`../<project folder>/app.py` works in the project, not where the release is unpacked."""
    project.release("1.0.0")
    link(project, "app-link.py", f"../{project.root.name}/app.py")

    refused(
        project,
        [f"app-link.py is a link to ../{project.root.name}/app.py, which is outside `source`"],
    )


def test_given_an_outside_link_in_build_exclude_then_the_release_is_created(project):
    link(project, "cache", "/tmp")
    path = project.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["build"] = {"exclude": [".git", ".rollwise", ".venv", "__pycache__", "*.pyc", "cache"]}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    project.release("1.0.0")

    assert "cache" not in members(project, "1.0.0")


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_given_a_pipe_socket_or_device_in_the_tree_then_refused_by_name(project, kind, monkeypatch):
    project.release("1.0.0")
    (project.root / "run").mkdir()
    path = project.root / "run" / f"app.{kind}"
    if kind == "fifo":
        os.mkfifo(path)
        what = "a named pipe (FIFO)"
    elif kind == "socket":
        monkeypatch.chdir(path.parent)  # a short relative name: unix socket paths are short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
        project.cleanups.append(sock.close)
        what = "a socket"
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device file needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        what = "a character device"

    refused(project, [f"{path}: run/app.{kind} is {what}", "add its name to build.exclude"])


def test_given_links_inside_the_tree_and_a_hard_link_then_the_deployed_release_has_them(project):
    (project.root / "static").mkdir()
    (project.root / "static" / "logo.txt").write_text("logo\n")
    link(project, "logo.txt", "static/logo.txt")
    link(project, "assets", "static")
    link(project, "static/again.txt", "../logo.txt")  # a link to a link inside
    os.link(project.root / "static" / "logo.txt", project.root / "hard.txt")

    project.release("1.0.0")
    project.cli("deploy", "1.0.0", check=True)

    m = members(project, "1.0.0")
    assert {
        n: (m[n].issym(), m[n].linkname) for n in ("logo.txt", "assets", "static/again.txt")
    } == {
        "logo.txt": (True, "static/logo.txt"),
        "assets": (True, "static"),
        "static/again.txt": (True, "../logo.txt"),
    }
    assert m["hard.txt"].isreg() and m["hard.txt"].size == len("logo\n")
    release = project.root / ".rollwise" / "envs" / "dev" / "releases" / "1.0.0"
    for name in ("logo.txt", "assets/logo.txt", "static/again.txt", "hard.txt"):
        assert (release / name).read_text() == "logo\n"
    assert (release / "assets").is_symlink()
    assert not (release / "hard.txt").is_symlink()
