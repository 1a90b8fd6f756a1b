"""The CI recipes in examples/ci: the GitHub Actions workflow and the GitLab CI file pass
their published JSON schemas (check-jsonschema's vendored copies), and the workflow's own
rollwise commands, run as a runner would run them, release, deploy and roll back the example
app through a team server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.component.conftest import pg_url  # noqa: F401 (fixture)
from tests.conftest import Project
from tests.e2e import test_server as srv

CI = Path(__file__).resolve().parents[2] / "examples" / "ci"
team = srv.team
pytestmark = pytest.mark.xdist_group("server")


def check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run(
        [str(exe), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "schema", "break_it"),
    [
        (
            "github-actions.yml",
            "vendor.github-workflows",
            lambda d: d["jobs"]["deploy"].pop("runs-on"),
        ),
        ("gitlab-ci.yml", "vendor.gitlab-ci", lambda d: d["deploy"].update(when="sometimes")),
    ],
)
def test_the_recipes_pass_their_published_schemas(name, schema, break_it, tmp_path):
    assert check(schema, CI / name).returncode == 0, check(schema, CI / name).stdout
    broken = yaml.safe_load((CI / name).read_text())
    break_it(broken)
    (tmp_path / name).write_text(yaml.safe_dump(broken))
    assert check(schema, tmp_path / name).returncode != 0  # the schema is really applied


def steps(name: str) -> dict[str, str]:
    workflow = yaml.safe_load((CI / "github-actions.yml").read_text())
    return {s["name"]: s["run"] for s in workflow["jobs"]["deploy"]["steps"] if "run" in s}


def test_the_workflows_commands_release_deploy_and_roll_back_through_a_server(
    team: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    team.cli("deploy", "1.0.0", check=True)
    server = srv.Server(team, {}, "ci")
    ci = srv.token(team, "gitlab-ci", "deployer")
    runner = tmp_path / "runner"  # the checkout on the runner: its own scratch state
    shutil.copytree(team.root, runner, ignore=shutil.ignore_patterns(".rollwise", "*.log"))
    (runner / "VERSION").write_text("1.0.7\n")
    monkeypatch.delenv("ROLLWISE_DATABASE_URL")
    env = {
        **os.environ,
        **srv.remote(server.url, ci),
        "VERSION": "1.0.7",
        "CHANGELOG": "orders: retry marketplace 429s",
        "ROLLWISE_ACTOR": "github:ana",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run = steps("github-actions.yml")
    for step in ("Release", "Deploy", "Roll back"):
        command = run[step].replace("--env prod", "--env dev")
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=runner,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (step, done.stderr)
    rows = json.loads(
        team.cli("history", "--json", env=srv.remote(server.url, env["ROLLWISE_TOKEN"])).stdout
    )
    assert [(r["kind"], r["to_version"], r["actor"]) for r in rows[:2]] == [
        ("rollback", "1.0.0", "gitlab-ci (api)"),
        ("deploy", "1.0.7", "gitlab-ci (api)"),
    ]
