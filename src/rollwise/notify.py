"""Notifications (R12): events of the one stream become messages for people, sent through
Apprise to Slack, DingTalk, WeCom, Feishu/Lark, email or any webhook.

What is sent is decided by pure functions tested by equality: `kind_of` names an event's
kind, `message` writes it (what happened, where, which version, why, who, a link), `admit`
lets one message per environment, kind and version through per `min_interval_s` and counts
the repeats into the next one. Delivery is off the deploy's path: each channel has a
bounded queue and a worker thread that runs while it has messages, each send bounded by the
channel's timeout, so a slow or dead channel never holds up a deploy or a rollback, nor the
other channels. Outcomes are `notify` events (sent, held, dropped, failed), not recorded in
the audit log: a channel's failure is not the deployment's. `drain` waits, bounded, for
what is queued when a command ends."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

from rollwise.audit import Event
from rollwise.config.schema import NotificationConfig, NotifyEvent, ProjectConfig, UrlOrSecret
from rollwise.errors import ConfigError, RollwiseError

__all__ = [
    "ACTION",
    "KINDS",
    "AppriseNotifier",
    "Channel",
    "ChannelResult",
    "DeliveryFailed",
    "Message",
    "Notifications",
    "Notifier",
    "Seen",
    "admit",
    "drain",
    "kind_of",
    "message",
    "routes",
    "scrub",
    "subscriber",
    "try_channels",
]

KINDS: Final = get_args(NotifyEvent)
ACTION: Final = "notify"  # the event a delivery's outcome is reported as
SENT, HELD, DROPPED, FAILED = "sent", "held", "dropped", "failed"
QUEUE: Final = 100  # messages waiting per channel; more are dropped and counted
THREAD: Final = "rollwise-notify:"  # worker threads' name prefix (drain waits for them)
DRAIN_S: Final = 3.0  # what a command waits at its end for queued messages
# Apprise spaces two requests to one service by up to 5.5 s; a rollback's message must
# follow its failure at once. Chat robots take about 20 a minute (DingTalk, WeCom), far more
# than a deploy says once repeats are held back.
SPACING_S: Final = 1.0
GATE_FILE: Final = "notify-gate.json"  # in the state dir: repeats are counted across runs
FREEZE_BREAK: Final = "freeze-break"  # the action of a deploy that broke a freeze window
LEVELS: Final = {
    "deploy-started": "info",
    "deploy-succeeded": "success",
    "canary-failed": "failure",
    "rolled-back": "warning",
    "deploy-failed": "failure",
    "approval-needed": "info",
    "freeze-break": "warning",
    "test": "info",
}


@dataclass(frozen=True)
class Message:
    """One message for people: `title` and `body` as sent; `level` is Apprise's notify type
    (info, success, warning, failure)."""

    kind: str
    env: str
    version: str | None
    title: str
    body: str
    level: str = "info"

    @property
    def key(self) -> str:
        """What repeats are counted by: the same kind for the same environment and version."""
        return f"{self.env}|{self.kind}|{self.version or '-'}"


class Notifier(Protocol):
    """Where messages go. `send` delivers one or raises DeliveryFailed saying why."""

    def send(self, message: Message) -> None: ...


class DeliveryFailed(RollwiseError):
    pass


# --- which events, and what they say (pure) ------------------------------------------------


def kind_of(ev: Event) -> str | None:
    """The notification kind of `ev`, or None when people are not told about it."""
    a, o = ev.action, ev.outcome
    if a == "deploy":
        return {
            "started": "deploy-started",
            "succeeded": "deploy-succeeded",
            "rolled_back": "rolled-back",
            "aborted": "rolled-back",
            "failed": "deploy-failed",
        }.get(o)
    if a == "rollback":
        return {
            "succeeded": "rolled-back",
            "failed": "deploy-failed",
            "error": "deploy-failed",
        }.get(o)
    if a == "analysis" and o in ("rollback", "confirm"):
        return "canary-failed"
    if a == "approval" and o == "needed":
        return "approval-needed"
    if a == FREEZE_BREAK and o == "ok":
        return "freeze-break"
    return None


def message(
    ev: Event, dashboard_url: str | None = None, started: Event | None = None
) -> Message | None:
    """What people are told about `ev`; None when it is not a notification. `started`: the
    `started` event of the same deployment, which knows the release it came from and why it
    was asked for when the event itself does not."""
    kind = kind_of(ev)
    if kind is None or ev.env is None:
        return None
    title, what = _headline(kind, ev, _from_version(ev, started))
    lines = [
        ("What", what),
        ("Environment", ev.env),
        ("Version", _versions(kind, ev, _from_version(ev, started))),
        ("Why", ev.reason or (started.reason if started else None)),
        ("By", ev.actor),
        ("At", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ev.ts))),
        ("Dashboard", _link(dashboard_url, ev)),
    ]
    body = "\n".join(f"{k}: {v}" for k, v in lines if v)
    return Message(kind, ev.env, ev.version, title, body, LEVELS[kind])


def _from_version(ev: Event, started: Event | None) -> str | None:
    for d in (ev.data, started.data if started else {}):
        for k in ("from", "serving"):
            if d.get(k):
                return str(d[k])
    return None


def _headline(kind: str, ev: Event, prior: str | None) -> tuple[str, str]:
    """(title, what happened)."""
    env, v, d = ev.env, ev.version or "?", ev.data
    back = prior or "the previous release"
    if kind == "deploy-started":
        verb = "restart" if d.get("restart") else ev.action
        return f"[{env}] {verb} of {v} started", f"{verb} of {v} started, from {prior or 'nothing'}"
    if kind == "deploy-succeeded":
        return f"[{env}] {v} is live", f"{ev.action} to {v} succeeded"
    if kind == "canary-failed" and ev.outcome == "confirm":
        return (
            f"[{env}] canary of {v} failed: waiting for an answer",
            f"analysis at step {d.get('step')} failed; `rollwise promote` goes on, "
            "`rollwise rollback` goes back (rolled back when nobody answers)",
        )
    if kind == "canary-failed":
        return (
            f"[{env}] canary of {v} failed: rolling back",
            f"analysis at step {d.get('step')} decided to roll back; traffic goes back to {back}",
        )
    if kind == "rolled-back" and ev.action == "rollback":
        return (
            f"[{env}] rolled back to {v}",
            f"rollback from {prior or '?'} to {v} done; {v} serves",
        )
    if kind == "rolled-back":
        how = "aborted" if ev.outcome == "aborted" else "rolled back automatically"
        return f"[{env}] {v} {how}; {back} serves", f"deploy of {v} {how}; {back} serves"
    if kind == "deploy-failed":
        return f"[{env}] {ev.action} to {v} failed", f"{ev.action} to {v} failed"
    if kind == "approval-needed":
        who = d.get("requested_by") or ev.actor
        n, req = d.get("required", 1), d.get("id", "?")
        return (
            f"[{env}] deploy of {v} needs approval",
            f"{who} asks to deploy {v}: {n} approval(s) from someone else "
            f"(`rollwise approval approve {req}`)",
        )
    window = f" {d['window']}" if d.get("window") else ""
    return (
        f"[{env}] freeze window{window} broken for {v}",
        f"a deploy of {v} broke the freeze window{window} (break glass)",
    )


def _versions(kind: str, ev: Event, prior: str | None) -> str | None:
    if ev.version is None:
        return None
    if prior and kind != "approval-needed":
        return f"{ev.version} (from {prior})"
    return ev.version


def _link(dashboard_url: str | None, ev: Event) -> str | None:
    if not dashboard_url:
        return None
    base = dashboard_url.rstrip("/")
    if ev.action == "approval" and ev.data.get("id") is not None:
        return f"{base}/approvals/{ev.data['id']}"
    dep = ev.data.get("deployment")
    return f"{base}/environments/{ev.env}" + (f"/deployments/{dep}" if dep is not None else "")


def with_held(m: Message, held: int, since: float | None) -> Message:
    """`m` saying how many like it were held back since the last one went out."""
    if held <= 0:
        return m
    at = time.strftime("%H:%M:%S UTC", time.gmtime(since)) if since is not None else "then"
    note = f"Repeats: {held} more like this since {at} were not sent"
    return replace(m, body=f"{m.body}\n{note}")


# --- repeats and rate (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """The last message of a key: sent at `sent_at`, none other before `until`; `held`
    repeats since."""

    sent_at: float
    until: float
    held: int = 0


def admit(
    seen: Mapping[str, Seen], key: str, now: float, interval_s: float
) -> tuple[int | None, dict[str, Seen]]:
    """(repeats to count into this message, or None when it is held back; the state after).
    Entries whose interval is over and that hold nothing are forgotten."""
    kept = {k: s for k, s in seen.items() if s.held or now < s.until}
    last = kept.get(key)
    if last is not None and now < last.until:
        return None, {**kept, key: replace(last, held=last.held + 1)}
    return (last.held if last else 0), {**kept, key: Seen(now, now + interval_s)}


class GateFile:
    """`admit` over a JSON file in the state directory, under an exclusive lock, so repeats
    are counted across commands and the team server's jobs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def admit(self, key: str, now: float, interval_s: float) -> tuple[int | None, float | None]:
        """(repeats to count in, or None: held back; when the previous one was sent)."""
        with self._locked():
            seen = self._read()
            prior = seen.get(key)
            held, after = admit(seen, key, now, interval_s)
            self._write(after)
        return held, prior.sent_at if prior else None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Seen]:
        try:
            raw = json.loads(self.path.read_text())
            return {k: Seen(**v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError):  # none yet, or unreadable: start afresh
            return {}

    def _write(self, seen: Mapping[str, Seen]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: vars(s) for k, s in seen.items()}))
        tmp.replace(self.path)


# --- Apprise ---------------------------------------------------------------------------------


class AppriseNotifier:
    """A Notifier over Apprise URLs; every URL gets the message, each call bounded by
    `timeout_s` (connect and read)."""

    def __init__(self, urls: list[str], timeout_s: float, where: str) -> None:
        import apprise

        self.urls, self.where = urls, where
        self.plugins = []
        for i, url in enumerate(urls, 1):
            plugin = apprise.Apprise.instantiate(url)
            if plugin is None:
                raise ConfigError(
                    f"URL {i} ({_scheme(url)}://...) is not an Apprise URL Apprise can use",
                    where=where,
                    hint="see docs/notifications.md for the URL of each service "
                    "(slack://, dingtalk://, wecombot://, feishu://, mailto://, json://)",
                )
            plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout_s
            plugin.request_rate_per_sec = min(plugin.request_rate_per_sec, SPACING_S)
            self.plugins.append(plugin)

    def send(self, message: Message) -> None:
        failed = []
        for i, plugin in enumerate(self.plugins, 1):
            t0 = time.monotonic()
            with _apprise_log() as said:
                try:
                    ok = plugin.notify(body=message.body, title=message.title, **_kw(message))
                except Exception as e:  # a plugin's bug must not end the worker
                    ok, said[:] = False, [*said, f"{type(e).__name__}: {e}"]
            if not ok:
                why = "; ".join(said) or "Apprise gave no reason"
                failed.append(
                    f"URL {i} ({plugin.service_name}, {time.monotonic() - t0:.1f} s): {why}"
                )
        if failed:
            raise DeliveryFailed(scrub("; ".join(failed), self.urls), where=self.where)


def _kw(m: Message) -> dict[str, Any]:
    return {"notify_type": m.level, "body_format": "text"}


def _scheme(url: str) -> str:
    return url.partition("://")[0] if "://" in url else "?"


@contextmanager
def _apprise_log() -> Iterator[list[str]]:
    """Apprise's warnings from this thread while the block runs (the reasons it gives)."""
    said: list[str] = []
    me = threading.get_ident()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == me:
                said.append(record.getMessage())

    handler = Keep(logging.WARNING)
    log = logging.getLogger("apprise")
    log.addHandler(handler)
    try:
        yield said
    finally:
        log.removeHandler(handler)


def scrub(text: str, urls: list[str]) -> str:
    """`text` without any part of `urls` that may be a secret (user, password, a host
    without a dot, which in Apprise URLs is a token, path segments, query values; those of
    four characters or more)."""
    parts: set[str] = set()
    for url in urls:
        u = urlsplit(url)
        parts |= {u.username or "", u.password or "", *u.path.split("/")}
        parts |= {v for _, v in parse_qsl(u.query)}
        parts |= {unquote(p) for p in list(parts)}
        host = u.netloc.rpartition("@")[2].split(":")[0]
        if "." not in host and host != "localhost":  # a token where a host would be
            parts.add(host)
    for p in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        text = text.replace(p, "***")
    return text


# --- delivery --------------------------------------------------------------------------------

Report = Callable[[str, Message, str, str], None]  # (channel, message, outcome, why)


@dataclass
class Channel:
    """One channel of one environment: a bounded queue and a worker thread that runs while
    there are messages, so a slow or dead channel delays only itself."""

    env: str
    config: NotificationConfig
    connect: Callable[[], Notifier]  # the Notifier, built at first use (secrets, URLs)
    gate: GateFile
    report: Report
    clock: Callable[[], float] = time.time
    waiting: queue.Queue[Message] = field(default_factory=lambda: queue.Queue(QUEUE))
    lock: threading.Lock = field(default_factory=threading.Lock)
    worker: threading.Thread | None = None
    notifier: Notifier | None = None

    def offer(self, m: Message) -> None:
        """Queue `m` without waiting; a full queue drops it (reported)."""
        try:
            self.waiting.put_nowait(m)
        except queue.Full:
            self.report(
                self.config.name,
                m,
                DROPPED,
                f"channel {self.config.name}: {QUEUE} messages waiting",
            )
            return
        with self.lock:
            if self.worker is None:
                name = f"{THREAD}{self.env}/{self.config.name}"
                self.worker = threading.Thread(target=self._work, name=name, daemon=True)
                self.worker.start()

    def _work(self) -> None:
        while True:
            with self.lock:  # ends only with the queue empty, under the lock `offer` takes
                try:
                    m = self.waiting.get_nowait()
                except queue.Empty:
                    self.worker = None
                    return
            self._deliver(m)

    def _deliver(self, m: Message) -> None:
        held, since = self.gate.admit(
            f"{self.config.name}|{m.key}", self.clock(), self.config.min_interval_s
        )
        if held is None:
            self.report(
                self.config.name, m, HELD, f"sent less than {self.config.min_interval_s:g} s ago"
            )
            return
        try:
            self.notifier = self.notifier or self.connect()
            self.notifier.send(with_held(m, held, since))
        except RollwiseError as e:
            self.report(self.config.name, m, FAILED, str(e))
        else:
            self.report(self.config.name, m, SENT, "")


class Notifications:
    """The event-bus subscriber: each notifiable event, written once, goes to the channels
    of its environment that hear about its kind."""

    def __init__(self, channels: Mapping[str, list[Channel]], dashboard_url: str | None) -> None:
        self.channels, self.dashboard_url = channels, dashboard_url
        self.started: dict[Any, Event] = {}  # deployment -> its started event, while it runs

    def __call__(self, ev: Event) -> None:
        chans = self.channels.get(ev.env or "", [])
        names = routes([c.config for c in chans], ev)
        dep = ev.data.get("deployment")
        started = self.started.get(dep)
        if ev.action in ("deploy", "rollback") and dep is not None:
            if ev.outcome == "started":
                self.started[dep] = ev
            else:
                self.started.pop(dep, None)
        m = message(ev, self.dashboard_url, started) if names else None
        for c in chans if m else []:
            if c.config.name in names:
                c.offer(m)  # type: ignore[arg-type]


def routes(channels: Sequence[NotificationConfig], ev: Event) -> list[str]:
    """Names of the channels (of `ev`'s environment) that hear about `ev`."""
    kind = kind_of(ev)
    return [c.name for c in channels if kind in c.events] if kind else []


def subscriber(
    config: ProjectConfig,
    state_dir: Path,
    url: Callable[[str, UrlOrSecret], str],
    emit: Callable[[Event], None],
    actor: Callable[[], str],
) -> Notifications | None:
    """The subscriber for `config`'s channels; None when no environment has any. `url`
    resolves a `url_secret` (Context.url); `emit` reports outcomes as `notify` events."""
    if not any(e.notifications for e in config.environments.values()):
        return None
    gate = GateFile(state_dir / GATE_FILE)

    def report(channel: str, m: Message, outcome: str, reason: str) -> None:
        emit(
            Event(
                action=ACTION,
                outcome=outcome,
                actor=actor(),
                env=m.env,
                version=m.version,
                reason=reason or None,
                data={"channel": channel, "kind": m.kind, "title": m.title},
                record=False,
            )
        )

    channels = {
        env: [
            Channel(
                env,
                c,
                _connector(env, c, url),
                gate,
                report,
            )
            for c in cfg.notifications
        ]
        for env, cfg in config.environments.items()
    }
    return Notifications(channels, config.dashboard_url)


def _connector(
    env: str, c: NotificationConfig, url: Callable[[str, UrlOrSecret], str]
) -> Callable[[], Notifier]:
    where = f"environments.{env}.notifications.{c.name}"

    def connect() -> Notifier:
        return AppriseNotifier(channel_urls(env, c, url), c.timeout_s, where)

    return connect


def channel_urls(
    env: str, c: NotificationConfig, url: Callable[[str, UrlOrSecret], str]
) -> list[str]:
    """The channel's URLs: as written, or the whitespace-separated value of its secret."""
    if c.urls:
        return list(c.urls)
    value = url(env, UrlOrSecret(url_secret=c.url_secret))
    if not value.split():
        raise ConfigError(
            f"secret {c.url_secret!r} is empty",
            where=f"environments.{env}.notifications.{c.name}",
            hint=f"rollwise secrets set {c.url_secret} --env {env}",
        )
    return value.split()


def drain(timeout_s: float = DRAIN_S) -> int:
    """Wait up to `timeout_s` for every channel's queued messages; the number of channels
    still busy after it."""
    deadline = time.monotonic() + timeout_s
    busy = [t for t in threading.enumerate() if t.name.startswith(THREAD)]
    for t in busy:
        t.join(max(0.0, deadline - time.monotonic()))
    return sum(t.is_alive() for t in busy)


# --- rollwise notify test ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelResult:
    channel: str
    ok: bool
    reason: str = ""


def try_channels(
    config: ProjectConfig,
    env: str,
    url: Callable[[str, UrlOrSecret], str],
    actor: str,
    only: str | None = None,
) -> list[ChannelResult]:
    """Send a test message to each channel of `env` (or the one named `only`), now, past
    the rate limit; one result per channel."""
    chans = config.environments[env].notifications
    if only is not None and only not in {c.name for c in chans}:
        raise ConfigError(
            f"no notification channel {only!r} in environment {env!r}",
            where=f"environments.{env}.notifications",
            hint="channels here: " + (", ".join(c.name for c in chans) or "none"),
        )
    m = Message(
        "test",
        env,
        None,
        f"[{env}] rollwise test message",
        f"A test of this channel by {actor}, sent with `rollwise notify test`.",
    )
    return [_try(env, c, url, m) for c in chans if only in (None, c.name)]


def _try(
    env: str, c: NotificationConfig, url: Callable[[str, UrlOrSecret], str], m: Message
) -> ChannelResult:
    try:
        _connector(env, c, url)().send(replace(m, body=f"{m.body}\nChannel: {c.name}"))
    except RollwiseError as e:
        return ChannelResult(c.name, False, f"{e.message}; {e.hint}" if e.hint else e.message)
    return ChannelResult(c.name, True)
