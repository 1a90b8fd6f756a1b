"""Migration folders as plain data: scanning, linting and paths, tested by equality."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollwise.data.migrations import (
    Migration,
    SchemaChange,
    down_path,
    lint,
    rollback_change,
    scan,
    statements,
    up_path,
)
from rollwise.errors import ConfigError


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    return tmp_path


def m(v: str, expand: bool = False, irreversible: bool = False) -> Migration:
    return Migration(v, f"m{v}", "SELECT 1;", None if irreversible else "SELECT 2;",
                     irreversible, expand)


def test_scan_orders_by_number_and_reads_markers(tmp_path):
    ms = scan(folder(tmp_path, {
        "10_b.up.sql": "-- rollwise: expand\nALTER TABLE t ADD COLUMN c INT;",
        "10_b.down.sql": "ALTER TABLE t DROP COLUMN c;",
        "9_a.up.sql": "-- rollwise: irreversible\nUPDATE t SET x = 1;",
        "README.md": "ignored"}))
    assert [(x.version, x.name, x.expand, x.irreversible, x.down is None) for x in ms] == [
        ("9", "a", False, True, True), ("10", "b", True, False, False)]


@pytest.mark.parametrize(("files", "message"), [
    ({"1_a.up.sql": "x"}, "1_a.up.sql has no down step"),
    ({"1-a.up.sql": "x"}, "is not <version>_<name>.up.sql"),
    ({"1_a.up.sql": "x", "01_b.up.sql": "y", "1_a.down.sql": "z", "01_b.down.sql": "w"},
     "two up migrations with version"),
    ({"2_a.down.sql": "x"}, "has no up migration"),
])
def test_scan_refuses_bad_folders_naming_the_file(tmp_path, files, message):
    with pytest.raises(ConfigError, match=message) as e:
        scan(folder(tmp_path, files))
    assert e.value.where and str(tmp_path) in e.value.where


def test_lint_names_destructive_changes_with_the_alternative():
    ms = [Migration("1", "a", "DROP TABLE old_orders;", "x"),
          Migration("2", "b", "ALTER TABLE t ADD COLUMN c INT NOT NULL;", "x"),
          Migration("3", "c", "ALTER TABLE t ADD COLUMN d INT NOT NULL DEFAULT 0;", "x"),
          Migration("4", "d", "-- DROP TABLE in a comment\nALTER TABLE t RENAME COLUMN a TO b;",
                    "x")]
    assert [w.split(":")[0] for w in lint(ms)] == ["1_a.up.sql", "2_b.up.sql", "4_d.up.sql"]
    assert "expand/contract" in lint(ms)[0]


def test_paths_up_to_a_target_and_down_above_it():
    ms = [m("1"), m("2"), m("3")]
    assert [x.version for x in up_path(ms, {"1"}, None)] == ["2", "3"]
    assert [x.version for x in up_path(ms, set(), "2")] == ["1", "2"]
    assert [x.version for x in down_path(ms, {"1", "2", "3"}, "1")] == ["3", "2"]
    assert down_path(ms, {"1"}, "1") == []


def test_rollback_change_keeps_expand_runs_down_or_needs_a_restore():
    assert rollback_change([]).action == "none"
    assert rollback_change([m("3", expand=True), m("2", expand=True)]) == SchemaChange(
        "keep", ("3_m3.up.sql", "2_m2.up.sql"), "every newer migration is marked expand: the "
        "release's code works on the current schema")
    assert rollback_change([m("3"), m("2", expand=True)]).action == "down"
    assert rollback_change([m("3", irreversible=True)]).action == "restore"


def test_statements_split_on_line_ending_semicolons_without_comments():
    assert statements("-- a comment;\nCREATE TABLE a (x TEXT DEFAULT 'a;b');\n"
                      "INSERT INTO a VALUES ('x');") == [
        "CREATE TABLE a (x TEXT DEFAULT 'a;b')", "INSERT INTO a VALUES ('x')"]


def test_dropped_names_columns_and_tables_a_down_step_drops():
    from rollwise.data.migrations import dropped

    assert dropped("-- DROP TABLE x\nALTER TABLE orders DROP COLUMN channel;\n"
                   "ALTER TABLE `t` DROP `c`;\nDROP TABLE IF EXISTS audit;") == [
        ("orders", "channel"), ("t", "c"), ("audit", None)]
