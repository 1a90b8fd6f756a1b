"""`release create` packs what the ignore files leave in, builds in a copy of the tree, and
`deploy` puts instances on ports of the environment's `target.ports`."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import yaml

from tests.conftest import Project
from tests.unit.test_ports import free_block

STATE = ".rollwise"


def files_in(root: Path) -> set[str]:
    return {
        Path(d, f).relative_to(root).as_posix()
        for d, _, fs in os.walk(root)
        for f in fs
        if not Path(d, f).relative_to(root).as_posix().startswith(f"{STATE}/")
    }


def write(p: Project, files: dict[str, str]) -> None:
    for name, text in files.items():
        (p.root / name).parent.mkdir(parents=True, exist_ok=True)
        (p.root / name).write_text(text)


def archive(p: Project, version: str) -> set[str]:
    releases = json.loads(p.cli("release", "list", "--json", check=True).stdout)
    sha = next(r["sha256"] for r in releases if r["version"] == version)
    with tarfile.open(p.root / STATE / "artifacts" / f"{sha}.tar.gz") as tar:
        return {m.name for m in tar.getmembers()}


def set_config(p: Project, **changes: object) -> None:
    path = p.root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


IGNORED = {
    "debug.log": "junk",
    "node_modules/left/index.js": "",
    "secrets.env": "KEY=1",
    "docs/notes.md": "",
    "docs/sub/more.md": "",
    "migrations/0001_old.sql.bak": "",
}
KEPT = {
    ".gitignore": "*.log\nnode_modules/\n*.env\n",
    ".rollwiseignore": "docs/\n",
    "docs.txt": "kept: not the folder docs/",
    "static/app.css": "",
    "migrations/.gitignore": "*.bak\n",
}


def test_given_gitignore_and_rollwiseignore_when_release_create_then_archive_has_the_rest(project):
    write(project, {**IGNORED, **KEPT})
    expected = files_in(project.root) - set(IGNORED)

    project.release("1.0.0")

    assert archive(project, "1.0.0") == expected


def test_given_a_build_command_then_it_runs_in_a_clean_copy_and_its_output_is_packed(project):
    write(
        project,
        {
            **KEPT,
            "debug.log": "junk",
            "dist/stale.js": "from an old local build",
            ".rollwiseignore": "*.tmp\n",
            ".gitignore": "*.log\ndist/\n",
        },
    )
    set_config(
        project,
        build={
            "command": "test ! -e debug.log && test ! -e dist && "
            "mkdir dist && cp app.py dist/bundle.js && touch scratch.tmp"
        },
    )
    before = files_in(project.root)

    project.release("1.0.0")

    got = archive(project, "1.0.0")
    assert "dist/bundle.js" in got and "app.py" in got
    assert not {"dist/stale.js", "debug.log", "scratch.tmp"} & got
    assert files_in(project.root) == before  # nothing built in the project


def test_given_a_port_range_when_deploying_then_instances_listen_in_it(project):
    span = free_block(5)
    project.configure(
        instances=2, target={"type": "local", "ports": {"first": span[0], "last": span[-1]}}
    )
    project.release("1.0.0")

    project.cli("deploy", "1.0.0", check=True)

    out = json.loads(project.cli("status", "--env", "dev", "--json", check=True).stdout)
    got = [i["port"] for i in out["environments"]["dev"]["instances"]]
    assert len(got) == 2 and set(got) <= set(span), got
