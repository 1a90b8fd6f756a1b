"""Signed checkpoints make a cut tail, an emptied log and a rewritten chain fail verify."""

import json
import os
import re
import socket
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from rollwise import audit, checkpoints
from rollwise.audit import Event
from rollwise.checkpoints import Checkpoint, Settings
from rollwise.config.load import load_config_text
from rollwise.errors import ConfigError, IntegrityError, RollwiseError
from rollwise.events import EventBus
from rollwise.store.db import open_engine
from rollwise.store.tables import events


@pytest.fixture(autouse=True)
def no_home(tmp_path, monkeypatch):
    """Keys and checkpoints go under tmp_path, never the real home directory."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv(checkpoints.KEY_ENV, raising=False)
    monkeypatch.delenv(checkpoints.FILE_ENV, raising=False)


@pytest.fixture
def engine(tmp_path):
    e = open_engine(f"sqlite:///{tmp_path / 'state.db'}")
    add_events(e, 5)
    return e


@pytest.fixture
def settings(tmp_path):
    return Settings(
        "shop", tmp_path / "keys" / "audit-shop.key", tmp_path / "trail" / "audit-shop.jsonl"
    )


def add_events(engine, n, action="deploy", outcome="succeeded"):
    for i in range(n):
        audit.append(
            engine,
            Event(
                action=action,
                outcome=outcome,
                actor="ana",
                env="prod",
                version=f"1.0.{i}",
                data={"n": i},
            ),
        )


def delete_events(engine, first):
    with engine.begin() as conn:
        conn.execute(delete(events).where(events.c.seq >= first))


def rewrite_from(engine, seq, **changes):
    """What whoever edits the state store can do without any key: change event `seq` and
    recompute the hash chain from there on."""
    with engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(events).order_by(events.c.seq)).mappings()]
        prev = rows[seq - 2]["hash"] if seq > 1 else audit.GENESIS
        for row in rows[seq - 1 :]:
            row.update(changes if row["seq"] == seq else {}, prev_hash=prev)
            row["hash"] = prev = audit.digest(prev, row)
            conn.execute(update(events).where(events.c.seq == row["seq"]).values(**row))


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_lines(path, cps):
    path.write_text(
        "".join(json.dumps(c, sort_keys=True, separators=(",", ":")) + "\n" for c in cps)
    )


def verify(engine, settings, public_key=None):
    return audit.verify_with_checkpoints(engine, settings, public_key)


# --- the log's ends -------------------------------------------------------------------


def test_given_a_checkpoint_when_the_tail_is_cut_then_verify_names_the_removed_events(
    engine, settings
):
    add_events(engine, 52)
    cp = audit.checkpoint(engine, settings)
    delete_events(engine, 42)

    res = verify(engine, settings)

    assert (res.ok, res.count, res.first_bad_seq) == (False, 41, 42)
    assert res.problem == (
        f"the log ends at event 41 but {cp.label()} covers 57 events: "
        "events 42\N{EN DASH}57 were removed"
    )


def test_given_a_checkpoint_when_only_the_last_event_is_removed_then_verify_fails(engine, settings):
    audit.checkpoint(engine, settings)
    delete_events(engine, 5)

    res = verify(engine, settings)

    assert (res.ok, res.first_bad_seq) == (False, 5)
    assert "event 5 was removed" in res.problem


def test_given_a_checkpoint_when_the_log_is_emptied_then_verify_fails(engine, settings):
    cp = audit.checkpoint(engine, settings)
    delete_events(engine, 1)

    res = verify(engine, settings)

    assert (res.ok, res.count, res.first_bad_seq) == (False, 0, 1)
    assert res.problem == (
        f"the log is empty but {cp.label()} covers 5 events: events 1\N{EN DASH}5 were removed"
    )


def test_given_a_checkpoint_when_more_events_follow_then_verify_passes_and_says_so(
    engine, settings
):
    cp = audit.checkpoint(engine, settings)
    add_events(engine, 2)

    res = verify(engine, settings)

    assert (res.ok, res.count, res.checkpoint) == (True, 7, cp)
    assert res.note.endswith(
        "covers 5 events and matches; events 6\N{EN DASH}7 were written after it"
    )


def test_given_no_checkpoint_then_verify_passes_and_says_truncation_cannot_be_detected(
    engine, settings
):
    delete_events(engine, 4)

    res = verify(engine, settings)

    assert (res.ok, res.count, res.checkpoint) == (True, 3, None)
    assert res.note.startswith(
        "no checkpoint: truncation cannot be detected; `rollwise audit checkpoint`"
    )


def test_given_an_empty_log_when_checkpointed_then_verify_passes(tmp_path, settings):
    e = open_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    cp = audit.checkpoint(e, settings)

    assert (cp.count, cp.head) == (0, audit.GENESIS)
    assert verify(e, settings).ok


def test_given_checkpoints_when_rows_are_rewritten_and_rehashed_then_verify_names_the_span(
    engine, settings
):
    audit.checkpoint(engine, settings)  # covers 1-5
    add_events(engine, 5)
    second = audit.checkpoint(engine, settings)  # covers 1-10
    rewrite_from(engine, 7, actor="mallory")
    assert audit.verify(engine).ok  # the chain alone cannot tell

    res = verify(engine, settings)

    assert (res.ok, res.count, res.first_bad_seq) == (False, 5, None)
    assert res.problem == (
        f"event 10 is not the one {second.label()} signed: at least one "
        "of events 6\N{EN DASH}10 was changed and the chain recomputed "
        "after it"
    )


# --- the checkpoint file --------------------------------------------------------------


def test_given_no_key_when_the_first_checkpoint_is_written_then_key_and_file_are_0600(
    engine, settings
):
    assert not settings.key_file.exists()

    audit.checkpoint(engine, settings)

    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.checkpoint_file.stat().st_mode) == 0o600
    assert settings.public_key_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_given_a_key_when_keygen_runs_again_then_it_refuses_to_replace_it(settings):
    first = checkpoints.create_key(settings.key_file).public_key()
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600

    with pytest.raises(ConfigError, match="already there"):
        checkpoints.create_key(settings.key_file)
    assert checkpoints.key_id(
        checkpoints.load_key(settings.key_file).public_key()
    ) == checkpoints.key_id(first)


def test_given_a_key_readable_by_others_then_it_is_refused(engine, settings):
    checkpoints.create_key(settings.key_file)
    settings.key_file.chmod(0o644)

    with pytest.raises(ConfigError, match="readable by others") as e:
        audit.checkpoint(engine, settings)
    assert f"chmod 600 {settings.key_file}" in str(e.value)


def test_given_checkpoints_when_their_key_is_lost_then_no_new_key_is_made(engine, settings):
    audit.checkpoint(engine, settings)
    settings.key_file.unlink()

    with pytest.raises(ConfigError, match="the audit key is missing"):
        audit.checkpoint(engine, settings)
    assert not settings.key_file.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda cps: cps[-1].update(count=99), "is not signed by the audit key"),
        (lambda cps: cps[1].update(count=7), "checkpoint #3 of .* does not link to checkpoint #2"),
        (
            lambda cps: cps[1].update(count=4),
            "covers 4 events, fewer than the 5 of the checkpoint before it",
        ),
        (lambda cps: cps.pop(1), "checkpoint #3 of .* does not link to checkpoint #1"),
        (lambda cps: cps.pop(0), "checkpoint #2 of .* does not link to the start of the chain"),
    ],
)
def test_given_a_tampered_checkpoint_file_then_verify_fails(engine, settings, edit, message):
    for _ in range(3):
        audit.checkpoint(engine, settings)
        add_events(engine, 1)
    cps = lines(settings.checkpoint_file)
    edit(cps)
    write_lines(settings.checkpoint_file, cps)

    res = verify(engine, settings)

    assert not res.ok
    assert res.count == 8  # the chain itself is intact
    assert re.search(message, res.problem), res.problem


def test_given_a_line_that_is_no_checkpoint_then_verify_names_it(engine, settings):
    audit.checkpoint(engine, settings)
    with settings.checkpoint_file.open("a") as f:
        f.write('{"count": 1}\n')

    res = verify(engine, settings)

    assert not res.ok
    assert f"{settings.checkpoint_file}:2: not a checkpoint" in res.problem


def test_given_checkpoints_when_the_checkpoint_file_is_removed_then_verify_fails(engine, settings):
    audit.checkpoint(engine, settings)
    settings.checkpoint_file.unlink()

    res = verify(engine, settings)

    assert not res.ok
    assert "the checkpoints were removed" in res.problem


def test_given_a_key_when_checkpoint_file_and_public_key_are_deleted_then_verify_says_so(
    engine, settings
):
    audit.checkpoint(engine, settings)
    settings.checkpoint_file.unlink()
    settings.public_key_file.unlink()

    res = verify(engine, settings)

    assert res.ok  # indistinguishable from `audit keygen` without a checkpoint yet
    assert res.note.startswith("no checkpoint: truncation cannot be detected")
    assert f"{settings.checkpoint_file} and its public key were removed" in res.note


def test_given_a_checkpoint_signed_with_another_key_then_verify_refuses_it(
    engine, settings, tmp_path
):
    first = audit.checkpoint(engine, settings)
    add_events(engine, 1)
    other = checkpoints.create_key(tmp_path / "other.key")
    forged = checkpoints.sign(
        other,
        Checkpoint(
            seq=2,
            count=6,
            head=_last_hash(engine),
            ts=first.ts + 1,
            prev=first.digest(),
            app="shop",
            key_id=checkpoints.key_id(other.public_key()),
        ),
    )
    with settings.checkpoint_file.open("a") as f:
        f.write(forged.line())  # well linked, matching the log, signed by the wrong key

    res = verify(engine, settings)

    assert not res.ok
    assert f"was signed with key {forged.key_id}, not with the audit key" in res.problem


def test_given_checkpoints_when_another_key_signs_then_checkpoint_refuses(
    engine, settings, tmp_path
):
    audit.checkpoint(engine, settings)
    checkpoints.create_key(tmp_path / "other.key")

    with pytest.raises(IntegrityError, match="is not the key that signed the checkpoints"):
        audit.checkpoint(engine, Settings("shop", tmp_path / "other.key", settings.checkpoint_file))


def test_given_rows_rewritten_when_the_checkpoint_head_is_edited_without_the_key_then_verify_fails(
    engine, settings
):
    audit.checkpoint(engine, settings)
    rewrite_from(engine, 3, version="6.6.6")
    cps = lines(settings.checkpoint_file)
    cps[-1]["head"] = _last_hash(engine)  # the new head, under the old signature
    write_lines(settings.checkpoint_file, cps)

    res = verify(engine, settings)

    assert not res.ok
    assert "is not signed by the audit key" in res.problem


def test_given_rows_rewritten_when_checkpoints_are_resigned_with_another_key_then_verify_fails(
    engine, settings, tmp_path
):
    audit.checkpoint(engine, settings)
    rewrite_from(engine, 3, version="6.6.6")
    # the editor signs a fresh chain with a key of their own and swaps the public key
    forger = Settings("shop", tmp_path / "forger.key", tmp_path / "forger" / "audit.jsonl")
    audit.checkpoint(engine, forger)
    settings.checkpoint_file.write_bytes(forger.checkpoint_file.read_bytes())
    settings.public_key_file.write_bytes(forger.public_key_file.read_bytes())

    res = verify(engine, settings)
    assert not res.ok
    assert "the checkpoints were re-signed with another key" in res.problem

    # verified elsewhere, without the audit key, with the public key the auditor keeps
    kept = tmp_path / "kept.pub"
    kept.write_bytes(checkpoints.pem(checkpoints.load_key(settings.key_file).public_key()))
    settings.key_file.unlink()
    res = verify(engine, settings, public_key=kept)
    assert not res.ok
    assert "not with the audit key" in res.problem


def _last_hash(engine):
    with engine.connect() as conn:
        return conn.execute(select(events.c.hash).order_by(events.c.seq.desc())).first()[0]


def test_given_a_cut_log_then_the_next_checkpoint_refuses_to_sign_over_it(engine, settings):
    audit.checkpoint(engine, settings)
    delete_events(engine, 4)
    add_events(engine, 3)  # the log is as long as before, and more

    with pytest.raises(
        IntegrityError,
        match=r"event 5, the last one checkpoint #1 of .* "
        r"covers, changed; not signing",
    ):
        audit.checkpoint(engine, settings)
    assert len(lines(settings.checkpoint_file)) == 1


def test_given_a_forged_newest_line_then_the_next_checkpoint_does_not_chain_onto_it(
    engine, settings
):
    audit.checkpoint(engine, settings)
    cps = lines(settings.checkpoint_file)
    cps[-1]["count"] = 3
    write_lines(settings.checkpoint_file, cps)

    with pytest.raises(IntegrityError, match="is not signed by the audit key; not chaining"):
        audit.checkpoint(engine, settings)


# --- when checkpoints are written ---------------------------------------------------------


def test_given_the_checkpointer_when_an_operation_ends_then_a_checkpoint_covers_it(
    engine, settings
):
    emitted: list[Event] = []
    after = audit.checkpointer(engine, settings, emitted.append)

    after(Event(action="deploy", outcome="started", actor="ana"))
    after(Event(action="step", outcome="ok", actor="ana"))
    assert not settings.checkpoint_file.exists()

    after(Event(action="deploy", outcome="rolled_back", actor="ana"))
    assert [c["count"] for c in lines(settings.checkpoint_file)] == [5]
    assert emitted == []


def test_given_a_failing_checkpoint_when_an_operation_ends_then_it_is_reported_not_raised(
    engine, settings
):
    audit.checkpoint(engine, settings)
    settings.key_file.unlink()
    emitted: list[Event] = []

    audit.checkpointer(engine, settings, emitted.append)(
        Event(action="rollback", outcome="succeeded", actor="ana", env="prod")
    )

    [ev] = emitted
    assert (ev.action, ev.outcome, ev.env, ev.actor) == ("checkpoint", "error", "prod", "ana")
    assert "the audit key is missing" in (ev.reason or "")


def test_given_a_bus_wired_like_the_context_when_a_deploy_ends_then_its_last_event_is_covered(
    engine, settings
):
    bus = EventBus()
    bus.subscribe(audit.recorder(engine))
    bus.subscribe(audit.checkpointer(engine, settings, bus.emit))

    bus.emit(Event(action="deploy", outcome="started", actor="ana", env="prod"))
    bus.emit(Event(action="deploy", outcome="succeeded", actor="ana", env="prod"))

    assert [c["count"] for c in lines(settings.checkpoint_file)] == [7]
    settings.key_file.unlink()  # the next checkpoint fails: recorded, the operation goes on
    bus.emit(Event(action="rollback", outcome="succeeded", actor="ana", env="prod"))
    [last] = audit.iter_events(engine, limit=1)
    assert (last["seq"], last["action"], last["outcome"]) == (9, "checkpoint", "error")
    assert verify(engine, settings).note.endswith("events 8\N{EN DASH}9 were written after it")


# --- copies -------------------------------------------------------------------------------


def test_given_a_webhook_then_each_checkpoint_is_posted_with_the_bearer_token(
    engine, settings, monkeypatch
):
    seen = []

    def handler(request):
        seen.append((request.headers["authorization"], json.loads(request.content)))
        return httpx.Response(204)

    monkeypatch.setenv("AUDIT_HOOK_TOKEN", "tok-123")
    sink = checkpoints.WebhookSink(
        "https://audit.example/cp", "AUDIT_HOOK_TOKEN", transport=httpx.MockTransport(handler)
    )
    cp = audit.checkpoint(engine, settings)
    sink.write(cp)

    assert seen == [("Bearer tok-123", json.loads(cp.line()))]


def test_given_a_failing_copy_then_the_file_keeps_the_checkpoint_and_the_error_names_the_sink(
    engine, settings
):
    def refuse(request):
        return httpx.Response(503)

    cp = audit.checkpoint(engine, settings)
    sink = checkpoints.WebhookSink(
        "https://audit.example/cp", transport=httpx.MockTransport(refuse)
    )

    with pytest.raises(
        RollwiseError,
        match=r"checkpoint #1 of .* was written but not sent to "
        r"webhook https://audit.example/cp: .*503",
    ):
        checkpoints.ship(cp, [sink])


def test_given_syslog_over_udp_then_each_checkpoint_is_sent(engine, settings):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        port = listener.getsockname()[1]
        cp = audit.checkpoint(
            engine,
            Settings(
                settings.app,
                settings.key_file,
                settings.checkpoint_file,
                syslog_address=f"127.0.0.1:{port}",
            ),
        )
        message = listener.recv(4096).decode()

    assert message.startswith("<14>rollwise-audit: ")  # facility user, severity info
    assert checkpoints.parse(message.split(": ", 1)[1].rstrip("\x00")) == cp


# --- where things live ----------------------------------------------------------------------


def config(audit_yaml=""):
    return load_config_text("app: shop\nrun:\n  command: 'true'\n" + audit_yaml, "rollwise.yaml")


def test_given_no_config_then_key_and_checkpoints_live_under_xdg_outside_the_project(
    tmp_path, engine
):
    s = checkpoints.settings(config(), tmp_path / "proj" / ".rollwise", engine)

    assert s.key_file == tmp_path / "xdg-config" / "rollwise" / "audit-shop.key"
    assert s.checkpoint_file.parent == tmp_path / "xdg-state" / "rollwise"
    assert s.checkpoint_file.name == f"audit-shop-{checkpoints.store_name(engine)}.jsonl"
    assert (s.syslog_address, s.webhook_url) == (None, None)


def test_given_env_vars_then_they_beat_the_config(tmp_path, engine, monkeypatch):
    monkeypatch.setenv(checkpoints.KEY_ENV, str(tmp_path / "k.key"))
    monkeypatch.setenv(checkpoints.FILE_ENV, str(tmp_path / "cp.jsonl"))
    cfg = config("audit:\n  key_file: conf.key\n  syslog: true\n")

    s = checkpoints.settings(cfg, tmp_path / "proj" / ".rollwise", engine)

    assert (s.key_file, s.checkpoint_file) == (tmp_path / "k.key", tmp_path / "cp.jsonl")
    assert s.syslog_address == "/dev/log"


def test_given_relative_paths_in_the_config_then_they_are_relative_to_the_project(tmp_path, engine):
    cfg = config(
        "audit:\n  key_file: ../keys/shop.key\n  checkpoint_file: ../trail/cp\n"
        "  webhook_url: https://audit.example/cp\n  webhook_token_env: HOOK_TOKEN\n"
    )

    s = checkpoints.settings(cfg, tmp_path / "proj" / ".rollwise", engine)

    assert (s.key_file, s.checkpoint_file) == (
        tmp_path / "keys" / "shop.key",
        tmp_path / "trail" / "cp",
    )
    assert s.public_key_file == tmp_path / "trail" / "cp.pub"
    assert [sink.name for sink in checkpoints.copies(s)] == ["webhook https://audit.example/cp"]


def test_given_a_checkpoint_file_inside_the_state_dir_then_the_config_is_refused(tmp_path, engine):
    cfg = config("audit:\n  checkpoint_file: .rollwise/cp.jsonl\n")

    with pytest.raises(ConfigError, match="inside the state directory"):
        checkpoints.settings(cfg, tmp_path / "proj" / ".rollwise", engine)


# --- the command line -------------------------------------------------------------------------


def test_given_a_project_when_operations_end_then_each_is_checkpointed_and_a_cut_tail_fails(
    project,
):
    """No `audit checkpoint` needed: each operation that ends signs one (the fixture keeps
    XDG_CONFIG_HOME and XDG_STATE_HOME in the test's own directory)."""
    project.release("1.0.0", "1.0.1")
    ok = project.cli("audit", "verify", check=True)
    assert "chain intact" in ok.stdout
    assert "checkpoint #2 of" in ok.stdout and "covers 2 events and matches" in ok.stdout
    key = Path(os.environ["XDG_CONFIG_HOME"]) / "rollwise" / "audit-order-sync.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    with sqlite3.connect(project.root / ".rollwise" / "state.db") as conn:
        conn.execute("DELETE FROM events WHERE seq = 2")
    cut = project.cli("audit", "verify")
    assert cut.returncode == 6, cut.stderr
    assert "the log ends at event 1 but checkpoint #2 of" in cut.stderr
    assert "event 2 was removed" in cut.stderr
    refused = project.cli("audit", "keygen")
    assert refused.returncode == 3 and "already there" in refused.stderr
