"""An environment's freeze windows as operations see them (docs/freeze.md): those of
rollwise.yaml and those added with `rollwise freeze add`, kept in the state store so CI can
add one. `check` is the deploy's rule, run with the environment's lock held: inside a window
a deploy is refused, unless glass is broken with a reason, which is audited as its own
`freeze-break` event. Rollbacks never come here.

The clock (ROLLWISE_NOW, for tests and drills, else the system's) and the user's time zone
(TZ, else the system's) are read here, at the edge; the rules in rollwise.freeze are pure."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import delete, insert, select

from rollwise import freeze, reasons
from rollwise.config.schema import FreezeWindowConfig
from rollwise.controller.context import Context
from rollwise.errors import NotFound, RollwiseError, UsageError
from rollwise.store.tables import freeze_windows

CONFIG, STORE = "config", "store"
BREAK: Final = "freeze-break"  # the audit action of a deploy that broke glass


class Frozen(RollwiseError):
    """A deploy inside a freeze window, refused; nothing was changed."""


@dataclass(frozen=True)
class Clock:
    """`now` for the rules, and the system's when ROLLWISE_NOW set another one."""

    now: datetime
    system: datetime
    overridden: bool


def clock() -> Clock:
    system = datetime.now(UTC)
    try:
        now = freeze.resolve_now(os.environ.get(freeze.NOW_ENV), system)
    except ValueError as e:
        raise UsageError(str(e), where=freeze.NOW_ENV, hint="unset it to use the clock") from None
    return Clock(now, system, bool(os.environ.get(freeze.NOW_ENV)))


def here() -> tzinfo:
    """The user's time zone: TZ when it names one, else the system's, else UTC."""
    for name in (os.environ.get("TZ", "").lstrip(":"), _system_zone()):
        try:
            return freeze.zone(name)
        except ValueError:
            continue
    return ZoneInfo("UTC")


def _system_zone() -> str:
    target = os.path.realpath("/etc/localtime")
    return target.partition("/zoneinfo/")[2] if "/zoneinfo/" in target else ""


# --- which windows ------------------------------------------------------------------------


def windows(ctx: Context, env: str) -> list[freeze.Window]:
    """`env`'s windows: rollwise.yaml's, then the stored ones."""
    cfg = ctx.env(env).freeze
    mine = [freeze.window(w.name, w.zone, w.start, w.end, CONFIG) for w in cfg]
    return mine + [w for e, w in stored(ctx, env) if e == env]


def stored(ctx: Context, env: str | None = None) -> list[tuple[str, freeze.Window]]:
    q = select(freeze_windows).order_by(freeze_windows.c.env, freeze_windows.c.name)
    if env is not None:
        q = q.where(freeze_windows.c.env == env)
    with ctx.engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [
        (r["env"], freeze.window(r["name"], r["zone"], r["start"], r["end"], STORE)) for r in rows
    ]


def listed(
    ctx: Context, env: str | None, now: datetime
) -> list[tuple[str, freeze.Window, freeze.Occurrence | None]]:
    """Every window of `env` (or of every environment), with its current or next
    occurrence (None: a one-off window that is over)."""
    envs = [env] if env is not None else list(ctx.config.environments)
    return [(e, w, freeze.current_or_next(w, now)) for e in envs for w in windows(ctx, e)]


# --- the deploy's rule --------------------------------------------------------------------


def check(
    ctx: Context, env: str, version: str, break_reason: str | None, zone: tzinfo | None = None
) -> None:
    """Refuse a deploy of `version` to `env` inside a freeze window (Frozen), its end shown
    in the user's `zone` too (default: here()), or, with a `break_reason`, let it through
    and record the break."""
    c = clock()
    found = windows(ctx, env)
    held = freeze.active(found, c.now)
    if c.overridden:
        _note_override(ctx, env, version, c, found, held)
    if held is None:
        return
    w, data = held.window, _data(held, c)
    if not (break_reason or "").strip():
        ctx.emit(
            "deploy",
            reasons.REFUSED,
            env=env,
            version=version,
            reason=f"freeze window {w.name} until {held.end.isoformat()}",
            data=data,
        )
        raise refusal(env, version, held, zone or here())
    ctx.emit(BREAK, reasons.OK, env=env, version=version, reason=break_reason, data=data)


def refusal(env: str, version: str, held: freeze.Occurrence, z: tzinfo) -> Frozen:
    w = held.window
    kept = f"environments.{env}.freeze" if w.source == CONFIG else "`rollwise freeze add`"
    return Frozen(
        f"deploys to {env} are frozen by window {w.name!r} ({kept}) until "
        f"{freeze.both(held.end, w, z)}; {version} was not deployed",
        hint="rollbacks are allowed; to deploy anyway, break glass: `rollwise deploy "
        f"{version} --env {env} --break-freeze --reason TEXT` (recorded in the audit log)",
    )


def _data(held: freeze.Occurrence, c: Clock) -> dict[str, object]:
    return {
        **held.window.view(),
        "window": held.window.name,
        "start_utc": held.start.isoformat(),
        "end_utc": held.end.isoformat(),
        "now": c.now.isoformat(),
        **({"clock": freeze.NOW_ENV} if c.overridden else {}),
    }


def _note_override(
    ctx: Context,
    env: str,
    version: str,
    c: Clock,
    found: list[freeze.Window],
    held: freeze.Occurrence | None,
) -> None:
    """A deploy let through only because ROLLWISE_NOW moved the clock is audited."""
    real = freeze.active(found, c.system)
    if real is not None and held is None:
        ctx.emit(
            "freeze",
            "clock",
            env=env,
            version=version,
            reason=f"{freeze.NOW_ENV} put the clock outside window {real.window.name}",
            data=_data(real, c),
        )


# --- freeze add / remove ------------------------------------------------------------------


def add(ctx: Context, env: str, name: str, zone: str, start: str, end: str) -> bool:
    """Store a window for `env`; False when the same one is there already (CI may add it
    on every run)."""
    in_file = {w.name for w in ctx.env(env).freeze}  # an unknown env: ConfigError
    cfg = _checked(env, name, zone, start, end)
    if name in in_file:
        raise UsageError(
            f"{env} has a freeze window {name!r} in rollwise.yaml already",
            where=str(ctx.config_path),
            hint="choose another name, or change that one in rollwise.yaml",
        )
    row = {"env": env, "name": name, "zone": cfg.zone, "start": cfg.start, "end": cfg.end}
    old = next((w for e, w in stored(ctx, env) if w.name == name), None)
    if old is not None:
        if (old.zone, old.start_text, old.end_text) == (cfg.zone, cfg.start, cfg.end):
            return False
        raise UsageError(
            f"{env} has a stored freeze window {name!r} already ({old.zone}, "
            f"{old.start_text} .. {old.end_text})",
            where="state store",
            hint=f"`rollwise freeze remove {env} {name}` first, or choose another name",
        )
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(freeze_windows).values(**row, created_at=time.time(), created_by=ctx.actor)
        )
    ctx.emit("freeze", "added", env=env, data={k: v for k, v in row.items() if k != "env"})
    return True


def _checked(env: str, name: str, zone: str, start: str, end: str) -> FreezeWindowConfig:
    try:
        return FreezeWindowConfig(name=name, zone=zone, start=start, end=end)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "window"
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(
            f"freeze window for {env}: {msg}",
            where=f"--{key}" if key in ("zone", "start", "end") else key,
            hint="see docs/freeze.md for the forms of --start and --end",
        ) from None


def remove(ctx: Context, env: str, name: str) -> None:
    if name in {w.name for w in ctx.env(env).freeze}:
        raise UsageError(
            f"freeze window {name!r} of {env} is in rollwise.yaml",
            where=str(ctx.config_path),
            hint="remove it from the file; `freeze remove` removes windows added with `freeze add`",
        )
    with ctx.engine.begin() as conn:
        done = conn.execute(
            delete(freeze_windows).where(freeze_windows.c.env == env, freeze_windows.c.name == name)
        ).rowcount
    if not done:
        there = ", ".join(w.name for _, w in stored(ctx, env)) or "none"
        raise NotFound(
            f"{env} has no stored freeze window {name!r}",
            where="state store",
            hint=f"stored windows of {env}: {there} (`rollwise freeze list {env}`)",
        )
    ctx.emit("freeze", "removed", env=env, data={"name": name})
