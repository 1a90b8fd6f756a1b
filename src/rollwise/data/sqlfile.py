"""A migration file's SQL read by a parser (sqlparse), as plain data: its statements, and
the changes they make that break the running release or hold a lock on a live table.

The parser knows strings, quoted names, comments, dollar-quoted bodies (`$$ ... $$`,
`$tag$ ... $tag$`) and `BEGIN ... END` blocks of `CREATE PROCEDURE`, `FUNCTION` and
`TRIGGER`, so a `;` inside any of them does not end a statement. The lint reads the words of
each statement (comments and strings set apart by the parser) by position, not by pattern.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from sqlparse import tokens as T
from sqlparse.engine import FilterStack
from sqlparse.sql import Token

# lint rules
DROP_TABLE: Final = "drop-table"
DROP_COLUMN: Final = "drop-column"
RENAME: Final = "rename"
CHANGE_TYPE: Final = "change-type"
NOT_NULL: Final = "not-null-without-default"
REWRITE: Final = "table-rewrite"
SET_NOT_NULL: Final = "set-not-null"
VALIDATE: Final = "constraint-validation"
UNIQUE_INDEX: Final = "constraint-index"
INDEX: Final = "index-without-concurrently"
DELIMITER: Final = "delimiter"

ADVICE: Final = {
    DROP_TABLE: "drops table {table}: rename it away in one release, drop it in a later one "
    "(expand/contract)",
    DROP_COLUMN: "drops column {table}.{column}: stop using it in one release, drop it in a "
    "later one",
    RENAME: "renames {table}{dot}{column}: add the new name, write both, move readers, then "
    "drop the old one",
    CHANGE_TYPE: "changes the type of {table}.{column}: the old release may not read it, and "
    "the table is rewritten while writes to it wait (MySQL/MariaDB: unless `ALGORITHM=INPLACE, "
    "LOCK=NONE` is written and possible); add a column of the new type and backfill it instead",
    NOT_NULL: "adds {table}.{column} NOT NULL without a DEFAULT: if {table} has rows, "
    "PostgreSQL refuses it and MySQL fills them with the type's zero value, and the old "
    "release's inserts fail; add it nullable (or with a default), backfill, then tighten",
    REWRITE: "adds {table}.{column} with a value per row (a volatile default such as "
    "random() or gen_random_uuid(), serial, identity, generated, AUTO_INCREMENT): the whole "
    "table is rewritten while writes to it wait; add it without that default, then backfill "
    "in batches",
    SET_NOT_NULL: "sets {table}.{column} NOT NULL: PostgreSQL reads the whole table while "
    "writes to it wait; add CHECK ({column} IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT in a "
    "later migration, then SET NOT NULL (PostgreSQL 12+ then skips the scan)",
    VALIDATE: "adds a constraint to {table} that is checked against every row while writes "
    "to it wait; PostgreSQL: add it NOT VALID, then ALTER TABLE {table} VALIDATE CONSTRAINT in "
    "a later migration (MySQL copies the table for a foreign key: use an online schema tool)",
    UNIQUE_INDEX: "adds a unique or primary key constraint to {table}: PostgreSQL builds its "
    "index while writes to it wait; CREATE UNIQUE INDEX CONCURRENTLY in one migration, then "
    "ADD CONSTRAINT ... USING INDEX in the next",
    INDEX: "creates an index on {table} without CONCURRENTLY: PostgreSQL blocks writes to "
    "{table} while it builds; write CREATE INDEX CONCURRENTLY IF NOT EXISTS, alone in its "
    "migration (rollwise runs it outside a transaction; MySQL/MariaDB build indexes online "
    "anyway)",
    DELIMITER: "uses DELIMITER, a command of the mysql client that the server does not know: "
    "remove the DELIMITER lines and end the body with `END;` (rollwise keeps BEGIN ... END "
    "whole)",
}

SERIAL_TYPES: Final = frozenset(
    {"SERIAL", "BIGSERIAL", "SMALLSERIAL", "SERIAL4", "SERIAL8", "SERIAL2"}
)
VOLATILE: Final = frozenset(
    {
        "RANDOM",
        "GEN_RANDOM_UUID",
        "UUID_GENERATE_V1",
        "UUID_GENERATE_V1MC",
        "UUID_GENERATE_V4",
        "UUIDV4",
        "UUIDV7",
        "CLOCK_TIMESTAMP",
        "TIMEOFDAY",
        "NEXTVAL",
        "UUID",
    }
)
CONSTRAINTS: Final = frozenset(
    {
        "CONSTRAINT",
        "PRIMARY",
        "UNIQUE",
        "FOREIGN",
        "CHECK",
        "INDEX",
        "KEY",
        "FULLTEXT",
        "SPATIAL",
        "EXCLUDE",
    }
)
NOT_A_COLUMN: Final = CONSTRAINTS | {"DEFAULT", "PARTITION"}


@dataclass(frozen=True)
class Statement:
    """One statement: the line it starts on, its text as written (without the comments
    around it and its final `;`), and whether it may run in a transaction (PostgreSQL
    refuses CREATE INDEX CONCURRENTLY and VACUUM in one)."""

    line: int
    sql: str
    transaction: bool = True


@dataclass(frozen=True)
class Finding:
    """A change the lint warns about: where, which rule, on what."""

    line: int
    rule: str
    table: str
    column: str = ""

    def advice(self) -> str:
        return ADVICE[self.rule].format(
            table=self.table, column=self.column, dot="." if self.column else ""
        )


def statements(sql: str) -> list[Statement]:
    """The statements of a migration file, in order; empty ones (`;;`, comments) left out."""
    return [s for s, _ in _parsed(sql)]


def findings(sql: str) -> list[Finding]:
    """What the file does that drops, renames or rewrites a table in use, or locks it while
    writes wait. Tables created earlier in the same file are new and empty: no finding."""
    new: set[str] = set()
    out: list[Finding] = []
    for s, words in _parsed(sql):
        if created := _created_table(words):
            new.add(created.lower())
        out += [f for f in _statement(words, s.line) if f.table.lower() not in new]
    return out


def _parsed(sql: str) -> Iterator[tuple[Statement, list[str]]]:
    line = 1
    # The splitting stage alone: sqlparse.parse() also groups tokens, which is slower and
    # refuses a statement of over 10,000 tokens (a data migration's INSERT).
    for parsed in FilterStack().run(sql):  # type: ignore[no-untyped-call]
        tokens = list(parsed.flatten())
        body = [n for n, t in enumerate(tokens) if _significant(t)]
        if body:
            first, last = body[0], body[-1]
            text = "".join(t.value for t in tokens[first : last + 1])
            start = line + "".join(t.value for t in tokens[:first]).count("\n")
            words = _words(tokens[first : last + 1])
            yield Statement(start, text, _transaction(words)), words
        line += str(parsed).count("\n")


def _significant(t: Token) -> bool:
    return not (
        t.is_whitespace or t.ttype in T.Comment or (t.ttype is T.Punctuation and t.value == ";")
    )


def _words(tokens: list[Token]) -> list[str]:
    """Words as written (names unquoted, keywords such as `NOT NULL` split); strings keep
    their quotes, so no string equals a keyword."""
    out: list[str] = []
    for t in tokens:
        if t.is_whitespace or t.ttype in T.Comment:
            continue
        if t.ttype in T.Keyword:
            out += t.value.split()
        elif t.ttype in T.Name or t.ttype in T.String.Symbol:
            out.append(t.value.strip('`"'))
        else:
            out.append(t.value)
    return out


def _transaction(words: list[str]) -> bool:
    up = _upper(words)
    return not ("CONCURRENTLY" in up or up[:1] == ["VACUUM"])


def _upper(words: list[str]) -> list[str]:
    return [w.upper() for w in words]


def _name(words: list[str], i: int) -> tuple[str, int]:
    """The (possibly schema-qualified) name at `i`, and the index after it."""
    name = words[i] if i < len(words) else ""
    i += 1
    while i + 1 < len(words) and words[i] == ".":
        name, i = f"{name}.{words[i + 1]}", i + 2
    return name, i


def _names(words: list[str], i: int) -> list[str]:
    """The comma-separated names from `i` on (`DROP TABLE a, b CASCADE`)."""
    out = []
    while i < len(words) and words[i].upper() not in ("CASCADE", "RESTRICT"):
        name, i = _name(words, i)
        out.append(name)
        i += words[i : i + 1] == [","]
    return out


def _skip(up: list[str], i: int, *optional: str) -> int:
    """`i` moved past each of `optional` words that follows (`IF`, `NOT`, `EXISTS` ...)."""
    while i < len(up) and up[i] in optional:
        i += 1
    return i


def _created_table(words: list[str]) -> str:
    up = _upper(words)
    if up[:1] != ["CREATE"] or "TABLE" not in up[:5]:
        return ""
    return _name(words, _skip(up, up.index("TABLE") + 1, "IF", "NOT", "EXISTS"))[0]


def _statement(words: list[str], line: int) -> list[Finding]:
    up = _upper(words)
    if up[:1] == ["DELIMITER"]:
        return [Finding(line, DELIMITER, "")]
    if up[:2] == ["ALTER", "TABLE"]:
        table, i = _name(words, _skip(up, 2, "IF", "EXISTS", "ONLY"))
        inplace = "INSTANT" in up or ("LOCK" in up and "NONE" in up)
        return [f for action in _actions(words[i:]) for f in _action(action, table, line, inplace)]
    if up[:2] == ["DROP", "TABLE"]:
        return [Finding(line, DROP_TABLE, n) for n in _names(words, _skip(up, 2, "IF", "EXISTS"))]
    if up[:2] == ["RENAME", "TABLE"]:
        return [Finding(line, RENAME, _name(words, 2)[0])]
    if up[:1] == ["CREATE"] and "INDEX" in up[:3] and "CONCURRENTLY" not in up and "ON" in up:
        return [Finding(line, INDEX, _name(words, _skip(up, up.index("ON") + 1, "ONLY"))[0])]
    return []


def _actions(words: list[str]) -> list[list[str]]:
    """ALTER TABLE's actions: its words split at the commas outside parentheses."""
    out: list[list[str]] = [[]]
    depth = 0
    for w in words:
        depth += (w == "(") - (w == ")")
        if w == "," and depth == 0:
            out.append([])
        else:
            out[-1].append(w)
    return [a for a in out if a]


def _action(words: list[str], table: str, line: int, inplace: bool) -> list[Finding]:
    up = _upper(words)
    verb = up[0]
    if verb == "ADD" and len(up) > 1 and up[1] in CONSTRAINTS:
        return _constraint(up, table, line)
    if verb == "ADD":
        col = _skip(up, 1, "COLUMN", "IF", "NOT", "EXISTS")
        return _new_column(words, col, table, line)
    at = _skip(up, 1, "COLUMN")
    column = words[at] if at < len(words) else ""
    if verb == "DROP" and not (len(up) > 1 and up[1] in NOT_A_COLUMN):
        return [
            Finding(
                line, DROP_COLUMN, table, _name(words, _skip(up, 1, "COLUMN", "IF", "EXISTS"))[0]
            )
        ]
    if verb == "RENAME" and up[1:2] not in (["INDEX"], ["KEY"], ["CONSTRAINT"]):
        return [Finding(line, RENAME, table, "" if up[1:2] == ["TO"] else column)]
    if verb == "ALTER" and (
        up[at + 1 : at + 2] == ["TYPE"] or up[at + 1 : at + 4] == ["SET", "DATA", "TYPE"]
    ):
        return [Finding(line, CHANGE_TYPE, table, column)]
    if verb == "ALTER" and up[at + 1 : at + 4] == ["SET", "NOT", "NULL"]:
        return [Finding(line, SET_NOT_NULL, table, column)]
    if verb in ("MODIFY", "CHANGE") and not inplace:
        return [Finding(line, CHANGE_TYPE, table, column)]
    return []


def _constraint(up: list[str], table: str, line: int) -> list[Finding]:
    if ("FOREIGN" in up or "CHECK" in up) and not _has(up, "NOT", "VALID"):
        return [Finding(line, VALIDATE, table)]
    if (
        ("UNIQUE" in up or "PRIMARY" in up)
        and not _has(up, "USING", "INDEX")
        and "CONSTRAINT" in up[:2]
    ):
        return [Finding(line, UNIQUE_INDEX, table)]
    return []


def _new_column(words: list[str], at: int, table: str, line: int) -> list[Finding]:
    up = _upper(words)
    column, rest = (words[at] if at < len(words) else ""), _top_level(up[at + 1 :])
    kind = rest[0] if rest else ""
    default = _name(rest, rest.index("DEFAULT") + 1)[0] if "DEFAULT" in rest else ""
    if (
        kind in SERIAL_TYPES
        or "GENERATED" in rest
        or "AUTO_INCREMENT" in rest
        or default.split(".")[-1] in VOLATILE
    ):
        return [Finding(line, REWRITE, table, column)]
    if _has(rest, "NOT", "NULL") and not default:
        return [Finding(line, NOT_NULL, table, column)]
    return []


def _top_level(up: list[str]) -> list[str]:
    """The words outside parentheses."""
    out, depth = [], 0
    for w in up:
        depth += (w == "(") - (w == ")")
        if depth == 0 and w not in ("(", ")"):
            out.append(w)
    return out


def _has(up: list[str], *run: str) -> bool:
    n = len(run)
    return any(tuple(up[i : i + n]) == run for i in range(len(up) - n + 1))


def dropped(sql: str) -> list[tuple[str, str | None]]:
    """(table, column) the statements drop; column None for a whole table."""
    return [
        (f.table, f.column if f.rule == DROP_COLUMN else None)
        for f in findings(sql)
        if f.rule in (DROP_TABLE, DROP_COLUMN)
    ]
