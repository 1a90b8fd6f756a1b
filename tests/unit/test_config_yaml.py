"""rollwise.yaml is plain data: tags, alias bombs and files that are not YAML text are refused
with a ConfigError (exit 3) naming the file and line, before anything is expanded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rollwise.config.load import load_config, load_config_text
from rollwise.errors import ConfigError, ExitCode
from rollwise.project import find_config

GOOD = "app: shop\nrun:\n  command: python3 app.py --port {port}\n"  # line 4 is next


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "rollwise.yaml")
    assert e.value.code == ExitCode.CONFIG
    return str(e.value)


def bomb(levels: int) -> str:
    """A billion laughs: each level is nine aliases of the one before."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested_by_aliases(levels: int, per_anchor: int) -> str:
    """Anchors that each nest the one before `per_anchor` levels deeper: small, but deep."""
    lines = [f"a0: &a0 {'[' * per_anchor}1{']' * per_anchor}"]
    lines += [
        f"a{i}: &a{i} {'[' * per_anchor}*a{i - 1}{']' * per_anchor}" for i in range(1, levels)
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD + "x: !!python/object/apply:os.system ['echo hi']\n",
            "rollwise.yaml:4: the tag !!python/object/apply:os.system is not allowed: "
            "rollwise.yaml holds plain data\nhint: remove the tag",
        ),
        (GOOD + "env: !!python/name:os.environ\n", "rollwise.yaml:4: the tag !!python/name:os"),
        (GOOD + "secret: !vault abc\n", "rollwise.yaml:4: the tag !vault is not allowed"),
        (GOOD + "keep_releases: !!int five\n", "rollwise.yaml:4: the tag !!int is not allowed"),
        (GOOD + "build: !!map {command: make}\n", "rollwise.yaml:4: the tag !!map is not allowed"),
        (GOOD + "x: !!binary aGk=\n", "rollwise.yaml:4: the tag !!binary is not allowed"),
        (GOOD + "x: &x [1, *x]\n", "rollwise.yaml:4: the alias *x is inside its own anchor"),
        (
            GOOD + "x: " + "[" * 100 + "]" * 100 + "\n",
            "rollwise.yaml:4: nested more than 64 levels",
        ),
        (GOOD + nested_by_aliases(levels=20, per_anchor=60), "nested more than 64 levels deep"),
        (
            GOOD + "x: *nowhere\n",
            "rollwise.yaml:4: malformed YAML: found undefined alias 'nowhere'",
        ),
        (
            GOOD + "x: &a 1\ny: &a 2\n",
            "rollwise.yaml:5: malformed YAML: found duplicate anchor 'a'",
        ),
        (GOOD + "x: =\n", "rollwise.yaml:4: malformed YAML: could not determine a constructor"),
        (
            GOOD + "x: {<<: 3}\n",
            "rollwise.yaml:4: malformed YAML: expected a mapping or list of mappings for merging",
        ),
        (
            GOOD + "---\napp: other\n",
            "rollwise.yaml:4: malformed YAML: expected a single document "
            "in the stream but found another document",
        ),
        (
            "app: shop\nrun:\n\tcommand: x\n",
            "rollwise.yaml:3: malformed YAML: found character '\\t' that cannot start any token",
        ),
        (
            "app: shop\nrun:\n  command: x\n   port: 1\n",
            "rollwise.yaml:4: malformed YAML: mapping values are not allowed here",
        ),
        ("app: 'shop\n", "rollwise.yaml:2: malformed YAML: found unexpected end of stream"),
        (
            GOOD + "health:\n  path: /a\n  path: /b\n",
            "rollwise.yaml:6: key 'health.path' appears twice",
        ),
        (GOOD + "x: a\x00b\n", "rollwise.yaml:4: not text: character #x0000 is not allowed"),
        (GOOD + "x: a\x1bb\n", "rollwise.yaml:4: not text: character #x001b is not allowed"),
        ("- app: shop\n- run: x\n", "rollwise.yaml:1: top level must be a mapping of keys"),
        ("# settings\n\njust text\n", "rollwise.yaml:3: top level must be a mapping of keys"),
        ("# only a comment\n", "rollwise.yaml: file is empty"),
        ("---\n...\n", "rollwise.yaml: file is empty"),
    ],
)
def test_given_yaml_that_is_not_plain_data_then_a_config_error_names_the_line(text, expected):
    assert expected in refusal(text)


@pytest.mark.timeout(20)  # a loader that expanded this bomb would never return
def test_given_a_billion_laughs_then_it_is_refused_before_anything_is_expanded():
    message = refusal(GOOD + bomb(levels=30))  # 9**30 values, expanded

    assert message.startswith(
        "rollwise.yaml:8: aliases add more than 10000 values to the "
        "document (an alias bomb?)\nhint: write the values out"
    )


def test_given_anchors_and_merge_keys_within_the_limit_then_they_load():
    cfg = load_config_text(
        "app: shop\n"
        "run:\n"
        "  command: python3 app.py --port {port}\n"
        "  env: &common {LOG: info, TZ: UTC}\n"
        "environments:\n"
        "  dev: {env: *common}\n"
        "  prod: {router: {listen: '127.0.0.1:9090'}, env: {<<: *common, LOG: warn}}\n"
        "build: {command: !!str 123}\n",
        "rollwise.yaml",
    )

    assert cfg.environments["dev"].env == {"LOG": "info", "TZ": "UTC"}
    assert cfg.environments["prod"].env == {"LOG": "warn", "TZ": "UTC"}
    assert cfg.build.command == "123"


def test_given_validation_errors_under_an_alias_then_they_keep_file_line_and_key():
    text = GOOD + "defaults: &d {instances: two}\nenvironments:\n  dev: *d\n"

    assert "rollwise.yaml:4: environments.dev.instances: Input should be a valid integer" in (
        refusal(text).replace("rollwise.yaml:4: defaults: unknown key", "")
    )


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "rollwise.yaml"
    path.write_bytes(data)
    return path


def file_refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.code == ExitCode.CONFIG
    return str(e.value)


def test_given_a_file_that_is_not_utf8_then_the_line_of_the_first_bad_byte_is_named(tmp_path):
    path = write(tmp_path, GOOD.encode() + "x: caf\u00e9\n".encode("latin-1"))

    assert file_refusal(path).startswith(
        f"{path}:4: not UTF-8 text: byte 0xe9 cannot be read\nhint: rollwise.yaml is UTF-8 text"
    )


def test_given_a_binary_file_then_it_is_refused_as_not_text(tmp_path):
    path = write(tmp_path, b"\x7fELF\x02\x01\x01\x00\x00\x00\n\x89PNG\r\n\x1a\n\xff\xd8")

    assert file_refusal(path).startswith(f"{path}:2: not UTF-8 text: byte 0x89")


def test_given_utf8_with_a_nul_byte_then_it_is_refused_as_not_text(tmp_path):
    path = write(tmp_path, GOOD.encode() + b"\x00\x00\x00\x00")

    assert file_refusal(path).startswith(f"{path}:4: not text: character #x0000")


def test_given_an_empty_file_then_it_says_so(tmp_path):
    path = write(tmp_path, b"")

    assert file_refusal(path).startswith(f"{path}: file is empty")


def test_given_a_utf8_file_with_a_byte_order_mark_then_it_loads(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())

    assert load_config(path).app == "shop"


def test_given_a_directory_named_rollwise_yaml_then_find_and_load_refuse_it(tmp_path):
    (tmp_path / "rollwise.yaml").mkdir()
    (tmp_path / "sub").mkdir()

    with pytest.raises(ConfigError) as found:
        find_config(tmp_path / "sub")
    assert str(found.value).startswith(
        f"{tmp_path / 'rollwise.yaml'}: rollwise.yaml is a directory, not a file"
    )
    assert file_refusal(tmp_path / "rollwise.yaml").startswith(
        f"{tmp_path / 'rollwise.yaml'}: cannot read: Is a directory"
    )


def test_given_a_link_to_nothing_named_rollwise_yaml_then_find_refuses_it(tmp_path):
    os.symlink("gone.yaml", tmp_path / "rollwise.yaml")

    with pytest.raises(ConfigError) as e:
        find_config(tmp_path)
    assert "rollwise.yaml is a link to nothing, not a file" in str(e.value)
