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

from rollwise.errors import ConfigError

NAME_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.(?P<dir>up|down)\.sql$")
MARKER_RE = re.compile(r"^\s*--\s*rollwise:\s*(?P<words>[a-z ,\-]+)\s*$", re.MULTILINE)

DESTRUCTIVE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bDROP\s+TABLE\b", re.I),
     "drops a table: rename it away in one release, drop it in a later one (expand/contract)"),
    (re.compile(r"\bDROP\s+COLUMN\b", re.I),
     "drops a column: stop using it in one release, drop it in a later one"),
    (re.compile(r"\bRENAME\s+(COLUMN|TO)\b", re.I),
     "renames: add the new name, write both, move readers, then drop the old one"),
    (re.compile(r"\bALTER\s+COLUMN\b.*\bTYPE\b|\bMODIFY\s+COLUMN\b", re.I | re.S),
     "changes a column type: add a column of the new type and backfill it instead"),
    (re.compile(r"\bNOT\s+NULL\b(?![^;]*\bDEFAULT\b)", re.I),
     "NOT NULL without a DEFAULT: fails on existing rows and on the old code's inserts; "
     "add it nullable (or with a default), backfill, then tighten"),
)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    up: str
    down: str | None
    irreversible: bool = False
    expand: bool = False

    @property
    def number(self) -> int:
        return int(self.version)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up.encode()).hexdigest()

    @property
    def file(self) -> str:
        return f"{self.version}_{self.name}.up.sql"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        del d["up"], d["down"]
        return d | {"checksum": self.checksum}


def markers(sql: str) -> set[str]:
    return {w.strip() for m in MARKER_RE.finditer(sql) for w in re.split(r"[ ,]+", m["words"])
            if w.strip()}


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
            raise ConfigError(f"migration file name {f.name!r} is not <version>_<name>.up.sql "
                              "or .down.sql", where=str(f),
                              hint="for example 0002_add_channel.up.sql and "
                              "0002_add_channel.down.sql")
        key = str(int(m["version"]))
        if m["dir"] == "up":
            if key in ups:
                raise ConfigError(f"two up migrations with version {m['version']}: "
                                  f"{ups[key][1].name} and {f.name}", where=str(f))
            ups[key] = (m["version"], f)
        else:
            downs[key] = f
    out = []
    for key, (version, f) in ups.items():
        up = f.read_text()
        words = markers(up)
        down = downs.pop(key, None)
        if down is None and "irreversible" not in words:
            raise ConfigError(f"migration {f.name} has no down step",
                              where=str(f), hint=f"add {f.name.replace('.up.sql', '.down.sql')}"
                              ", or mark it `-- rollwise: irreversible` (its rollback is then "
                              "a restore from backup)")
        name = NAME_RE.match(f.name)["name"]  # type: ignore[index]
        out.append(Migration(version, name, up, down.read_text() if down else None,
                             "irreversible" in words, "expand" in words))
    if downs:
        orphan = next(iter(downs.values()))
        raise ConfigError(f"down migration {orphan.name} has no up migration", where=str(orphan))
    return sorted(out, key=lambda m: m.number)


def lint(migrations: list[Migration]) -> list[str]:
    """Destructive operations, each with the expand/contract alternative."""
    out = []
    for m in migrations:
        for pattern, advice in DESTRUCTIVE:
            if pattern.search(_strip_comments(m.up)):
                out.append(f"{m.file}: {advice}")
    return out


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def statements(sql: str) -> list[str]:
    """Split on semicolons that end a line (comments removed); enough for migration files."""
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", _strip_comments(sql)) if s.strip()]


def up_path(migrations: list[Migration], applied: set[str], target: str | None
            ) -> list[Migration]:
    """Migrations to apply, in order, to reach `target` (None: the newest)."""
    top = int(target) if target else max((m.number for m in migrations), default=0)
    done = {int(v) for v in applied}
    return [m for m in migrations if m.number <= top and m.number not in done]


def down_path(migrations: list[Migration], applied: set[str], target: str | None
              ) -> list[Migration]:
    """Applied migrations above `target` (None: all), newest first."""
    floor = int(target) if target else 0
    done = {int(v) for v in applied}
    return sorted((m for m in migrations if m.number > floor and m.number in done),
                  key=lambda m: -m.number)


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
        return SchemaChange("keep", files, "every newer migration is marked expand: the "
                            "release's code works on the current schema")
    if any(m.irreversible for m in path):
        bad = next(m.file for m in path if m.irreversible)
        return SchemaChange("restore", files, f"{bad} is irreversible: going back needs a "
                            "restore from the backup taken before it")
    return SchemaChange("down", files, f"run {len(path)} down migration(s)")


DROP_COLUMN = re.compile(r"ALTER\s+TABLE\s+[`\"]?(\w+)[`\"]?\s+DROP\s+(?:COLUMN\s+)?"
                         r"(?:IF\s+EXISTS\s+)?[`\"]?(\w+)", re.I)
DROP_TABLE = re.compile(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?[`\"]?(\w+)", re.I)


def dropped(sql: str) -> list[tuple[str, str | None]]:
    """(table, column) a down step drops; column None for a whole table."""
    text = _strip_comments(sql)
    return [(t, c) for t, c in DROP_COLUMN.findall(text)] + \
        [(t, None) for t in DROP_TABLE.findall(text)]
