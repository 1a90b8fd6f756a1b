"""People of the team server: users with passwords, their browser sessions, and the /login
and /logout pages the dashboard sends them to (docs/server.md).

A user has a name, a role and optionally environments, like a token (auth.py), and a
password kept as an argon2id hash (a slow hash: people choose passwords, unlike the random
secret of a token). Logging in starts a session: the cookie `rollwise_session` holds 32
random bytes and the store keeps only their SHA-256. A session ends 12 hours after its last
request, 7 days after the login, at logout, and when the password changes or the user is
disabled.

A browser sends the cookie whatever page makes the request, so a request it authenticates
that changes something (POST, PUT, PATCH, DELETE) must also carry the session's CSRF token,
which only the dashboard's own pages can read: the `X-CSRF-Token` header, or the form field
`csrf` of the logout form. A bearer token needs none: a browser never adds one by itself.

A user acts as their plain name, so the two-person rule (approvals.py) sees one person
whether they ask with a token or from the dashboard; the audit log tells the two ways apart:
`ana (dashboard)`, `ana (api)`."""

from __future__ import annotations

import functools
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Connection, Engine, delete, insert, select, update
from starlette.exceptions import HTTPException

from rollwise.api.auth import ROLES, Principal, digest
from rollwise.api.jobs import Jobs
from rollwise.api.web import templates
from rollwise.controller.context import Context
from rollwise.errors import NotFound, UsageError
from rollwise.store.tables import sessions, users

COOKIE = "rollwise_session"
CSRF_HEADER = "x-csrf-token"
IDLE_S = 12 * 3600  # a session unused this long has ended
LIFETIME_S = 7 * 86400  # and any session this old
TOUCH_EVERY_S = 60  # a session's seen_at is written at most once a minute
MIN_PASSWORD, MAX_PASSWORD = 12, 1024
TRIES, TRIES_WINDOW_S = 5, 60.0  # failed logins of one name in a window, then wait
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")  # no spaces or "(": see `actor`
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DASHBOARD, API = "dashboard", "api"

WRONG = "wrong name or password"
DISABLED = "this user is disabled; an admin can say why"
TOO_MANY = "too many failed logins for this name; try again in {s} s"
SESSION_ENDED = (
    "your session has ended (logged out, unused for 12 hours, older than 7 days, or the "
    "password changed); log in again at /login"
)
CSRF_MISSING = (
    "a request authenticated by the session cookie that changes something needs the "
    "session's CSRF token in the X-CSRF-Token header (the page's csrf-token meta tag)"
)
CSRF_MISSING_FORM = "log out with the form of a rollwise page: its csrf field was missing or wrong"

HASHER = PasswordHasher()  # argon2id with RFC 9106's low-memory parameters


class Host(Protocol):
    """What this module needs of the server (api.server.Server, which imports it)."""

    ctx: Context
    jobs: Jobs
    now: Callable[[], float]


@dataclass(frozen=True)
class User(Principal):
    """A person logged in to the dashboard, as opposed to a token."""

    def why_not(self, role: str, env: str | None) -> str:
        return "user" + super().why_not(role, env).removeprefix("token")


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    digest: str


def actor(who: Principal) -> str:
    """`who` as the audit log names it: `ana (dashboard)` for a user, `ana (api)` for a
    token. A user's name has no space, so no token name can pass for one."""
    return f"{who.name} ({DASHBOARD if isinstance(who, User) else API})"


# Pure parts: passwords, expiry, where to go after login, tokens compared, tries counted


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so that answer takes as long."""
    return hash_password(secrets.token_urlsafe(16))


def weak(password: str) -> str | None:
    """Why `password` is refused, or None."""
    if len(password) < MIN_PASSWORD:
        return f"a password needs {MIN_PASSWORD} characters or more; this one has {len(password)}"
    if len(password) > MAX_PASSWORD:
        return f"a password has at most {MAX_PASSWORD} characters"
    if len(set(password)) < 4:
        return "a password needs more than three different characters"
    return None


def ended(created_at: float, seen_at: float, now: float) -> bool:
    """Whether a session made at `created_at` and last used at `seen_at` is over at `now`."""
    return now - created_at >= LIFETIME_S or now - seen_at >= IDLE_S


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server (`/x`), never another site
    (`//x`, `/\\x`, `https://x`; browsers drop tabs and newlines, so no control character)."""
    if not target or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return "/"
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    return target


def same_token(expected: str, got: str | None) -> bool:
    """`got` is `expected`, compared in constant time."""
    return got is not None and hmac.compare_digest(expected.encode(), got.encode())


class Tries:
    """Failed logins per name: after TRIES in TRIES_WINDOW_S, the name waits until the
    oldest of them is that old. Kept in the server's memory (a restart forgets them)."""

    MAX_NAMES = 10_000  # names tried are the caller's choice: keep the map bounded

    def __init__(self) -> None:
        self._failed: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, name: str, now: float) -> float:
        """Seconds until `name` may try again; 0: now."""
        with self._lock:
            recent = [t for t in self._failed.get(name, []) if now - t < TRIES_WINDOW_S]
        return TRIES_WINDOW_S - (now - recent[-TRIES]) if len(recent) >= TRIES else 0.0

    def failed(self, name: str, now: float) -> None:
        with self._lock:
            if len(self._failed) >= self.MAX_NAMES:
                self._forget(now)
            times = [t for t in self._failed.get(name, []) if now - t < TRIES_WINDOW_S]
            self._failed[name] = [*times[-TRIES:], now]

    def passed(self, name: str) -> None:
        with self._lock:
            self._failed.pop(name, None)

    def _forget(self, now: float) -> None:
        self._failed = {
            n: ts for n, ts in self._failed.items() if ts and now - ts[-1] < TRIES_WINDOW_S
        }


# The store: users and sessions


def public(row: Any) -> dict[str, Any]:
    """A user's record without the password hash."""
    return {k: v for k, v in dict(row).items() if k != "hash"}


def _strong(password: str) -> None:
    if why := weak(password):
        raise UsageError(f"password refused: {why}", hint="choose a longer passphrase")


def create(
    engine: Engine,
    name: str,
    role: str,
    envs: list[str] | None,
    password: str,
    created_by: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Add a user; their record (without the hash)."""
    if not NAME_RE.match(name):
        raise UsageError(
            f"user name {name!r} refused",
            hint="lowercase letters, digits, '.', '_', '@' and '-', 64 at most",
        )
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}", hint=f"roles: {', '.join(ROLES)}")
    _strong(password)
    now = time.time() if now is None else now
    row = {
        "name": name,
        "role": role,
        "envs": envs or None,
        "hash": hash_password(password),
        "created_at": now,
        "created_by": created_by,
        "password_at": now,
        "disabled_at": None,
    }
    with engine.begin() as conn:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first():
            raise UsageError(
                f"user {name!r} exists", hint="`rollwise user passwd NAME` sets a new password"
            )
        conn.execute(insert(users).values(**row))
    return public(row)


def listed(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(users).order_by(users.c.name)).mappings().all()
    return [public(r) for r in rows]


def get(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.name == name)).mappings().first()
    if row is None:
        known = ", ".join(u["name"] for u in listed(engine))
        raise NotFound(
            f"no user {name!r}",
            where="users",
            hint=f"users: {known or 'none'} (`rollwise user list`)",
        )
    return public(row)


def set_password(engine: Engine, name: str, password: str, now: float | None = None) -> None:
    """A new password; the user's sessions end."""
    get(engine, name)
    _strong(password)
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(
            update(users)
            .where(users.c.name == name)
            .values(hash=hash_password(password), password_at=now)
        )
        _end_all(conn, name, now)


def disable(engine: Engine, name: str, now: float | None = None) -> dict[str, Any]:
    """The user can no longer log in; their sessions end."""
    get(engine, name)
    now = time.time() if now is None else now
    with engine.begin() as conn:
        conn.execute(
            update(users)
            .where(users.c.name == name, users.c.disabled_at.is_(None))
            .values(disabled_at=now)
        )
        _end_all(conn, name, now)
    return get(engine, name)


def _end_all(conn: Connection, name: str, now: float) -> None:
    conn.execute(
        update(sessions)
        .where(sessions.c.user == name, sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )


def login(engine: Engine, name: str, password: str, now: float) -> str:
    """A new session of `name` (the cookie's value); PermissionError says why not."""
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.name == name)).mappings().first()
    if row is None:
        verify(_dummy_hash(), password)  # as slow as for a known name
        raise PermissionError(WRONG)
    if not verify(row["hash"], password):
        raise PermissionError(WRONG)
    if row["disabled_at"] is not None:
        raise PermissionError(DISABLED)
    sid = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        if HASHER.check_needs_rehash(row["hash"]):  # hashed with older parameters
            conn.execute(
                update(users).where(users.c.name == name).values(hash=hash_password(password))
            )
        conn.execute(  # this user's sessions past any use
            delete(sessions).where(
                sessions.c.user == name, sessions.c.created_at <= now - LIFETIME_S
            )
        )
        conn.execute(
            insert(sessions).values(
                digest=digest(sid),
                user=name,
                csrf=secrets.token_urlsafe(32),
                created_at=now,
                seen_at=now,
            )
        )
    return sid


def session(engine: Engine, sid: str, now: float) -> Session | None:
    """The live session whose cookie is `sid`, or None."""
    q = (
        select(sessions, users.c.role, users.c.envs, users.c.disabled_at)
        .join(users, users.c.name == sessions.c.user)
        .where(sessions.c.digest == digest(sid))
    )
    with engine.connect() as conn:
        row = conn.execute(q).mappings().first()
    if row is None or row["ended_at"] is not None or row["disabled_at"] is not None:
        return None
    if ended(row["created_at"], row["seen_at"], now):
        return None
    if now - row["seen_at"] >= TOUCH_EVERY_S:
        with engine.begin() as conn:
            conn.execute(
                update(sessions).where(sessions.c.digest == row["digest"]).values(seen_at=now)
            )
    envs = row["envs"]
    user = User(row["user"], row["role"], tuple(envs) if envs else None)
    return Session(user, row["csrf"], row["digest"])


def end(engine: Engine, session_digest: str, now: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(sessions)
            .where(sessions.c.digest == session_digest, sessions.c.ended_at.is_(None))
            .values(ended_at=now)
        )


# The server side: what api.server and the dashboard ask, and the two pages


def _session(server: Host, request: Request) -> Session | None:
    """The request's session, looked up once per request."""
    if not hasattr(request.state, "rollwise_session"):
        sid = request.cookies.get(COOKIE)
        found = session(server.ctx.engine, sid, server.now()) if sid else None
        request.state.rollwise_session = found
    got: Session | None = request.state.rollwise_session
    return got


def principal(server: Host, request: Request) -> User:
    """The user of the request's session cookie, for an API route: 401 when the session
    has ended, 403 when the request changes something without its CSRF token."""
    s = _session(server, request)
    if s is None:
        raise HTTPException(401, SESSION_ENDED)
    if request.method in UNSAFE and not same_token(s.csrf, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, CSRF_MISSING)
    return s.user


def csrf_token(server: Host, request: Request) -> str | None:
    """The CSRF token of the request's session (None without one), for the page's meta tag."""
    s = _session(server, request)
    return s.csrf if s else None


def page_user(server: Host, request: Request) -> Principal | None:
    """Who looks at an HTML page; None: the page redirects to /login?next=<its path>."""
    s = _session(server, request)
    return s.user if s else None


def mount(api: FastAPI, server: Host) -> None:
    """GET and POST /login, POST /logout."""
    tries = Tries()

    @api.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        return _form(request, safe_next(next))

    @api.post("/login", include_in_schema=False)
    def log_in(
        request: Request,
        name: Annotated[str, Form(max_length=200)] = "",
        password: Annotated[str, Form(max_length=MAX_PASSWORD)] = "",
        next: Annotated[str, Form(max_length=2000)] = "/",
    ) -> Response:
        name, target, now = name.strip().lower(), safe_next(next), server.now()
        if wait := tries.wait_s(name, now):
            message = TOO_MANY.format(s=math.ceil(wait))
            return _form(request, target, name, message, 429)
        try:
            sid = login(server.ctx.engine, name, password, now)
        except PermissionError as e:
            tries.failed(name, now)
            return _form(request, target, name, str(e), 403 if str(e) == DISABLED else 401)
        tries.passed(name)
        server.jobs.context(f"{name} ({DASHBOARD})").emit("user", "logged-in")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            sid,
            max_age=LIFETIME_S,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    @api.post("/logout", include_in_schema=False)
    def log_out(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
        if (s := _session(server, request)) is not None:
            given = csrf or request.headers.get(CSRF_HEADER)
            if not same_token(s.csrf, given):
                raise HTTPException(403, CSRF_MISSING_FORM)
            end(server.ctx.engine, s.digest, server.now())
            server.jobs.context(actor(s.user)).emit("user", "logged-out")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _form(
    request: Request, target: str, name: str = "", error: str | None = None, status: int = 200
) -> Response:
    context = {"next": target, "name": name, "error": error, "user": None, "csrf": None}
    response = templates.TemplateResponse(request, "login.html", context, status_code=status)
    response.headers["cache-control"] = "no-store"
    response.headers["content-security-policy"] = "frame-ancestors 'none'"
    return response
