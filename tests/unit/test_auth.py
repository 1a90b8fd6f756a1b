"""Team server tokens and roles: who may do what, and tokens that stop working."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollwise.api import auth
from rollwise.api.auth import Principal
from rollwise.errors import NotFound, UsageError
from rollwise.store.db import open_engine

ROLES = auth.ROLES


@pytest.mark.parametrize("have", ROLES)
@pytest.mark.parametrize("need", ROLES)
def test_a_role_may_do_what_it_and_every_role_before_it_may(have: str, need: str) -> None:
    who = Principal("ci", have, None)
    assert who.may(need, "prod") == (ROLES.index(have) >= ROLES.index(need))


def test_a_token_scoped_to_environments_acts_only_on_them() -> None:
    who = Principal("ci", "deployer", ("staging",))
    assert (who.may("deployer", "staging"), who.may("deployer", "prod")) == (True, False)
    assert who.why_not("deployer", "prod") == "token 'ci' may act on staging, not on 'prod'"
    assert Principal("v", "viewer", None).why_not("deployer", "prod") == (
        "token 'v' has role viewer; this needs deployer or above"
    )


def test_a_token_is_kept_hashed_and_stops_working_when_expired_or_revoked(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    token, row = auth.create(engine, "ci", "deployer", ["prod"], "ana", 60, now=1000.0)
    assert token.startswith(f"rw_{row['id']}_") and "digest" not in row
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT digest FROM api_tokens").scalar()
    assert stored == auth.digest(token) and token not in str(stored)
    assert auth.authenticate(engine, token, lambda: 1059.0) == Principal(
        "ci", "deployer", ("prod",)
    )
    with pytest.raises(PermissionError, match="has expired"):
        auth.authenticate(engine, token, lambda: 1060.0)
    with pytest.raises(PermissionError, match="unknown token"):
        auth.authenticate(engine, token[:-1] + ("x" if token[-1] != "x" else "y"), lambda: 1.0)
    with pytest.raises(PermissionError, match="not a rollwise API token"):
        auth.authenticate(engine, "hunter2", lambda: 1.0)
    auth.revoke(engine, row["id"], now=1001.0)
    with pytest.raises(PermissionError, match="was revoked"):
        auth.authenticate(engine, token, lambda: 1002.0)
    with pytest.raises(NotFound, match="no active token"):
        auth.revoke(engine, row["id"])
    with pytest.raises(UsageError, match="unknown role 'root'"):
        auth.create(engine, "x", "root", None, "ana", None)


def test_a_verified_token_is_reused_briefly_but_its_expiry_and_revocation_still_count(
    tmp_path: Path,
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    token, row = auth.create(engine, "ci", "deployer", None, "ana", 60, now=1000.0)
    wall, mono = [1010.0], [5.0]
    kept = auth.Verified(engine, lambda: wall[0], ttl_s=2.0, clock=lambda: mono[0])
    assert kept.authenticate(token) == Principal("ci", "deployer", None)

    auth.revoke(engine, row["id"], now=1011.0)  # elsewhere: this server does not know yet
    mono[0] += 2.0
    assert kept.authenticate(token) == Principal("ci", "deployer", None)  # within ttl_s
    mono[0] += 0.01
    with pytest.raises(PermissionError, match="token 'ci' was revoked"):
        kept.authenticate(token)

    other, _ = auth.create(engine, "bot", "viewer", None, "ana", 60, now=1000.0)
    assert kept.authenticate(other).name == "bot"
    wall[0] = 1060.0  # expired, though verified a moment ago
    with pytest.raises(PermissionError, match="token 'bot' has expired"):
        kept.authenticate(other)
    with pytest.raises(PermissionError, match="unknown token"):
        kept.authenticate(other[:-4] + "xxxx")


def test_a_token_revoked_through_the_server_is_forgotten_at_once(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    token, row = auth.create(engine, "ci", "deployer", None, "ana", None, now=1000.0)
    kept = auth.Verified(engine, lambda: 1001.0, clock=lambda: 0.0)
    kept.authenticate(token)
    auth.revoke(engine, row["id"], now=1002.0)
    kept.forget()
    with pytest.raises(PermissionError, match="was revoked"):
        kept.authenticate(token)


def test_cached_answers_only_for_a_token_verified_moments_ago(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    token, _ = auth.create(engine, "ci", "viewer", None, "ana", None, now=1000.0)
    mono = [0.0]
    kept = auth.Verified(engine, lambda: 1001.0, ttl_s=2.0, clock=lambda: mono[0])
    assert kept.cached(token) is None
    kept.authenticate(token)
    assert kept.cached(token) == Principal("ci", "viewer", None)
    mono[0] = 2.5
    assert kept.cached(token) is None
