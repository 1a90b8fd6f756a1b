"""The quick path of `rollwise hosts run`: a one-off command on a fleet that starts as fast
as a plain asyncssh script. It reads the environment's hosts from the fleet cache that the
last full run left (rollwise.fleetcache), runs the command through the same `hostsrun` as
the full CLI and appends the same audit event to the SQLite store with the standard library.
It loads neither the full CLI (Typer, Rich), pydantic nor SQLAlchemy.

Whenever it is not sure, it returns None before connecting anywhere, and the full CLI runs
the command (and writes the cache again): help asked for, an option it does not know, no
cache entry for this rollwise.yaml, environment and rollwise, a store other than the default
SQLite one at the schema's head or with modes the full path would close, a host it does not
know."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rollwise import chain, fleetcache, hostsrun
from rollwise.errors import ConfigError, ExitCode
from rollwise.project import STATE_DIR, find_config
from rollwise.store import HEAD, URL_ENV

DATABASE = "state.db"
OPEN_BITS = 0o077


@dataclass
class Args:
    command: str = ""
    env: str = "dev"
    hosts: list[str] = field(default_factory=list)
    directory: str = "."
    as_json: bool = False


VALUED = {"--env": "env", "-e": "env", "--host": "hosts", "--dir": "directory", "-C": "directory"}


def parse(argv: list[str]) -> Args | None:
    """`hosts run`'s arguments (after `hosts run`), as the full CLI takes them: COMMAND,
    --env/-e, --host (repeated), --dir/-C, --json; None for anything else (--help
    included), which the full CLI answers."""
    args, positional, i = Args(), [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional += argv[i + 1 :]
            break
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name == "--json" and not eq:
            args.as_json = True
        elif name in VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                i, value = i + 1, argv[i + 1]
            if VALUED[name] == "hosts":
                args.hosts.append(value)
            else:
                setattr(args, VALUED[name], value)
        elif a.startswith("-") and a != "-":
            return None
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1:
        return None
    args.command = positional[0]
    return args


def hosts_run(argv: list[str]) -> int | None:
    """Run `rollwise hosts run ARGV` and return its exit code; None: the full CLI must."""
    args = parse(argv)
    if args is None or os.environ.get(URL_ENV):
        return None
    try:
        config = find_config(Path(args.directory))
        sha = hashlib.sha256(config.read_bytes()).hexdigest()
    except (ConfigError, OSError):
        return None
    state = config.parent / STATE_DIR
    database = state / DATABASE
    cached = fleetcache.read(state, sha, args.env)
    if cached is None or not _private(state, database) or not _at_head(database):
        return None
    chosen = list(cached.hosts)
    if args.hosts:
        named = [next((h for h in chosen if n in (h.label, h.address)), None) for n in args.hosts]
        if None in named:
            return None  # the full CLI names the hosts there are
        chosen = [h for h in named if h is not None]
    os.umask(0o077)
    try:
        rows = hostsrun.run(chosen, cached.ssh, args.env, args.command)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: run `rollwise status` to see the state\n")
        return int(ExitCode.INTERRUPTED)
    outcome, data = hostsrun.record(args.command, rows)
    event = chain.Event(hostsrun.ACTION, outcome, chain.actor(), env=args.env, data=data)
    try:
        chain.append_sqlite(database, event)
    except sqlite3.Error as e:
        sys.stderr.write(
            f"error: the command ran, but its audit event was not recorded: {e} "
            f"(at {database}; `rollwise audit verify` checks the log)\n"
        )
        return int(ExitCode.ERROR)
    sys.stdout.write(hostsrun.as_json(rows) if args.as_json else _text(rows))
    return hostsrun.exit_code(rows)


def _text(rows: list[hostsrun.Row]) -> str:
    """As the full CLI prints them: plain, or bold and red on a terminal that takes colours."""
    terminal = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    color = bool(os.environ.get("FORCE_COLOR")) or (terminal and "NO_COLOR" not in os.environ)
    sgr = {"bold": "\x1b[1m", "red": "\x1b[31m"}
    return "".join(
        "".join(
            f"{sgr[style]}{text}\x1b[0m" if color and style else text
            for text, style in hostsrun.segments(r)
        )
        + "\n"
        for r in rows
    )


def _private(state: Path, database: Path) -> bool:
    """The state directory and store as the full path leaves them: owner only."""
    try:
        return not any(
            os.stat(p).st_mode & OPEN_BITS
            for p in (state, database, Path(f"{database}-wal"), Path(f"{database}-shm"))
            if p.exists()
        )
    except OSError:
        return False


def _at_head(database: Path) -> bool:
    """The store exists and its schema is at HEAD (else the full path upgrades it)."""
    try:
        con = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            at = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return at == [(HEAD,)]
