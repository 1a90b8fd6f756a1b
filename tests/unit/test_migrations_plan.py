"""Migration folders as plain data: scanning, linting and paths, tested by equality."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollwise.data.migrations import (
    Migration,
    SchemaChange,
    UnknownRevision,
    down_path,
    lint,
    rollback_change,
    scan,
    up_path,
)
from rollwise.errors import ConfigError


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    return tmp_path


def m(v: str, expand: bool = False, irreversible: bool = False) -> Migration:
    return Migration(
        v, f"m{v}", "SELECT 1;", None if irreversible else "SELECT 2;", irreversible, expand
    )


def test_scan_orders_by_number_and_reads_markers(tmp_path):
    ms = scan(
        folder(
            tmp_path,
            {
                "10_b.up.sql": "-- rollwise: expand\nALTER TABLE t ADD COLUMN c INT;",
                "10_b.down.sql": "ALTER TABLE t DROP COLUMN c;",
                "9_a.up.sql": "-- rollwise: irreversible\nUPDATE t SET x = 1;",
                "README.md": "ignored",
            },
        )
    )
    assert [(x.version, x.name, x.expand, x.irreversible, x.down is None) for x in ms] == [
        ("9", "a", False, True, True),
        ("10", "b", True, False, False),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_a.up.sql": "x"}, "1_a.up.sql has no down step"),
        ({"1-a.up.sql": "x"}, "is not <version>_<name>.up.sql"),
        (
            {"1_a.up.sql": "x", "01_b.up.sql": "y", "1_a.down.sql": "z", "01_b.down.sql": "w"},
            "two up migrations with version",
        ),
        ({"2_a.down.sql": "x"}, "has no up migration"),
    ],
)
def test_scan_refuses_bad_folders_naming_the_file(tmp_path, files, message):
    with pytest.raises(ConfigError, match=message) as e:
        scan(folder(tmp_path, files))
    assert e.value.where and str(tmp_path) in e.value.where


def test_lint_names_destructive_changes_with_the_alternative():
    ms = [
        Migration("1", "a", "DROP TABLE old_orders;", "x"),
        Migration("2", "b", "ALTER TABLE t ADD COLUMN c INT NOT NULL;", "x"),
        Migration("3", "c", "ALTER TABLE t ADD COLUMN d INT NOT NULL DEFAULT 0;", "x"),
        Migration("4", "d", "-- DROP TABLE in a comment\nALTER TABLE t RENAME COLUMN a TO b;", "x"),
    ]
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
        "keep",
        ("3_m3.up.sql", "2_m2.up.sql"),
        "every newer migration is marked expand: the release's code works on the current schema",
    )
    assert rollback_change([m("3"), m("2", expand=True)]).action == "down"
    assert rollback_change([m("3", irreversible=True)]).action == "restore"


def test_dropped_names_columns_and_tables_a_down_step_drops():
    from rollwise.data.migrations import dropped

    assert dropped(
        "-- DROP TABLE x\nALTER TABLE orders DROP COLUMN channel;\n"
        "ALTER TABLE `t` DROP `c`;\nDROP TABLE IF EXISTS audit;"
    ) == [("orders", "channel"), ("t", "c"), ("audit", None)]


def revision(
    rev: str,
    parent: str | None,
    up: str = "op.add_column('t', sa.Column('c'))",
    down: str = "op.drop_column('t', 'c')",
    head: str = "",
) -> str:
    return (
        f'"""{rev} does a thing\n\nRevision ID: {rev}\n"""\n{head}'
        f"revision = {rev!r}\ndown_revision: str | None = {parent!r}\n\n"
        f"def upgrade():\n    {up}\n\n\ndef downgrade():\n    {down}\n"
    )


def test_alembic_revisions_are_read_without_importing_and_ordered_by_down_revision(tmp_path):
    from rollwise.data.alembic import scan_revisions

    ms = scan_revisions(
        folder(
            tmp_path,
            {
                "c_third.py": revision("c3", "b2", head="# rollwise: expand\n"),
                "a_first.py": revision("a1", None, up="import nothing_installed_here"),
                "b_second.py": revision("b2", "a1", down='"""no way back."""\n    pass'),
                "__init__.py": "",
            },
        )
    )
    assert [(x.version, x.name, x.irreversible, x.expand, x.down is None, x.file) for x in ms] == [
        ("a1", "a1 does a thing", False, False, False, "a_first.py"),
        ("b2", "b2 does a thing", True, False, True, "b_second.py"),
        ("c3", "c3 does a thing", False, True, False, "c_third.py"),
    ]
    assert "op.drop_column('t', 'c')" in (ms[0].down or "")
    assert [x.version for x in up_path(ms, {"a1"})] == ["b2", "c3"]
    assert [x.version for x in down_path(ms, {"a1", "b2", "c3"}, "a1")] == ["c3", "b2"]
    assert rollback_change(down_path(ms, {"a1", "b2", "c3"}, "a1")).action == "restore"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {
                "a.py": revision("a1", None),
                "b.py": revision("b2", "a1"),
                "c.py": revision("c3", "a1"),
            },
            "all follow a1: there are several heads",
        ),
        (
            {
                "a.py": revision("a1", None),
                "m.py": revision("m", None).replace("= None", "= ('a1', 'x')"),
            },
            "merges revisions a1, x",
        ),
        ({"a.py": revision("a1", None), "b.py": revision("b2", "zz")}, "do not lead back"),
        ({"a.py": "def upgrade(:\n"}, "does not parse"),
        ({"a.py": "x = 1\n"}, "has no `revision"),
    ],
)
def test_alembic_branches_and_broken_files_are_refused_naming_the_file(tmp_path, files, message):
    from rollwise.data.alembic import scan_revisions

    with pytest.raises(ConfigError, match=message):
        scan_revisions(folder(tmp_path, files))


def test_lint_and_dropped_read_alembic_operations():
    from rollwise.data.migrations import dropped

    up = (
        "op.drop_table('legacy')\nop.alter_column('t', 'a', new_column_name='b')\n"
        "op.alter_column('t', 'p', type_=sa.String(length=256))\n"
        "op.add_column('t', sa.Column('n', sa.Integer(), nullable=False))\n"
        "op.add_column('t', sa.Column('d', sa.Integer(), nullable=False, "
        "server_default='0'))\n"
    )
    got = [
        w.split(": ", 1)[1].split(":")[0]
        for w in lint([Migration("a1", "a", up, "x", filename="a.py")])
    ]
    assert got == [
        "drops a table",
        "renames",
        "changes a column type",
        "NOT NULL without a server default",
    ]
    down = (
        "with op.batch_alter_table('transaction', schema=None) as batch_op:\n"
        "    batch_op.drop_column('remote_addr')\n"
        'op.drop_column("bill", "bill_type")\nop.drop_table(\'archive\')\n'
    )
    assert dropped(down) == [
        ("bill", "bill_type"),
        ("archive", None),
        ("transaction", "remote_addr"),
    ]


def test_the_compatibility_floor_is_below_the_trailing_expand_migrations():
    from rollwise.controller.schema import compatibility_floor

    assert compatibility_floor([m("1"), m("2"), m("3")]) == "3"
    assert compatibility_floor([m("1"), m("2", expand=True), m("3", expand=True)]) == "1"
    assert compatibility_floor([m("1", expand=True)]) is None
    assert compatibility_floor([m("1"), m("2", expand=True), m("3")]) == "3"


def test_given_a_target_or_an_applied_revision_the_release_does_not_hold_then_refused():
    ms = [m("1"), m("2")]
    with pytest.raises(UnknownRevision, match="revision 7 is not among"):
        down_path(ms, {"1", "2"}, "7")
    with pytest.raises(UnknownRevision, match=r"migration\(s\) 3 that this release"):
        down_path(ms, {"1", "2", "3"}, "1")
    assert [x.version for x in down_path(ms, {"1", "2"}, None)] == ["2", "1"]
