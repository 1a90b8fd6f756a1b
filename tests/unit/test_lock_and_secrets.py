import time

import pytest

from rollwise import secrets
from rollwise.controller import lock
from rollwise.errors import LockHeld
from rollwise.store.db import open_engine


@pytest.fixture
def engine(tmp_path):
    return open_engine(f"sqlite:///{tmp_path / 'state.db'}")


def test_given_a_held_lease_then_a_second_holder_is_refused_with_the_holder_named(engine):
    with lock.Lease(engine, "prod", "ana pid 1"), pytest.raises(LockHeld, match="ana pid 1"):
        lock.Lease(engine, "prod", "bob pid 2").__enter__()


def test_given_an_expired_lease_then_it_is_taken_over_with_a_higher_fencing_token(engine):
    first = lock.try_acquire(engine, "prod", "dead", ttl=0.05)
    time.sleep(0.1)
    second = lock.try_acquire(engine, "prod", "alive")
    assert first is not None and second == first + 1
    assert not lock.renew(engine, "prod", first)  # the old holder is fenced off


def test_environments_lock_independently(engine):
    assert lock.try_acquire(engine, "prod", "a") is not None
    assert lock.try_acquire(engine, "staging", "b") is not None


def test_a_secret_never_shows_its_value():
    s = secrets.Secret("hunter2")
    assert "hunter2" not in f"{s} {s!r} {[s]} { ({'k': s}) }"
    assert s.reveal() == "hunter2"


def test_secrets_file_round_trips_and_refuses_a_wrong_key(tmp_path, monkeypatch):
    monkeypatch.setenv(secrets.KEY_ENV, secrets.new_key())
    path = tmp_path / "prod.enc"
    secrets.write_file(path, {"DB_PASSWORD": secrets.Secret("s3cret")})
    assert b"s3cret" not in path.read_bytes()
    assert secrets.read_file(path)["DB_PASSWORD"].reveal() == "s3cret"
    monkeypatch.setenv(secrets.KEY_ENV, secrets.new_key())
    with pytest.raises(Exception, match="cannot decrypt"):
        secrets.read_file(path)
