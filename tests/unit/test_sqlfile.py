"""Migration SQL read by a parser: statements and lint findings as plain data, by equality;
and the runner's plans (transactions, lock-timeout settings) built from them."""

from __future__ import annotations

import pytest

from rollwise.data import sqlfile as sf
from rollwise.data.migrations import Migration, lint
from rollwise.data.sqlfile import Finding, Statement, findings, statements
from rollwise.data.sqlrunner import batches, kept_after_failure, lock_timeout_settings

PLPGSQL = """\
-- rollwise: expand
CREATE TABLE audit (id SERIAL PRIMARY KEY, note TEXT DEFAULT 'a;b');
CREATE OR REPLACE FUNCTION stamp() RETURNS trigger AS $$
BEGIN
  NEW.note := 'changed; again';  -- a comment; in the body
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE FUNCTION two() RETURNS int AS $body$
DECLARE x text := $$inner; quote$$;
BEGIN RETURN 2; END;
$body$ LANGUAGE plpgsql;
DO $do$ BEGIN RAISE NOTICE 'x;'; END $do$;
"""


def test_given_plpgsql_bodies_then_each_function_is_one_statement_with_its_line():
    assert statements(PLPGSQL) == [
        Statement(2, "CREATE TABLE audit (id SERIAL PRIMARY KEY, note TEXT DEFAULT 'a;b')"),
        Statement(
            3,
            "CREATE OR REPLACE FUNCTION stamp() RETURNS trigger AS $$\nBEGIN\n"
            "  NEW.note := 'changed; again';  -- a comment; in the body\n"
            "  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql",
        ),
        Statement(
            9,
            "CREATE FUNCTION two() RETURNS int AS $body$\n"
            "DECLARE x text := $$inner; quote$$;\nBEGIN RETURN 2; END;\n"
            "$body$ LANGUAGE plpgsql",
        ),
        Statement(13, "DO $do$ BEGIN RAISE NOTICE 'x;'; END $do$"),
    ]


def test_given_semicolons_in_strings_names_and_comments_then_they_end_nothing():
    sql = (
        "-- a comment; with a semicolon\n"
        "INSERT INTO t VALUES ('it''s; fine', E'x\\';y');  /* one; more */\n"
        'SELECT "odd;name" FROM t;\n'
        "INSERT INTO t VALUES ('mysql\\'s; escape');"
    )
    assert statements(sql) == [
        Statement(2, "INSERT INTO t VALUES ('it''s; fine', E'x\\';y')"),
        Statement(3, 'SELECT "odd;name" FROM t'),
        Statement(4, "INSERT INTO t VALUES ('mysql\\'s; escape')"),
    ]


def test_given_empty_statements_and_comments_only_then_they_are_left_out():
    assert statements(";;\n  ;\n-- only a comment;\n/* and; this */\n") == []
    assert statements("SELECT 1;;\n\nSELECT 2") == [
        Statement(1, "SELECT 1"),
        Statement(3, "SELECT 2"),
    ]


def test_given_a_mysql_procedure_then_its_begin_end_block_stays_whole():
    sql = (
        "CREATE PROCEDURE bump() BEGIN UPDATE t SET n = n + 1; SELECT 1; END;\n"
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN\n"
        "  IF NEW.n IS NULL THEN SET NEW.n = 0; END IF;\nEND;\nSELECT 3;"
    )
    assert [s.line for s in statements(sql)] == [1, 2, 5]
    assert statements(sql)[0].sql.endswith("SELECT 1; END")


def test_statements_postgresql_refuses_in_a_transaction_are_marked():
    assert [
        s.transaction
        for s in statements(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix ON orders (qty);\n"
            "DROP INDEX CONCURRENTLY old_ix;\nVACUUM orders;\nCREATE INDEX ix2 ON orders (n);"
        )
    ] == [False, False, False, True]


def test_not_null_without_default_is_flagged_on_add_column_never_in_create_table():
    sql = (
        "CREATE TABLE orders (id INT NOT NULL, qty INT NOT NULL);\n"
        "ALTER TABLE orders ADD COLUMN new_in_file INT NOT NULL;\n"
        "ALTER TABLE customers ADD COLUMN tier TEXT NOT NULL,\n"
        "  ADD COLUMN IF NOT EXISTS seen BOOLEAN NOT NULL DEFAULT false,\n"
        "  ADD note TEXT,\n"
        "  ADD CONSTRAINT c CHECK (tier IS NOT NULL) NOT VALID;"
    )
    assert findings(sql) == [Finding(3, sf.NOT_NULL, "customers", "tier")]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "ALTER TABLE orders ALTER COLUMN qty TYPE BIGINT USING qty::bigint",
            [Finding(1, sf.CHANGE_TYPE, "orders", "qty")],
        ),
        (
            "ALTER TABLE public.orders ALTER qty SET DATA TYPE BIGINT",
            [Finding(1, sf.CHANGE_TYPE, "public.orders", "qty")],
        ),
        (
            "ALTER TABLE orders ADD COLUMN ref UUID NOT NULL DEFAULT gen_random_uuid()",
            [Finding(1, sf.REWRITE, "orders", "ref")],
        ),
        ("ALTER TABLE orders ADD COLUMN seq BIGSERIAL", [Finding(1, sf.REWRITE, "orders", "seq")]),
        ("ALTER TABLE orders ADD COLUMN at TIMESTAMPTZ NOT NULL DEFAULT now()", []),
        (
            "ALTER TABLE orders ALTER COLUMN channel SET NOT NULL",
            [Finding(1, sf.SET_NOT_NULL, "orders", "channel")],
        ),
        ("ALTER TABLE orders ALTER COLUMN channel SET DEFAULT 'web'", []),
        (
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES customers (id)",
            [Finding(1, sf.VALIDATE, "orders")],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES customers (id) "
            "NOT VALID",
            [],
        ),
        (
            "ALTER TABLE orders ADD CONSTRAINT u UNIQUE (ref)",
            [Finding(1, sf.UNIQUE_INDEX, "orders")],
        ),
        ("ALTER TABLE orders ADD CONSTRAINT u UNIQUE USING INDEX orders_ref", []),
        ("CREATE UNIQUE INDEX ix ON ONLY orders (qty)", [Finding(1, sf.INDEX, "orders")]),
        ("CREATE INDEX CONCURRENTLY ix ON orders (qty)", []),
        (
            "ALTER TABLE `orders` MODIFY COLUMN qty BIGINT NOT NULL",
            [Finding(1, sf.CHANGE_TYPE, "orders", "qty")],
        ),
        ("ALTER TABLE orders MODIFY qty BIGINT, ALGORITHM=INPLACE, LOCK=NONE", []),
        ("ALTER TABLE orders ADD INDEX ix (qty)", []),
        (
            "ALTER TABLE orders DROP COLUMN IF EXISTS note, DROP CONSTRAINT fk, DROP INDEX ix",
            [Finding(1, sf.DROP_COLUMN, "orders", "note")],
        ),
        (
            "DROP TABLE IF EXISTS old_orders, archive.old CASCADE",
            [Finding(1, sf.DROP_TABLE, "old_orders"), Finding(1, sf.DROP_TABLE, "archive.old")],
        ),
        (
            "ALTER TABLE orders RENAME COLUMN qty TO quantity",
            [Finding(1, sf.RENAME, "orders", "qty")],
        ),
        ("ALTER TABLE orders RENAME TO purchases", [Finding(1, sf.RENAME, "orders")]),
        ("RENAME TABLE orders TO purchases", [Finding(1, sf.RENAME, "orders")]),
        ("INSERT INTO notes VALUES ('DROP TABLE orders; ALTER TABLE t ADD c INT NOT NULL')", []),
        (
            "DELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; END//\nDELIMITER ;",
            [Finding(1, sf.DELIMITER, "")],
        ),
    ],
)
def test_lint_reads_each_statement_by_its_words(sql, expected):
    assert findings(sql) == expected


def test_tables_created_in_the_same_file_are_new_and_need_no_care():
    sql = (
        "CREATE TABLE IF NOT EXISTS events (id INT);\n"
        "CREATE INDEX events_id ON events (id);\n"
        "ALTER TABLE events ADD COLUMN kind TEXT NOT NULL, ALTER COLUMN id TYPE BIGINT;\n"
        "CREATE INDEX orders_qty ON orders (qty);"
    )
    assert findings(sql) == [Finding(4, sf.INDEX, "orders")]


def test_lint_lines_name_the_file_line_and_the_way_around():
    ms = [
        Migration(
            "3",
            "tier",
            "-- rollwise: expand\n\nALTER TABLE customers\n  ADD COLUMN tier TEXT NOT NULL;\n",
            "x",
        )
    ]
    assert lint(ms) == [
        "3_tier.up.sql:3: adds customers.tier NOT NULL without a DEFAULT: if customers has "
        "rows, PostgreSQL refuses it and MySQL fills them with the type's zero value, and the "
        "old release's inserts fail; add it nullable (or with a default), backfill, then "
        "tighten"
    ]


def test_dropped_reads_sql_by_parser_and_skips_constraints_and_indexes():
    from rollwise.data.migrations import dropped

    assert dropped(
        "ALTER TABLE orders DROP CONSTRAINT fk, DROP PRIMARY KEY, DROP channel;\n"
        "-- DROP TABLE commented_out;\nDROP TABLE audit;"
    ) == [("orders", "channel"), ("audit", None)]


def test_a_run_is_one_transaction_but_concurrently_migrations_run_alone():
    assert batches([True, True, False, True], together=True) == [
        (True, [0, 1]),
        (False, [2]),
        (True, [3]),
    ]
    assert batches([True, True], together=False) == [(True, [0]), (True, [1])]
    assert batches([], together=True) == []


def test_lock_timeout_settings_per_engine():
    assert lock_timeout_settings("postgresql", 5) == ["SET lock_timeout = '5000ms'"]
    assert lock_timeout_settings("postgresql", 0.25) == ["SET lock_timeout = '250ms'"]
    assert lock_timeout_settings("mysql", 2.5) == [
        "SET SESSION lock_wait_timeout = 3",
        "SET SESSION innodb_lock_wait_timeout = 3",
    ]
    assert lock_timeout_settings("sqlite", 5) == []


def test_the_failure_hint_says_what_of_the_run_was_kept():
    assert (
        kept_after_failure(True, True, False)
        == "nothing of this run was kept; the schema is as before"
    )
    assert kept_after_failure(True, True, True).startswith(
        "the migrations before it in this run are applied"
    )
    assert "MySQL commits DDL at once" in kept_after_failure(False, True, False)
    assert "INVALID index" in kept_after_failure(True, False, False)
