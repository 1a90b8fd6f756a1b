"""Notifications delivered for real: a bad canary of the example app under load, rolled back
by the router analysis, told to a JSON webhook and an SMTP server (aiosmtpd) on loopback,
once per kind although the bad release is deployed twice; a channel that never answers
holds up neither the rollback nor the others. Measures the time from the failing decision to
the webhook's message."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller

from rollwise.errors import ExitCode
from rollwise.ports import free_port
from tests.helpers import FAST, incident_of, start_load
from tests.unit.test_notify import Receiver


class Mailbox:
    """An SMTP server on loopback that keeps every mail with when it arrived."""

    def __init__(self) -> None:
        self.mails: list[tuple[float, Any]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.port = self.controller.port

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.mails.append((time.time(), mail))
        return "250 OK"

    def texts(self) -> list[tuple[str, str]]:
        """(subject, plain text) of each mail."""
        out = []
        for _, m in self.mails:
            body = m.get_body(preferencelist=("plain",))
            out.append((str(m["subject"]), body.get_content() if body else ""))
        return out


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.controller.stop()


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


DEAD_TIMEOUT_S = 20.0


def test_given_notifications_when_a_bad_canary_is_rolled_back_twice_then_people_are_told_once(
    project, webhook: Receiver, mailbox: Mailbox, silent: int
):
    # Given: the example app with a webhook for everything, email for failures, and a
    # channel that never answers; a dashboard to link to
    cfg = yaml.safe_load((project.root / "rollwise.yaml").read_text())
    cfg["dashboard_url"] = "https://rollwise.example.com"
    (project.root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    mail = (
        f"mailto://127.0.0.1:{mailbox.port}?mode=insecure&from=rollwise@example.com"
        "&to=oncall@example.com"
    )
    project.configure(
        notifications=[
            {"name": "ops", "urls": [f"json://127.0.0.1:{webhook.port}/rollwise"]},
            {"name": "oncall", "urls": [mail], "events": ["canary-failed", "rolled-back"]},
            {
                "name": "dead",
                "urls": [f"json://127.0.0.1:{silent}/never"],
                "timeout_s": DEAD_TIMEOUT_S,
            },
        ]
    )
    tried = project.cli("notify", "test", "dev", "--channel", "ops", check=True)
    assert "ok" in tried.stdout, tried.stdout
    project.release("1.0.0")
    project.release("1.1.0", faults={"order_error_rate": 0.3})
    project.cli("deploy", "1.0.0", check=True)
    project.configure(strategy={"type": "canary", "steps": [50, 100], "pause_s": 30}, analysis=FAST)

    # When: the bad release goes out under load, is rolled back, and is forced out again
    load = start_load(project, 50)
    failed = project.cli("deploy", "1.1.0")
    why = f"{incident_of(project, '1.1.0')}: config fixed"
    again = project.cli("--progress", "json", "deploy", "1.1.0", "--force", "--reason", why)
    load.stop()

    # Then: both deploys were rolled back, each without waiting for the dead channel
    assert failed.returncode == again.returncode == ExitCode.ERROR, (failed.stderr, again.stderr)
    events = [
        json.loads(x)
        for x in project.cli("audit", "export", check=True).stdout.splitlines()
        if x.startswith("{")
    ]
    decisions = [e for e in events if e["action"] == "analysis" and e["outcome"] == "rollback"]
    backs = [e for e in events if e["action"] == "deploy" and e["outcome"] == "rolled_back"]
    assert len(decisions) == len(backs) == 2, [(e["action"], e["outcome"]) for e in events]
    took = [b["ts"] - d["ts"] for d, b in zip(decisions, backs, strict=True)]
    assert max(took) < DEAD_TIMEOUT_S / 2, took

    # and the webhook got one message per kind, with version, reason and link
    webhook.wait(5)
    got = {b["title"]: (at, b) for at, _, b in webhook.got}
    assert sorted(got) == sorted(
        [
            "[dev] rollwise test message",
            "[dev] deploy of 1.0.0 started",
            "[dev] 1.0.0 is live",
            "[dev] deploy of 1.1.0 started",
            "[dev] canary of 1.1.0 failed: rolling back",
            "[dev] 1.1.0 rolled back automatically; 1.0.0 serves",
        ]
    ), [b["title"] for _, _, b in webhook.got]
    assert len(webhook.got) == len(got)
    at, canary = got["[dev] canary of 1.1.0 failed: rolling back"]
    assert canary["type"] == "failure"
    assert "Version: 1.1.0 (from 1.0.0)" in canary["message"]
    assert f"Why: {decisions[0]['reason']}" in canary["message"]
    assert "error rate" in decisions[0]["reason"]
    dep = decisions[0]["data"]["deployment"]
    assert (
        f"Dashboard: https://rollwise.example.com/environments/dev/deployments/{dep}"
        in canary["message"]
    )

    # and the mailbox got the failure and the rollback, once each
    subjects = sorted(s for s, _ in mailbox.texts())
    assert subjects == [
        "[dev] 1.1.0 rolled back automatically; 1.0.0 serves",
        "[dev] canary of 1.1.0 failed: rolling back",
    ]
    for _, text in mailbox.texts():
        assert "1.1.0" in text and "error rate" in text, text

    # and the second deploy's repeats were held back, not sent
    told = [json.loads(x) for x in again.stderr.splitlines() if x.startswith("{")]
    ops = [
        (e["data"]["kind"], e["outcome"])
        for e in told
        if e.get("action") == "notify" and e["data"]["channel"] == "ops"
    ]
    assert ops == [
        ("deploy-started", "held"),
        ("canary-failed", "held"),
        ("rolled-back", "held"),
    ], again.stderr[-3000:]

    decision_to_webhook = at - decisions[0]["ts"]
    mail_at = min(t for t, m in mailbox.mails if "canary" in str(m["subject"]))
    decision_to_mail = mail_at - decisions[0]["ts"]
    print(
        json.dumps(
            {
                "decision_to_webhook_s": round(decision_to_webhook, 3),
                "decision_to_mail_s": round(decision_to_mail, 3),
                "decision_to_rolled_back_s": [round(t, 3) for t in took],
            }
        )
    )
    assert 0 < decision_to_webhook <= 2.0, decision_to_webhook
