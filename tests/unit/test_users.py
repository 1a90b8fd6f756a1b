"""Dashboard users: passwords hashed with argon2id, sessions that end, where a login may send
the browser, CSRF tokens compared, failed logins limited; and the store of users and
sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from rollwise.api import auth, users
from rollwise.api.auth import Principal
from rollwise.api.users import IDLE_S, LIFETIME_S, TRIES, TRIES_WINDOW_S, User
from rollwise.errors import NotFound, UsageError
from rollwise.store.db import open_engine

PASSWORD = "correct horse battery"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path / 'state.db'}")


def test_a_password_is_kept_as_an_argon2id_hash_that_verifies_it_alone() -> None:
    hashed = users.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert users.verify(hashed, PASSWORD)
    assert not users.verify(hashed, PASSWORD + "!")
    assert not users.verify("not a hash", PASSWORD)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short", "needs 12 characters or more; this one has 5"),
        ("a" * 1025, "at most 1024 characters"),
        ("abababababab", "more than three different characters"),
    ],
)
def test_a_weak_password_is_refused_with_the_reason(password: str, why: str) -> None:
    assert why in (users.weak(password) or "")


def test_a_long_enough_password_is_accepted() -> None:
    assert users.weak(PASSWORD) is None


def test_a_session_ends_after_12_hours_unused_or_7_days_after_login() -> None:
    start = 1000.0
    assert not users.ended(start, start, start + IDLE_S - 1)
    assert users.ended(start, start, start + IDLE_S)
    used = start + LIFETIME_S - 60  # used a minute ago, but logged in 7 days ago
    assert not users.ended(start, used, start + LIFETIME_S - 1)
    assert users.ended(start, used, start + LIFETIME_S)


@pytest.mark.parametrize(
    ("given", "goes_to"),
    [
        ("/environments/prod", "/environments/prod"),
        ("/approvals?state=pending#top", "/approvals?state=pending#top"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/x\\y", "/"),
        ("/\t/evil.example/", "/"),
        ("/\n/evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("relative/path", "/"),
    ],
)
def test_after_login_the_browser_goes_only_to_a_path_of_this_server(
    given: str | None, goes_to: str
) -> None:
    assert users.safe_next(given) == goes_to


def test_csrf_tokens_are_compared_whole() -> None:
    assert users.same_token("abc", "abc")
    assert not users.same_token("abc", "abd")
    assert not users.same_token("abc", "ab")
    assert not users.same_token("abc", None)
    assert not users.same_token("abc", "ábc")  # not ASCII: compared, not an error


def test_failed_logins_of_one_name_wait_once_there_were_five_in_a_minute() -> None:
    tries = users.Tries()
    for i in range(TRIES):
        assert tries.wait_s("ana", 100.0 + i) == 0
        tries.failed("ana", 100.0 + i)
    assert tries.wait_s("ana", 105.0) == pytest.approx(TRIES_WINDOW_S - 5)
    assert tries.wait_s("bo", 105.0) == 0  # another name is not held up
    assert tries.wait_s("ana", 100.0 + TRIES_WINDOW_S) == 0  # the oldest is a minute old
    tries.passed("ana")
    assert tries.wait_s("ana", 105.0) == 0


def test_a_user_and_a_token_of_one_name_act_as_one_person_but_are_audited_apart() -> None:
    user, token = User("ana", "deployer", None), Principal("ana", "deployer", None)
    assert user.name == token.name  # the two-person rule compares names
    assert (users.actor(user), users.actor(token)) == ("ana (dashboard)", "ana (api)")
    assert User("v", "viewer", None).why_not("deployer", "prod") == (
        "user 'v' has role viewer; this needs deployer or above"
    )


def test_a_user_is_kept_without_the_password_and_logs_in_to_a_hashed_session(
    engine: Engine,
) -> None:
    row = users.create(engine, "ana", "approver", ["prod"], PASSWORD, "root", now=10.0)
    assert row["name"] == "ana" and "hash" not in row
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT hash FROM users").scalar()
    assert PASSWORD not in str(stored)
    sid = users.login(engine, "ana", PASSWORD, now=20.0)
    with engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT digest FROM sessions").scalar()
    assert kept == auth.digest(sid) and sid not in str(kept)
    found = users.session(engine, sid, now=30.0)
    assert found is not None and found.user == User("ana", "approver", ("prod",))
    assert users.session(engine, sid, now=20.0 + LIFETIME_S) is None
    assert users.session(engine, sid + "x", now=30.0) is None


def test_a_wrong_password_or_name_gives_one_answer(engine: Engine) -> None:
    users.create(engine, "ana", "viewer", None, PASSWORD, "root")
    for name, password in (("ana", "wrong password!"), ("nobody", PASSWORD)):
        with pytest.raises(PermissionError, match=r"^wrong name or password$"):
            users.login(engine, name, password, now=1.0)


def test_a_password_change_or_disabling_ends_the_sessions(engine: Engine) -> None:
    users.create(engine, "ana", "viewer", None, PASSWORD, "root")
    first = users.login(engine, "ana", PASSWORD, now=1.0)
    users.set_password(engine, "ana", "another long passphrase", now=2.0)
    assert users.session(engine, first, now=3.0) is None
    with pytest.raises(PermissionError, match="wrong name or password"):
        users.login(engine, "ana", PASSWORD, now=3.0)
    second = users.login(engine, "ana", "another long passphrase", now=4.0)
    assert users.disable(engine, "ana", now=5.0)["disabled_at"] == 5.0
    assert users.session(engine, second, now=6.0) is None
    with pytest.raises(PermissionError, match="this user is disabled"):
        users.login(engine, "ana", "another long passphrase", now=7.0)


def test_bad_users_are_refused_with_the_reason(engine: Engine) -> None:
    with pytest.raises(UsageError, match="password refused: a password needs 12"):
        users.create(engine, "ana", "viewer", None, "hunter2", "root")
    with pytest.raises(UsageError, match="unknown role 'root'"):
        users.create(engine, "ana", "root", None, PASSWORD, "root")
    with pytest.raises(UsageError, match="user name 'Ana Lee' refused"):
        users.create(engine, "Ana Lee", "viewer", None, PASSWORD, "root")
    users.create(engine, "ana", "viewer", None, PASSWORD, "root")
    with pytest.raises(UsageError, match="user 'ana' exists"):
        users.create(engine, "ana", "admin", None, PASSWORD, "root")
    with pytest.raises(NotFound, match="no user 'bo'") as e:
        users.disable(engine, "bo")
    assert "users: ana" in e.value.hint
