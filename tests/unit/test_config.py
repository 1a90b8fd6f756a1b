"""Bad configuration: every error names file, line, key and what is expected."""

import pytest

from rollwise.config.load import load_config_text
from rollwise.errors import ConfigError

GOOD = "app: shop\nrun:\n  command: python3 app.py --port {port}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "rollwise.yaml")
    return str(e.value)


def test_given_a_minimal_file_then_defaults_fill_in():
    cfg = load_config_text(GOOD, "rollwise.yaml")
    assert (cfg.keep_releases, list(cfg.environments), cfg.health.path) == (5, ["dev"], "/health")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app: shop\nrun: [\n", "rollwise.yaml:3: malformed YAML"),
        (GOOD + "colour: blue\n", "rollwise.yaml:4: colour: unknown key"),
        (
            GOOD + "keep_releases: 1\n",
            "rollwise.yaml:4: keep_releases: Input should be greater than or equal to 3",
        ),
        (
            GOOD + "environments:\n  dev:\n    instances: two\n",
            "rollwise.yaml:6: environments.dev.instances: Input should be a valid integer",
        ),
        ("app: shop\n", "rollwise.yaml:1: run: required key is missing"),
        (
            GOOD + "environments:\n  dev:\n    router: {listen: nowhere}\n",
            "rollwise.yaml:6: environments.dev.router.listen: must be host:port",
        ),
        (GOOD + "app: other\n", "rollwise.yaml:4: key 'app' appears twice"),
        ("", "rollwise.yaml: file is empty"),
        (GOOD + "environments:\n  a: {}\n  b: {}\n", "both listen on 127.0.0.1:8080"),
    ],
)
def test_given_bad_config_then_the_error_says_where_and_what(text, expected):
    assert expected in error_of(text)


def test_given_listen_on_all_interfaces_and_unexpanded_variables_then_lint_warns_by_key():
    from rollwise.config.lint import lint

    cfg = load_config_text(
        "app: shop\n"
        "run: {command: python3 app.py, env: {DB: 'postgresql://u:${DB_PASSWORD}@h/db', "
        "MODE: fast}}\n"
        "environments:\n"
        "  dev: {router: {listen: '0.0.0.0:8080'}, env: {HOME_DIR: $HOME/x}}\n"
        "  prod: {router: {listen: '127.0.0.1:9090'}}\n",
        "rollwise.yaml",
    )

    assert lint(cfg) == [
        "run.env.DB contains ${DB_PASSWORD}, which is passed as written: rollwise does not "
        "expand variables; put secret values in `secrets:` (docs/secrets.md) and write others "
        "out",
        "environments.dev.env.HOME_DIR contains $HOME, which is passed as written: rollwise "
        "does not expand variables; put secret values in `secrets:` (docs/secrets.md) and "
        "write others out",
        "environments.dev.router.listen is 0.0.0.0:8080: the router takes requests on every "
        "network interface, from other machines too; write 127.0.0.1:<port> unless that is "
        "meant",
    ]
    assert lint(cfg, "prod") == lint(cfg)[:1]
