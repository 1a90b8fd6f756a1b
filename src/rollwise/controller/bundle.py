"""A bundle: several services deployed in dependency order and rolled back in reverse (R24).

Each service is its own rollwise project (its rollwise.yaml, releases, state, lock and audit
log); a bundle moves each one with the same deploy and rollback as `rollwise deploy`. A
journal of what the bundle moved (`.rollwise-bundle/<env>.json` beside the bundle file) is
written before and after every move, so a failure, `bundle rollback` and `bundle recover`
after a killed controller put back exactly the services the bundle moved, dependents first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollwise import domain as d
from rollwise import reasons
from rollwise.chain import actor
from rollwise.config.load import load_bundle
from rollwise.config.schema import BundleConfig
from rollwise.controller import freezes, ops
from rollwise.controller.context import Context
from rollwise.errors import ConfigError, LockHeld, NotFound, RollwiseError, UsageError
from rollwise.events import EventBus
from rollwise.private import private_dir
from rollwise.store import repo

BUNDLE_FILE = "rollwise-bundle.yaml"
STATE_DIR = ".rollwise-bundle"

# journal states of the whole bundle operation, and of each move
RUNNING, DONE, ROLLED_BACK, FAILED = "running", "done", "rolled_back", "failed"
PENDING, MOVING, MOVED, BACK, KEPT = "pending", "moving", "moved", "back", "kept"


@dataclass
class Journal:
    """What one bundle operation set out to move and how far each move got."""

    id: str
    kind: str  # d.DEPLOY or d.ROLLBACK
    env: str
    actor: str
    state: str
    moves: list[dict[str, Any]]  # d.Move fields and `state`
    started_at: float = field(default_factory=time.time)
    error: str | None = None

    def move(self, service: str) -> dict[str, Any]:
        return next(m for m in self.moves if m["service"] == service)


@dataclass
class Bundle:
    config: BundleConfig
    path: Path
    new_bus: Callable[[], EventBus]  # each service's context gets its own (its own audit log)
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def open(cls, start: Path, new_bus: Callable[[], EventBus] = EventBus) -> Bundle:
        path = find_bundle(start)
        return cls(load_bundle(path), path, new_bus)

    @property
    def order(self) -> list[str]:
        return d.bundle_order({n: tuple(s.depends_on) for n, s in self.config.services.items()})

    def context(self, service: str, env: str) -> Context:
        """The service's project, which must exist and have `env`."""
        if service not in self.contexts:
            where = (self.path.parent / self.config.services[service].dir).resolve()
            if not (where / "rollwise.yaml").is_file():
                raise ConfigError(
                    f"service {service}: no rollwise.yaml in {where}",
                    where=f"{self.path}: services.{service}.dir",
                    hint="point `dir` at the service's project directory",
                )
            self.contexts[service] = Context.open(where, self.new_bus())
        ctx = self.contexts[service]
        if env not in ctx.config.environments:
            raise ConfigError(
                f"service {service} has no environment {env!r}",
                where=str(ctx.config_path),
                hint="every service of a bundle needs the environments the "
                f"bundle deploys to (it has: {', '.join(ctx.config.environments)})",
            )
        return ctx

    def live(self, service: str, env: str) -> str | None:
        ctx = self.context(service, env)
        return repo.env_state(ctx.engine, env)["live_version"]  # type: ignore[no-any-return]

    def journal_path(self, env: str, create: bool = False) -> Path:
        folder = self.path.parent / STATE_DIR
        return (private_dir(folder) if create else folder) / f"{env}.json"

    def read(self, env: str) -> Journal | None:
        p = self.journal_path(env)
        return Journal(**json.loads(p.read_text())) if p.exists() else None

    def write(self, j: Journal) -> None:
        """Atomically: a journal is never half written."""
        p = self.journal_path(j.env, create=True)
        tmp = p.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(asdict(j), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(p)
        with (p.parent / f"{j.env}.history.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {
                        "id": j.id,
                        "state": j.state,
                        "at": time.time(),
                        "moves": j.moves,
                        "error": j.error,
                    }
                )
                + "\n"
            )

    @contextlib.contextmanager
    def lock(self, env: str) -> Iterator[None]:
        """One bundle command per environment at a time; the lock goes with the process,
        so a killed one leaves a journal that says `running` and no lock."""
        p = self.journal_path(env, create=True).with_suffix(".lock")
        with p.open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise LockHeld(
                    f"bundle {self.config.bundle} {env}: another bundle command "
                    f"is running ({f.read().strip() or 'unknown process'})",
                    where=str(self.path),
                    hint="wait for it; `rollwise bundle status` shows it",
                ) from None
            f.truncate(0)
            f.write(f"pid {os.getpid()}, {actor()}\n")
            f.flush()
            yield

    def emit(self, service: str, env: str, outcome: str, j: Journal, **data: Any) -> None:
        """A bundle step, in the service's own event stream and audit log."""
        ctx = self.context(service, env)
        ctx.emit(
            "bundle",
            outcome,
            env=env,
            version=data.pop("version", None),
            data={"bundle": self.config.bundle, "id": j.id, "service": service, **data},
        )


def find_bundle(start: Path) -> Path:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / BUNDLE_FILE).is_file():
            return folder / BUNDLE_FILE
    raise ConfigError(
        f"no {BUNDLE_FILE} in {start.resolve()} or any parent directory",
        hint="write one (docs/bundles.md) or pass -C DIR",
    )


def parse_versions(b: Bundle, pairs: list[str]) -> dict[str, str]:
    """`SERVICE=VERSION` arguments."""
    wanted: dict[str, str] = {}
    for pair in pairs:
        service, sep, version = pair.partition("=")
        if not sep or not service or not version:
            raise UsageError(
                f"{pair!r}: expected SERVICE=VERSION", hint=f"for example {b.order[0]}=1.2.0"
            )
        if service not in b.config.services:
            raise UsageError(
                f"{service!r} is not a service of bundle {b.config.bundle}",
                where=str(b.path),
                hint=f"services: {', '.join(b.config.services)}",
            )
        wanted[service] = version.removeprefix("v")
    if not wanted:
        raise UsageError(
            "name at least one SERVICE=VERSION", hint=f"services: {', '.join(b.order)}"
        )
    return wanted


def _refuse_interrupted(b: Bundle, env: str) -> None:
    j = b.read(env)
    if j is not None and j.state == RUNNING:
        raise RollwiseError(
            f"bundle {b.config.bundle} {env}: operation {j.id} was "
            "interrupted; its services may be half moved",
            where=str(b.journal_path(env)),
            hint="`rollwise bundle recover` finishes each service's own "
            "deployment and puts back what the bundle moved",
        )


def deploy(
    b: Bundle,
    env: str,
    wanted: dict[str, str],
    lock_wait: float = 0.0,
    break_freeze: str | None = None,
) -> ops.Outcome:
    """Move the named services to their versions, dependencies first. When one fails (its
    own deploy has put it back), the services already moved go back, dependents first.
    A service inside a freeze window stops the bundle before anything moves, unless
    `break_freeze` says why (recorded by each service's deploy)."""
    with b.lock(env):
        _refuse_interrupted(b, env)
        for service, version in wanted.items():  # every release usable before anything moves
            _check_deployable(b, service, env, version, break_freeze)
        moves = d.bundle_moves(b.order, {s: b.live(s, env) for s in wanted}, wanted)
        if not moves:
            return ops.Outcome(
                f"bundle {b.config.bundle} {env}: every service named is "
                "already at that version; nothing to do",
                changed=False,
            )
        j = Journal(
            _new_id(),
            d.DEPLOY,
            env,
            actor(),
            RUNNING,
            [{**asdict(m), "state": PENDING} for m in moves],
        )
        b.write(j)
        for m in moves:
            j.move(m.service)["state"] = MOVING
            b.write(j)
            b.emit(m.service, env, "started", j, version=m.to_version, previous=m.from_version)
            try:
                ops.deploy(
                    b.context(m.service, env),
                    env,
                    m.to_version,
                    lock_wait=lock_wait,
                    reason=f"bundle {b.config.bundle} {j.id}",
                    break_freeze=break_freeze,
                )
            except RollwiseError as e:
                j.move(m.service)["state"] = FAILED
                j.error = f"{m.service} {m.to_version}: {e.message}"
                b.write(j)
                b.emit(m.service, env, reasons.FAILED, j, version=m.to_version, reason=e.message)
                back = _put_back(b, env, j, because=f"{m.service} {m.to_version} failed")
                raise RollwiseError(
                    f"bundle {b.config.bundle} {env}: {m.service} {m.to_version} failed "
                    f"({e.message}); {back}",
                    where=f"service {m.service}",
                    hint=e.hint or "`rollwise bundle status` shows each service",
                ) from e
            j.move(m.service)["state"] = MOVED
            b.write(j)
            b.emit(m.service, env, reasons.OK, j, version=m.to_version)
        j.state = DONE
        b.write(j)
    moved = ", ".join(f"{m.service} {m.from_version or '-'} -> {m.to_version}" for m in moves)
    return ops.Outcome(
        f"bundle {b.config.bundle} {env}: {moved}",
        {"bundle": b.config.bundle, "id": j.id, "moves": j.moves},
    )


def _check_deployable(
    b: Bundle, service: str, env: str, version: str, break_freeze: str | None
) -> None:
    try:
        ops.check_deployable(b.context(service, env), env, version, break_freeze)
    except freezes.Frozen as e:
        raise freezes.Frozen(
            f"bundle {b.config.bundle}: service {service}: {e.message}; nothing moved",
            where=e.where,
            hint="rollbacks are allowed; to deploy anyway, break glass: `rollwise bundle "
            "deploy ... --break-freeze --reason TEXT` (recorded in each service's audit log)",
        ) from None


def _put_back(b: Bundle, env: str, j: Journal, because: str) -> str:
    """Every service the journal moved goes back to its earlier release, dependents first;
    its release stays usable (marked good again: it did not fail). Returns what happened,
    in words; a service that cannot go back is named and the journal stays `failed`."""
    done: list[str] = []
    stuck: list[str] = []
    for m in reversed(j.moves):
        if m["state"] != MOVED:
            continue
        service, before = m["service"], m["from_version"]
        if before is None:  # its first deploy: nothing to go back to
            m["state"] = KEPT
            stuck.append(f"{service} stays at {m['to_version']} (no earlier release)")
            continue
        ctx = b.context(service, env)
        try:
            ops.deploy(
                ctx,
                env,
                before,
                kind=d.ROLLBACK,
                reason=f"bundle {b.config.bundle} {j.id}: {because}",
            )
        except RollwiseError as e:
            stuck.append(f"{service} could not go back to {before}: {e.message}")
            continue
        with ctx.engine.begin() as conn:
            repo.set_mark(
                conn,
                env,
                m["to_version"],
                reasons.GOOD,
                f"passed its checks; rolled back with bundle {j.id}: {because}",
            )
        m["state"] = BACK
        done.append(f"{service} {m['to_version']} -> {before}")
        b.emit(service, env, "rolled_back", j, version=before, reason=because)
    j.state = FAILED if any("could not" in s for s in stuck) else ROLLED_BACK
    b.write(j)
    words = (
        f"put back, dependents first: {', '.join(done)}" if done else "no other service had moved"
    )
    return words + (f"; {'; '.join(stuck)}" if stuck else "")


def rollback_plan(b: Bundle, env: str) -> tuple[Journal, list[dict[str, Any]]]:
    """The last completed bundle deploy and the moves a rollback undoes, dependents first.
    Refused when a service has been deployed by itself since (its live release is not the
    one the bundle put there)."""
    j = b.read(env)
    if j is None or j.state != DONE or j.kind != d.DEPLOY:
        last = f" (the last operation, {j.kind} {j.id}, is {j.state})" if j else ""
        raise NotFound(
            f"bundle {b.config.bundle} {env}: no completed bundle deploy to roll back{last}",
            hint="`rollwise bundle status` shows the last bundle operation; "
            "`rollwise rollback -C SERVICE_DIR` rolls back one service",
        )
    undo = [m for m in reversed(j.moves) if m["state"] == MOVED and m["from_version"]]
    for m in undo:
        if (live := b.live(m["service"], env)) != m["to_version"]:
            raise RollwiseError(
                f"bundle {b.config.bundle} {env}: {m['service']} is at {live}, not "
                f"{m['to_version']} the bundle deployed; it has moved since",
                where=f"service {m['service']}",
                hint=f"roll it back by itself (`rollwise rollback -C "
                f"{b.config.services[m['service']].dir}`); nothing was changed",
            )
    if not undo:
        raise NotFound(
            f"bundle {b.config.bundle} {env}: deploy {j.id} moved nothing that "
            "has an earlier release",
            hint="nothing was changed",
        )
    return j, undo


def rollback(b: Bundle, env: str, lock_wait: float = 0.0) -> ops.Outcome:
    """Put back what the last bundle deploy moved, dependents first; each release left is
    marked bad, as `rollwise rollback` does."""
    with b.lock(env):
        _refuse_interrupted(b, env)
        j, undo = rollback_plan(b, env)
        r = Journal(
            _new_id(),
            d.ROLLBACK,
            env,
            actor(),
            RUNNING,
            [
                {
                    "service": m["service"],
                    "from_version": m["to_version"],
                    "to_version": m["from_version"],
                    "state": PENDING,
                }
                for m in undo
            ],
        )
        b.write(r)
        _go_back(b, env, r, lock_wait, f"bundle {b.config.bundle} rollback of {j.id}")
    return ops.Outcome(
        f"bundle {b.config.bundle} {env}: rolled back, dependents first: {_listed(r, MOVED)}",
        {"id": r.id, "moves": r.moves},
    )


def _go_back(b: Bundle, env: str, r: Journal, lock_wait: float, reason: str) -> None:
    """Run a rollback journal's pending moves in order (dependents first)."""
    for m in r.moves:
        if m["state"] != PENDING:
            continue
        m["state"] = MOVING
        b.write(r)
        try:
            ops.deploy(
                b.context(m["service"], env),
                env,
                m["to_version"],
                kind=d.ROLLBACK,
                lock_wait=lock_wait,
                reason=reason,
            )
        except RollwiseError as e:
            m["state"], r.state, r.error = FAILED, FAILED, f"{m['service']}: {e.message}"
            b.write(r)
            raise RollwiseError(
                f"bundle {b.config.bundle} {env}: {m['service']} did not go back to "
                f"{m['to_version']} ({e.message}); went back before it: "
                f"{_listed(r, MOVED) or 'none'}",
                where=f"service {m['service']}",
                hint=e.hint or "fix it and run `rollwise bundle rollback` again",
            ) from e
        m["state"] = MOVED
        b.write(r)
    r.state = DONE
    b.write(r)


def _listed(j: Journal, state: str) -> str:
    return ", ".join(
        f"{m['service']} {m['from_version']} -> {m['to_version']}"
        for m in j.moves
        if m["state"] == state
    )


def recover(b: Bundle, env: str, lock_wait: float = 0.0) -> ops.Outcome:
    """After a bundle command was killed: each service it was moving finishes or undoes its
    own deployment (`rollwise recover`), then everything the bundle moved goes back,
    dependents first."""
    with b.lock(env):
        j = b.read(env)
        if j is None or j.state != RUNNING:
            return ops.Outcome(f"bundle {b.config.bundle} {env}: nothing to recover", changed=False)
        for m in j.moves:
            if m["state"] != MOVING:
                continue
            ops.recover(b.context(m["service"], env), env, lock_wait)
            # where it ended decides: at the release it was moving to, it moved
            at = b.live(m["service"], env) == m["to_version"]
            m["state"] = MOVED if at else (PENDING if j.kind == d.ROLLBACK else FAILED)
        b.write(j)
        if j.kind == d.ROLLBACK:  # a rollback is finished, never undone
            _go_back(
                b,
                env,
                j,
                lock_wait,
                f"bundle {b.config.bundle}: finishing interrupted rollback {j.id}",
            )
            done = f"finished the rollback, dependents first: {_listed(j, MOVED)}"
        else:
            done = _put_back(b, env, j, because=f"bundle operation {j.id} was interrupted")
    return ops.Outcome(
        f"bundle {b.config.bundle} {env}: recovered {j.id}; {done}",
        {"id": j.id, "kind": j.kind, "moves": j.moves},
    )


def status(b: Bundle, env: str) -> dict[str, Any]:
    """Each service on each host, in dependency order, and the last bundle operation. Reads
    only."""
    services = []
    for name in b.order:
        s = ops.status(b.context(name, env), env)["environments"][env]
        services.append(
            {
                "service": name,
                "dir": b.config.services[name].dir,
                "depends_on": b.config.services[name].depends_on,
                **s,
            }
        )
    j = b.read(env)
    return {
        "bundle": b.config.bundle,
        "env": env,
        "services": services,
        "last": asdict(j) if j else None,
    }


def _new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
