"""The CLI in the shell and the editor: completion, help text, the published schema, and
"did you mean" for misspelt keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from rollwise.config.load import keys_at, load_config_text
from rollwise.config.schema import EnvironmentConfig, ProjectConfig
from rollwise.errors import ConfigError

BASE = "app: shop\nrun: {command: 'python3 app.py --port {port}'}\n"


def rollwise(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollwise", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def complete(words: str, cwd: Path) -> list[str]:
    """What bash completion offers for the last of `words` (Typer's protocol)."""
    parts = words.split(" ")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "rollwise")],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=60,
        env={
            **os.environ,
            "_ROLLWISE_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
        },
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    res = rollwise("init", "--app", "shop", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return tmp_path


def test_completion_offers_commands_and_the_projects_environments(initialised: Path):
    assert complete("rollwise roll", initialised) == ["rollback"]
    assert complete("rollwise deploy 1.0.0 --env ", initialised) == ["dev", "staging", "prod"]
    assert complete("rollwise status -e s", initialised) == ["staging"]
    assert complete("rollwise status -e ", initialised.parent) == []  # no project: nothing
    script = subprocess.run(
        [str(Path(sys.executable).parent / "rollwise"), "--show-completion", "bash"],
        text=True,
        capture_output=True,
    )
    assert script.returncode == 0 and "_ROLLWISE_COMPLETE=complete_bash" in script.stdout


def test_init_writes_the_schema_the_yaml_language_server_comment_names(initialised: Path):
    text = (initialised / "rollwise.yaml").read_text()
    first = text.splitlines()[0]
    assert first == "# yaml-language-server: $schema=.rollwise.schema.json"
    schema = json.loads((initialised / ".rollwise.schema.json").read_text())
    assert schema["$id"] == "urn:rollwise:schema:rollwise.yaml"
    printed = rollwise("config", "schema", cwd=initialised)
    assert json.loads(printed.stdout) == schema
    validator = Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(text))) == []
    typo = yaml.safe_load(text.replace("    router:\n", "    routr:\n", 1))
    assert [e.message for e in validator.iter_errors(typo)] == [
        "Additional properties are not allowed ('routr' was unexpected)"
    ]


def test_help_joins_a_paragraphs_lines():
    res = subprocess.run(
        [sys.executable, "-m", "rollwise", "deploy", "--help"],
        text=True,
        capture_output=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert (
        "Refused for a release marked bad (unless --force --reason) and for an older "
        "release whose schema must go back" in res.stdout
    )


def error(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config_text(BASE + text, "rollwise.yaml")
    return str(e.value.message)


def test_a_misspelt_key_gets_the_nearest_known_one():
    assert error("helth: {path: /health}\n") == "helth: unknown key; did you mean `health`?"
    assert (
        error("environments: {dev: {routr: {listen: '127.0.0.1:8080'}}}\n")
        == "environments.dev.routr: unknown key; did you mean `router`?"
    )
    checks = (
        "environments: {dev: {analysis: {checks: [{type: http, name: x, url: "
        "'http://a', expect_stauts: 200}]}}}\n"
    )
    assert (
        error(checks)
        == "environments.dev.analysis.checks.0.http.expect_stauts: unknown key; did you mean "
        "`expect_status`?"
    )
    assert error("zzz: 1\n").startswith(
        "zzz: unknown key; remove it or check its spelling "
        "(keys here: app, audit, build, dashboard_url, environments,"
    )


def test_keys_at_follows_dicts_lists_optionals_and_tagged_unions():
    assert keys_at(ProjectConfig, ("environments", "dev")) == set(EnvironmentConfig.model_fields)
    assert "latency_quantiles" in keys_at(
        ProjectConfig, ("environments", "dev", "analysis", "router")
    )
    assert "query" in keys_at(
        ProjectConfig, ("environments", "dev", "analysis", "checks", 0, "prometheus")
    )
    assert keys_at(ProjectConfig, ("app",)) == set()
