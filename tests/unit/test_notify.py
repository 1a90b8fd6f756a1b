"""Notifications: messages, routing and repeats by equality with a clock passed in; delivery
through real Apprise to a JSON webhook on loopback, and, for services whose address is
fixed (Slack, DingTalk, WeCom, Feishu, Lark), the request Apprise builds, caught at the
HTTP adapter; a channel that never answers holds up nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError

from rollwise import notify
from rollwise.audit import Event
from rollwise.config.schema import NotificationConfig, ProjectConfig, UrlOrSecret
from rollwise.errors import ConfigError
from rollwise.notify import ChannelResult, Message, Seen, admit, kind_of, message, routes

T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC
AT = "2026-11-30 00:53:20 UTC"


def ev(action: str, outcome: str, **kw: Any) -> Event:
    return Event(action=action, outcome=outcome, actor=kw.pop("actor", "alice"), ts=T0, **kw)


STARTED = ev(
    "deploy",
    "started",
    env="prod",
    version="1.2.0",
    reason="ticket OPS-7",
    data={"deployment": 12, "from": "1.1.0", "steps": ["start", "canary:10"]},
)
DECISION = ev(
    "analysis",
    "rollback",
    env="prod",
    version="1.2.0",
    reason="error rate 31.0% vs 0.2% over 400 requests",
    data={"deployment": 12, "step": "canary:10", "decision": "rollback"},
    actor="ci",
)
ROLLED_BACK = ev(
    "deploy",
    "rolled_back",
    env="prod",
    version="1.2.0",
    reason="step canary:10: error rate 31.0% vs 0.2% over 400 requests",
    data={"deployment": 12, "serving": "1.1.0"},
    actor="ci",
)


# --- what a message says --------------------------------------------------------------------


def test_given_a_deploy_start_when_written_then_it_says_from_what_why_who_and_links():
    assert message(STARTED, "https://rw.example.com/") == Message(
        "deploy-started",
        "prod",
        "1.2.0",
        "[prod] deploy of 1.2.0 started",
        "What: deploy of 1.2.0 started, from 1.1.0\n"
        "Environment: prod\n"
        "Version: 1.2.0 (from 1.1.0)\n"
        "Why: ticket OPS-7\n"
        "By: alice\n"
        f"At: {AT}\n"
        "Dashboard: https://rw.example.com/environments/prod/deployments/12",
        "info",
    )


def test_given_a_failing_decision_when_written_then_the_analysis_reason_is_why():
    assert message(DECISION, None, STARTED) == Message(
        "canary-failed",
        "prod",
        "1.2.0",
        "[prod] canary of 1.2.0 failed: rolling back",
        "What: analysis at step canary:10 decided to roll back; traffic goes back to 1.1.0\n"
        "Environment: prod\n"
        "Version: 1.2.0 (from 1.1.0)\n"
        "Why: error rate 31.0% vs 0.2% over 400 requests\n"
        "By: ci\n"
        f"At: {AT}",
        "failure",
    )


def test_given_an_automatic_rollback_when_written_then_it_names_the_release_serving():
    m = message(ROLLED_BACK, None)
    assert m is not None
    assert (m.kind, m.title, m.level) == (
        "rolled-back",
        "[prod] 1.2.0 rolled back automatically; 1.1.0 serves",
        "warning",
    )
    assert m.body.splitlines()[:4] == [
        "What: deploy of 1.2.0 rolled back automatically; 1.1.0 serves",
        "Environment: prod",
        "Version: 1.2.0 (from 1.1.0)",
        "Why: step canary:10: error rate 31.0% vs 0.2% over 400 requests",
    ]


def test_given_a_manual_rollback_when_it_ends_then_why_comes_from_its_start():
    start = ev(
        "rollback",
        "started",
        env="prod",
        version="1.1.0",
        reason="support tickets about prices",
        data={"deployment": 13, "from": "1.2.0"},
    )
    done = ev("rollback", "succeeded", env="prod", version="1.1.0", data={"deployment": 13})
    m = message(done, None, start)
    assert m is not None
    assert (m.kind, m.title) == ("rolled-back", "[prod] rolled back to 1.1.0")
    assert m.body.splitlines()[:4] == [
        "What: rollback from 1.2.0 to 1.1.0 done; 1.1.0 serves",
        "Environment: prod",
        "Version: 1.1.0 (from 1.2.0)",
        "Why: support tickets about prices",
    ]


def test_given_an_approval_request_when_written_then_it_says_how_to_approve_and_links_it():
    asked = ev(
        "approval",
        "needed",
        env="prod",
        version="1.2.0",
        actor="bob (api)",
        data={"id": 4, "requested_by": "bob", "required": 2},
    )
    m = message(asked, "https://rw.example.com")
    assert m is not None
    assert m.title == "[prod] deploy of 1.2.0 needs approval"
    assert m.body.splitlines()[0] == (
        "What: bob asks to deploy 1.2.0: 2 approval(s) from someone else "
        "(`rollwise approval approve 4`)"
    )
    assert m.body.splitlines()[-1] == "Dashboard: https://rw.example.com/approvals/4"


def test_given_a_freeze_break_when_written_then_it_names_the_window_and_the_reason():
    broke = ev(
        "freeze-break",
        "ok",
        env="prod",
        version="1.2.1",
        reason="payment outage fix",
        data={"window": "double-11", "zone": "Asia/Shanghai"},
    )
    m = message(broke)
    assert m is not None
    assert (m.title, m.level) == ("[prod] freeze window double-11 broken for 1.2.1", "warning")
    assert m.body.splitlines()[:4] == [
        "What: a deploy of 1.2.1 broke the freeze window double-11 (break glass)",
        "Environment: prod",
        "Version: 1.2.1",
        "Why: payment outage fix",
    ]


@pytest.mark.parametrize(
    ("action", "outcome", "kind"),
    [
        ("deploy", "started", "deploy-started"),
        ("deploy", "succeeded", "deploy-succeeded"),
        ("deploy", "rolled_back", "rolled-back"),
        ("deploy", "aborted", "rolled-back"),
        ("deploy", "failed", "deploy-failed"),
        ("rollback", "succeeded", "rolled-back"),
        ("rollback", "error", "deploy-failed"),
        ("analysis", "rollback", "canary-failed"),
        ("analysis", "confirm", "canary-failed"),
        ("approval", "needed", "approval-needed"),
        ("freeze-break", "ok", "freeze-break"),
        ("freeze", "added", None),
        ("deploy", "refused", None),
        ("rollback", "started", None),
        ("analysis", "advance", None),
        ("analysis", "dry-run", None),
        ("step", "error", None),
        ("look", "progress", None),
        ("freeze-break", "refused", None),
        ("notify", "failed", None),
    ],
)
def test_kinds_of_events(action: str, outcome: str, kind: str | None):
    assert kind_of(ev(action, outcome, env="prod")) == kind


def test_given_a_repeat_count_when_the_next_message_goes_then_it_carries_the_count():
    m = Message("canary-failed", "prod", "1.2.0", "t", "What: x")
    assert notify.with_held(m, 3, T0).body == (
        "What: x\nRepeats: 3 more like this since 00:53:20 UTC were not sent"
    )
    assert notify.with_held(m, 0, T0) == m


# --- routing --------------------------------------------------------------------------------


def channel(name: str, *events: str, **kw: Any) -> NotificationConfig:
    more = {"events": list(events)} if events else {}
    return NotificationConfig.model_validate(
        {"name": name, "urls": ["json://127.0.0.1/x"], **more, **kw}
    )


def test_given_channels_by_kind_then_each_event_goes_where_its_kind_is_heard():
    chans = [
        channel("oncall", "canary-failed", "rolled-back"),
        channel("support", "rolled-back"),
        channel("everything"),
    ]
    assert [routes(chans, e) for e in (STARTED, DECISION, ROLLED_BACK)] == [
        ["everything"],
        ["oncall", "everything"],
        ["oncall", "support", "everything"],
    ]
    assert routes(chans, ev("step", "ok", env="prod")) == []


def test_given_a_channel_with_both_or_neither_url_source_then_the_config_is_refused():
    with pytest.raises(ValidationError, match="exactly one of `urls` and `url_secret`"):
        channel("x", url_secret="SLACK_URL")
    with pytest.raises(ValidationError, match="exactly one of `urls` and `url_secret`"):
        NotificationConfig.model_validate({"name": "x"})
    twice = {"name": "ops", "urls": ["json://h/x"]}
    with pytest.raises(ValidationError, match="channel 'ops' is named twice"):
        project({"dev": {"notifications": [twice, twice]}})


# --- repeats and rate -----------------------------------------------------------------------


def test_given_repeats_within_the_interval_then_one_goes_and_the_rest_count_into_the_next():
    seen: dict[str, Seen] = {}
    outcomes = []
    for now in (0.0, 10.0, 20.0, 59.9, 60.0, 70.0, 200.0):
        held, seen = admit(seen, "prod|canary-failed|1.2.0", T0 + now, 60.0)
        outcomes.append(held)
    assert outcomes == [0, None, None, None, 3, None, 1]
    assert seen == {"prod|canary-failed|1.2.0": Seen(T0 + 200, T0 + 260)}


def test_given_other_versions_or_kinds_then_they_are_not_held_back():
    seen: dict[str, Seen] = {}
    got = []
    for key in ("prod|canary-failed|1.2.0", "prod|canary-failed|1.3.0", "prod|rolled-back|1.2.0"):
        held, seen = admit(seen, key, T0, 60.0)
        got.append(held)
    assert got == [0, 0, 0]


def test_given_an_interval_over_with_nothing_held_then_the_entry_is_forgotten():
    _, seen = admit({}, "a", T0, 60.0)
    _, seen = admit(seen, "b", T0 + 61, 60.0)
    assert list(seen) == ["b"]


def test_given_two_commands_when_they_repeat_a_message_then_the_state_file_holds_it(
    tmp_path: Path,
):
    first, second = (notify.GateFile(tmp_path / "gate.json") for _ in range(2))
    assert first.admit("k", T0, 60.0) == (0, None)
    assert second.admit("k", T0 + 1, 60.0) == (None, T0)
    assert first.admit("k", T0 + 61, 60.0) == (1, T0)


# --- secrets never shown ---------------------------------------------------------------------


def test_given_a_reason_naming_a_url_then_its_tokens_are_scrubbed():
    url = "dingtalk://s3cr3tToken@9f8e7d6c5b/?to=13800000000"
    said = "POST https://oapi.dingtalk.com/robot/send?access_token=9f8e7d6c5b failed (s3cr3tToken)"
    assert notify.scrub(said, [url]) == (
        "POST https://oapi.dingtalk.com/robot/send?access_token=*** failed (***)"
    )
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7/#ops"
    assert "TIiajkdn" not in notify.scrub("bad token TIiajkdnlazkcOXrIdevi7", [slack])


def test_given_a_url_secret_then_its_value_gives_the_urls():
    c = NotificationConfig(name="ops", url_secret="OPS_URLS")
    seen: list[tuple[str, UrlOrSecret]] = []

    def url(env: str, cfg: UrlOrSecret) -> str:
        seen.append((env, cfg))
        return "json://127.0.0.1/a  mailto://127.0.0.1?to=a@b.c"

    assert notify.channel_urls("prod", c, url) == [
        "json://127.0.0.1/a",
        "mailto://127.0.0.1?to=a@b.c",
    ]
    assert seen == [("prod", UrlOrSecret(url_secret="OPS_URLS"))]


# --- delivery through Apprise ----------------------------------------------------------------


class Receiver:
    """A JSON webhook on loopback that keeps what it gets, with when it arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str, dict[str, Any]]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["content-length"])
                got.append((time.time(), self.path, json.loads(self.rfile.read(n))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return [g[2] for g in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def test_given_a_json_webhook_on_loopback_then_apprise_posts_title_body_and_type(
    receiver: Receiver,
):
    m = Message("canary-failed", "prod", "1.2.0", "[prod] canary failed", "Why: errors", "failure")
    notify.AppriseNotifier([f"json://127.0.0.1:{receiver.port}/hook"], 2.0, "here").send(m)
    assert [(p, b) for _, p, b in receiver.got] == [
        (
            "/hook",
            {
                "version": "1.0",
                "title": "[prod] canary failed",
                "message": "Why: errors",
                "attachments": [],
                "type": "failure",
            },
        )
    ]


def test_given_a_refused_connection_then_the_send_fails_saying_which_url_and_why():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    n = notify.AppriseNotifier([f"json://127.0.0.1:{port}/x"], 1.0, "environments.prod.x")
    with pytest.raises(notify.DeliveryFailed) as e:
        n.send(Message("test", "prod", None, "t", "b"))
    assert e.value.where == "environments.prod.x"
    assert e.value.message.startswith("URL 1 (JSON, ")
    assert "connection error" in e.value.message.lower()


def test_given_a_url_apprise_does_not_know_then_the_channel_names_only_its_scheme():
    with pytest.raises(ConfigError, match=r"URL 2 \(nosuch://\.\.\.\) is not") as e:
        notify.AppriseNotifier(["json://127.0.0.1/a", "nosuch://secret-token"], 1.0, "w")
    assert "secret-token" not in str(e.value)


class Sent:
    """What Apprise put on the wire, caught at requests' HTTP adapter: the service's
    address is fixed, so nothing else on loopback could receive it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: bytes) -> None:
        self.requests: list[requests.PreparedRequest] = []

        def send(adapter: Any, request: requests.PreparedRequest, **kw: Any) -> Any:
            self.requests.append(request)
            r = requests.Response()
            r.status_code, r._content, r.url = 200, answer, str(request.url)
            r.headers["Content-Type"] = "application/json"
            return r

        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)

    def one(self) -> tuple[str, dict[str, Any]]:
        [r] = self.requests
        assert r.body is not None
        body = r.body if isinstance(r.body, bytes) else str(r.body).encode()
        return str(r.url), json.loads(body)


MSG = Message(
    "rolled-back",
    "prod",
    "1.2.0",
    "[prod] 1.2.0 rolled back automatically; 1.1.0 serves",
    "Why: error rate 31.0%\nDashboard: https://rw.example.com/environments/prod",
    "warning",
)
TEXT = f"{MSG.title}\r\n{MSG.body}"


@pytest.mark.parametrize(
    ("url", "address", "payload"),
    [
        (
            "dingtalk://a1b2c3d4e5f6/",
            "https://oapi.dingtalk.com/robot/send?access_token=a1b2c3d4e5f6",
            {
                "msgtype": "text",
                "at": {"atMobiles": [], "isAtAll": False},
                "text": {"content": TEXT},
            },
        ),
        (
            "wecombot://0a1b2c3d-4e5f",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=0a1b2c3d-4e5f",
            {"msgtype": "text", "text": {"content": TEXT}},
        ),
        (
            "feishu://f0e1d2c3b4a5",
            "https://open.feishu.cn/open-apis/bot/v2/hook/f0e1d2c3b4a5/",
            {"msg_type": "text", "content": {"text": TEXT}},
        ),
        (
            "lark://f0e1d2c3b4a5",
            "https://open.larksuite.com/open-apis/bot/v2/hook/f0e1d2c3b4a5",
            {"msg_type": "text", "content": {"text": f"{MSG.title}\n{MSG.body}"}},
        ),
    ],
)
def test_given_a_chinese_chat_bot_then_the_payload_carries_title_and_body(
    monkeypatch: pytest.MonkeyPatch, url: str, address: str, payload: dict[str, Any]
):
    sent = Sent(monkeypatch, b'{"errcode": 0, "code": 0, "msg": "ok"}')
    notify.AppriseNotifier([url], 2.0, "here").send(MSG)
    assert sent.one() == (address, payload)


def test_given_slack_then_the_webhook_gets_the_title_and_body(monkeypatch: pytest.MonkeyPatch):
    sent = Sent(monkeypatch, b"ok")  # what a Slack webhook answers
    url = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7/#ops"
    notify.AppriseNotifier([url], 2.0, "here").send(MSG)
    address, payload = sent.one()
    assert address == "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7"
    assert payload["channel"] == "#ops"
    [block] = payload["attachments"]
    assert (block["title"], block["text"]) == (MSG.title, MSG.body)


def project(envs: dict[str, Any], **kw: Any) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {"app": "shop", "run": {"command": "serve {port}"}, "environments": envs, **kw}
    )


def test_given_a_channel_that_never_answers_then_events_go_on_and_other_channels_deliver(
    receiver: Receiver, silent: int, tmp_path: Path
):
    cfg = project(
        {
            "prod": {
                "notifications": [
                    {"name": "dead", "urls": [f"json://127.0.0.1:{silent}/"], "timeout_s": 0.5},
                    {"name": "ops", "urls": [f"json://127.0.0.1:{receiver.port}/hook"]},
                ]
            }
        }
    )
    reports: list[Event] = []
    sub = notify.subscriber(cfg, tmp_path, _no_secrets, reports.append, lambda: "alice")
    assert sub is not None
    t0 = time.monotonic()
    for e in (STARTED, DECISION, ROLLED_BACK, DECISION, ROLLED_BACK):
        sub(e)
    emitting = time.monotonic() - t0
    assert emitting < 0.05, f"emitting 5 events took {emitting:.3f} s"
    titles = [b["title"] for b in receiver.wait(3)]
    assert titles == [
        "[prod] deploy of 1.2.0 started",
        "[prod] canary of 1.2.0 failed: rolling back",
        "[prod] 1.2.0 rolled back automatically; 1.1.0 serves",
    ]
    assert notify.drain(5.0) == 0
    outcomes = sorted((r.data["channel"], r.outcome, r.data["kind"]) for r in reports)
    assert outcomes == sorted(
        [(c, "failed", k) for c in ["dead"] for k in ("deploy-started",)]
        + [("dead", "failed", "canary-failed"), ("dead", "failed", "rolled-back")]
        + [(c, "held", k) for c in ("dead", "ops") for k in ("canary-failed", "rolled-back")]
        + [("ops", "sent", k) for k in ("deploy-started", "canary-failed", "rolled-back")]
    )
    failed = next(r for r in reports if r.outcome == "failed")
    assert failed.record is False and failed.reason is not None
    assert failed.reason.startswith("environments.prod.notifications.dead: URL 1 (JSON, 0.5 s)")


def _no_secrets(env: str, cfg: UrlOrSecret) -> str:
    raise AssertionError(f"no secret expected, asked for {cfg.url_secret} in {env}")


def test_given_no_channels_then_there_is_no_subscriber(tmp_path: Path):
    cfg = project({"dev": {}})
    assert notify.subscriber(cfg, tmp_path, _no_secrets, print, lambda: "a") is None


def test_given_a_test_of_every_channel_then_each_says_ok_or_why_not(receiver: Receiver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cfg = project(
        {
            "prod": {
                "notifications": [
                    {"name": "ops", "urls": [f"json://127.0.0.1:{receiver.port}/t"]},
                    {"name": "gone", "urls": [f"json://127.0.0.1:{closed}/t"], "timeout_s": 1},
                ]
            }
        }
    )
    results = notify.try_channels(cfg, "prod", _no_secrets, "alice", None)
    assert [(r.channel, r.ok) for r in results] == [("ops", True), ("gone", False)]
    assert results[1].reason.startswith("URL 1 (JSON, ")
    [body] = receiver.wait(1)
    assert (body["title"], body["message"]) == (
        "[prod] rollwise test message",
        "A test of this channel by alice, sent with `rollwise notify test`.\nChannel: ops",
    )
    assert notify.try_channels(cfg, "prod", _no_secrets, "alice", "ops") == [
        ChannelResult("ops", True)
    ]
    with pytest.raises(ConfigError, match="no notification channel 'nope'") as e:
        notify.try_channels(cfg, "prod", _no_secrets, "alice", "nope")
    assert e.value.hint == "channels here: ops, gone"
