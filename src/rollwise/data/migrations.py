"""Migrations as plain data: a folder of versioned up and down SQL files, scanned, checked
and planned without touching a database.

Naming: `<version>_<name>.up.sql` and `<version>_<name>.down.sql`, the version made of
digits (`0001`, `0002`, ... compared as numbers). Every up file needs its down file, unless
its first lines say `-- rollwise: irreversible`. `-- rollwise: expand` declares the migration
additive: code of the release before it keeps working on the new schema, so a rollback
across it leaves the schema alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rollwise.data import sqlfile
from rollwise.errors import ConfigError

NAME_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<dir>up|down)\.sql$")
MARKER_RE = re.compile(r"^\s*--\s*rollwise:\s*(?P<words>[a-z ,\-]+)\s*$", re.MULTILINE)

ALEMBIC_LINT: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\bop\.drop_table\("),
        "drops a table: rename it away in one release, drop it in a later one (expand/contract)",
    ),
    (
        re.compile(r"\.drop_column\("),
        "drops a column: stop using it in one release, drop it in a later one",
    ),
    (
        re.compile(r"\bop\.rename_table\(|\bnew_column_name\s*="),
        "renames: add the new name, write both, move readers, then drop the old one",
    ),
    (
        re.compile(r"\.alter_column\((?:[^()]|\([^()]*\))*\btype_\s*="),
        "changes a column type: add a column of the new type and backfill it instead",
    ),
    (
        re.compile(r"\bnullable\s*=\s*False\b(?![^)]*server_default)"),
        "NOT NULL without a server default: fails on existing rows and on the old code's "
        "inserts; add it nullable (or with a default), backfill, then tighten",
    ),
)


@dataclass(frozen=True)
class Migration:
    """One migration of any runner: its version (a number for SQL files, a revision id for
    Alembic), the up and down source (None: irreversible) and its markers."""

    version: str
    name: str
    up: str
    down: str | None
    irreversible: bool = False
    expand: bool = False
    filename: str = ""

    @property
    def key(self) -> str:
        return version_key(self.version)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up.encode()).hexdigest()

    @property
    def file(self) -> str:
        return self.filename or f"{self.version}_{self.name}.up.sql"

    @property
    def down_file(self) -> str:
        return (
            self.file.replace(".up.", ".down.")
            if not self.filename
            else f"{self.filename} (downgrade)"
        )

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        del d["up"], d["down"], d["filename"]
        return d | {"checksum": self.checksum}


def version_key(version: str) -> str:
    """Versions made of digits compare as numbers (`0002` is `2`); others as they are."""
    return str(int(version)) if version.isdigit() else version


def markers(sql: str) -> set[str]:
    return {
        w.strip()
        for m in MARKER_RE.finditer(sql)
        for w in re.split(r"[ ,]+", m["words"])
        if w.strip()
    }


def scan(folder: Path) -> list[Migration]:
    """The migrations in `folder`, by version; ConfigError naming the file when a name is
    wrong, a version repeats or a down step is missing."""
    if not folder.is_dir():
        return []
    ups: dict[str, tuple[str, Path]] = {}
    downs: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(".sql"):
            continue
        m = NAME_RE.match(f.name)
        if m is None:
            raise ConfigError(
                f"migration file name {f.name!r} is not <version>_<name>.up.sql or .down.sql",
                where=str(f),
                hint="for example 0002_add_channel.up.sql and 0002_add_channel.down.sql",
            )
        key = str(int(m["version"]))
        if m["dir"] == "up":
            if key in ups:
                raise ConfigError(
                    f"two up migrations with version {m['version']}: "
                    f"{ups[key][1].name} and {f.name}",
                    where=str(f),
                )
            ups[key] = (m["version"], f)
        else:
            downs[key] = f
    out = []
    for key, (version, f) in ups.items():
        up = f.read_text()
        words = markers(up)
        down = downs.pop(key, None)
        if down is None and "irreversible" not in words:
            raise ConfigError(
                f"migration {f.name} has no down step",
                where=str(f),
                hint=f"add {f.name.replace('.up.sql', '.down.sql')}"
                ", or mark it `-- rollwise: irreversible` (its rollback is then "
                "a restore from backup)",
            )
        name = NAME_RE.match(f.name)["name"]  # type: ignore[index]
        out.append(
            Migration(
                version,
                name,
                up,
                down.read_text() if down else None,
                "irreversible" in words,
                "expand" in words,
            )
        )
    if downs:
        orphan = next(iter(downs.values()))
        raise ConfigError(f"down migration {orphan.name} has no up migration", where=str(orphan))
    return sorted(out, key=lambda m: int(m.version))


def lint(migrations: list[Migration]) -> list[str]:
    """Changes that break the running release or lock a live table, each with the
    alternative: SQL files read by a parser (`sqlfile`), Alembic revisions by pattern."""
    out = []
    for m in migrations:
        if m.file.endswith(".sql"):
            out += [f"{m.file}:{f.line}: {f.advice()}" for f in sqlfile.findings(m.up)]
        else:
            out += [
                f"{m.file}: {advice}" for pattern, advice in ALEMBIC_LINT if pattern.search(m.up)
            ]
    return out


def up_path(
    migrations: list[Migration], applied: set[str], target: str | None = None
) -> list[Migration]:
    """Migrations (in order) not applied yet, up to `target` (None: the newest)."""
    keys = [m.key for m in migrations]
    top = keys.index(version_key(target)) + 1 if target else len(keys)
    done = {version_key(v) for v in applied}
    return [m for m in migrations[:top] if m.key not in done]


class UnknownRevision(ConfigError):
    """A migration path names a revision the release's migrations do not hold: it is never
    guessed, the plan is refused."""


def down_path(
    migrations: list[Migration], applied: set[str], target: str | None
) -> list[Migration]:
    """Applied migrations after `target` (None: all), newest first. A target, or an applied
    migration, that the list does not hold makes the path unknowable: UnknownRevision."""
    keys = [m.key for m in migrations]
    if target is not None and version_key(target) not in keys:
        raise UnknownRevision(
            f"revision {target} is not among this release's migrations ({_span(migrations)})"
        )
    done = {version_key(v) for v in applied}
    if unknown := sorted(done - set(keys)):
        raise UnknownRevision(
            f"the database has migration(s) {', '.join(unknown)} that this "
            f"release does not hold ({_span(migrations)})"
        )
    floor = keys.index(version_key(target)) + 1 if target else 0
    return [m for m in reversed(migrations[floor:]) if m.key in done]


def _span(migrations: list[Migration]) -> str:
    if not migrations:
        return "none"
    return f"{migrations[0].version} to {migrations[-1].version}"


@dataclass(frozen=True)
class SchemaChange:
    """What a rollback does to the schema: nothing, run `down` (newest first), or it cannot
    (an irreversible migration: restore from backup)."""

    action: str  # none | keep | down | restore
    migrations: tuple[str, ...] = ()
    reason: str = ""


def rollback_change(path: list[Migration]) -> SchemaChange:
    if not path:
        return SchemaChange("none", reason="schema already at the release's version")
    files = tuple(m.file for m in path)
    if all(m.expand for m in path):
        return SchemaChange(
            "keep",
            files,
            "every newer migration is marked expand: the "
            "release's code works on the current schema",
        )
    if any(m.irreversible for m in path):
        bad = next(m.file for m in path if m.irreversible)
        return SchemaChange(
            "restore",
            files,
            f"{bad} is irreversible: going back needs a restore from the backup taken before it",
        )
    return SchemaChange("down", files, f"run {len(path)} down migration(s)")


OP_DROP_COLUMN = re.compile(r"\bop\.drop_column\(\s*['\"](\w+)['\"]\s*,\s*['\"](\w+)['\"]")
OP_DROP_TABLE = re.compile(r"\bop\.drop_table\(\s*['\"](\w+)['\"]")
BATCH = re.compile(r"batch_alter_table\(\s*['\"](\w+)['\"][^\n]*\n(?P<body>(?:[ \t]+[^\n]*\n?)*)")
BATCH_DROP = re.compile(r"\.drop_column\(\s*['\"](\w+)['\"]")


def dropped(source: str) -> list[tuple[str, str | None]]:
    """(table, column) a down step drops; column None for a whole table. Reads SQL (parsed)
    and Alembic's `op.drop_column`, `op.drop_table` and `batch_alter_table(...).drop_column`
    (each reader finds nothing in the other's source)."""
    out = sqlfile.dropped(source)
    out += [(t, c) for t, c in OP_DROP_COLUMN.findall(source)]
    out += [(t, None) for t in OP_DROP_TABLE.findall(source)]
    for b in BATCH.finditer(source):
        out += [(b[1], c) for c in BATCH_DROP.findall(b["body"])]
    return list(dict.fromkeys(out))
