"""Freeze windows (R16, R27, docs/freeze.md): times, in an explicit IANA time zone, when
deploys are refused — a sale such as 11.11 in Asia/Shanghai or Black Friday to Cyber
Monday in America/New_York. A window is a one-off range of dates or a yearly one, whose
ends are a month and day (`11-01`, `12-20` .. `01-05` across the new year) or a weekday
counted in a month (`11/4thu+1`: the day after the fourth Thursday of November).

Everything here is pure: the clock is an argument (`now`, an aware datetime), zones come
from `zoneinfo`. Tests compare results with fixed datetimes.

A window covers [start, end): an end written as a day alone includes that whole day; an end
with a time ends at that minute. A local time the clocks skip (a spring-forward hour) is
read with the offset before the change, one they pass twice (a fall-back hour) is the
first of the two (PEP 495, `fold=0`)."""

from __future__ import annotations

import calendar
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

NOW_ENV = "ROLLWISE_NOW"  # a fixed "now" for tests and drills, read at the CLI/ops edge
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LAST = -1  # `nth` of "the last <weekday> of the month"
FORMS = (
    "`YYYY-MM-DD[ HH:MM]` (once), `MM-DD[ HH:MM]` (every year) or "
    "`MM/<1st..4th|last><mon..sun>[+N|-N][ HH:MM]` (a weekday of a month, N days after)"
)
_TIME = r"(?:[ T](?P<hh>\d{2}):(?P<mm>\d{2}))?"
_ONCE = re.compile(rf"^(?P<y>\d{{4}})-(?P<m>\d{{2}})-(?P<d>\d{{2}}){_TIME}$")
_YEARLY = re.compile(rf"^(?P<m>\d{{2}})-(?P<d>\d{{2}}){_TIME}$")
_NTH = re.compile(
    r"^(?P<m>\d{1,2})/(?:(?P<n>[1-4])(?:st|nd|rd|th)?|(?P<last>last))"
    rf"(?P<wd>{'|'.join(WEEKDAYS)})(?P<off>[+-]\d{{1,3}})?{_TIME}$"
)


@dataclass(frozen=True)
class Once:
    """A date of one year only (`2026-11-01`)."""

    on: date
    at: time | None = None

    def day(self, year: int) -> date:
        return self.on


@dataclass(frozen=True)
class Yearly:
    """A month and day every year (`11-11`); a day the month lacks that year (02-29) is
    its last day (02-28)."""

    month: int
    dom: int
    at: time | None = None

    def day(self, year: int) -> date:
        return date(year, self.month, min(self.dom, calendar.monthrange(year, self.month)[1]))


@dataclass(frozen=True)
class NthWeekday:
    """The `nth` (1-4, or LAST) `weekday` (0 = Monday) of `month`, `offset` days after
    (`11/4thu+1`: the day after Thanksgiving)."""

    month: int
    nth: int
    weekday: int
    offset: int = 0
    at: time | None = None

    def day(self, year: int) -> date:
        days = [
            d
            for d in calendar.Calendar().itermonthdates(year, self.month)
            if d.month == self.month and d.weekday() == self.weekday
        ]
        return days[self.nth - 1 if self.nth != LAST else -1] + timedelta(days=self.offset)


Point = Once | Yearly | NthWeekday


@dataclass(frozen=True)
class Window:
    """A named freeze window of one environment. `source`: where it is kept, `config`
    (rollwise.yaml) or `store` (added with `rollwise freeze add`)."""

    name: str
    zone: str
    start: Point
    end: Point
    start_text: str
    end_text: str
    source: str = "config"

    @property
    def once(self) -> bool:
        return isinstance(self.start, Once)

    def view(self) -> dict[str, str]:
        return {
            "name": self.name,
            "zone": self.zone,
            "start": self.start_text,
            "end": self.end_text,
            "source": self.source,
        }


@dataclass(frozen=True)
class Occurrence:
    """One time a window applies: [start, end) in UTC."""

    window: Window
    start: datetime
    end: datetime

    def covers(self, now: datetime) -> bool:
        return self.start <= now < self.end


# --- reading what people write -------------------------------------------------------------


def parse_point(text: str) -> Point:
    """One end of a window as written in rollwise.yaml or `freeze add`; ValueError says
    which forms there are."""
    s = " ".join(str(text).split()).lower()
    if m := _ONCE.match(s):
        return Once(_date(int(m["y"]), int(m["m"]), int(m["d"]), text), _clock(m, text))
    if m := _YEARLY.match(s):
        _date(2024, int(m["m"]), int(m["d"]), text)  # a leap year: 02-29 is a day
        return Yearly(int(m["m"]), int(m["d"]), _clock(m, text))
    if m := _NTH.match(s):
        month = int(m["m"])
        if not 1 <= month <= 12:
            raise ValueError(f"{text!r}: month {month} is not 1-12")
        nth = LAST if m["last"] else int(m["n"])
        off = int(m["off"] or 0)
        return NthWeekday(month, nth, WEEKDAYS.index(m["wd"]), off, _clock(m, text))
    raise ValueError(f"{text!r} is not a date this understands; write {FORMS}")


def _date(y: int, m: int, d: int, text: str) -> date:
    try:
        return date(y, m, d)
    except ValueError as e:
        raise ValueError(f"{text!r}: no such day ({e})") from None


def _clock(m: re.Match[str], text: str) -> time | None:
    if m["hh"] is None:
        return None
    hh, mm = int(m["hh"]), int(m["mm"])
    if hh > 23 or mm > 59:
        raise ValueError(f"{text!r}: {m['hh']}:{m['mm']} is not a time of day (00:00-23:59)")
    return time(hh, mm)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError names close ones."""
    try:
        if name.strip() != name or not name or name.startswith(("/", ".")):
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.8)
        maybe = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(
            f"unknown time zone {name!r}{maybe} (an IANA name such as Asia/Shanghai, "
            "America/New_York, Europe/Berlin or UTC)"
        ) from None


def window(name: str, zone_name: str, start: str, end: str, source: str = "config") -> Window:
    """A checked window; ValueError says what is wrong with it."""
    zone(zone_name)
    first, last = parse_point(start), parse_point(end)
    if isinstance(first, Once) != isinstance(last, Once):
        raise ValueError(
            f"window {name!r}: start {start!r} and end {end!r} must both be dates with a "
            "year (once) or both without one (every year)"
        )
    w = Window(name, zone_name, first, last, str(start), str(end), source)
    if w.once and _local_end(last, 0) <= _local_start(first, 0):
        raise ValueError(f"window {name!r}: end {end!r} is not after start {start!r}")
    return w


# --- when windows apply --------------------------------------------------------------------


def _local_start(p: Point, year: int) -> datetime:
    return datetime.combine(p.day(year), p.at or time(0))


def _local_end(p: Point, year: int) -> datetime:
    """A day alone ends when the next one begins."""
    if p.at is None:
        return datetime.combine(p.day(year) + timedelta(days=1), time(0))
    return datetime.combine(p.day(year), p.at)


def _utc(local: datetime, z: ZoneInfo) -> datetime:
    return local.replace(tzinfo=z).astimezone(UTC)


def occurrence(w: Window, year: int) -> Occurrence:
    """The occurrence of `w` that starts in `year` (local to its zone); an end that comes
    before its start that year (12-20 .. 01-05) is the next year's."""
    z = zone(w.zone)
    start = _local_start(w.start, year)
    end = _local_end(w.end, year)
    if end <= start:
        end = _local_end(w.end, year + 1)
    return Occurrence(w, _utc(start, z), _utc(end, z))


def occurrences(w: Window, now: datetime) -> list[Occurrence]:
    """The occurrences of `w` that may hold `now` or be the next after it, by start."""
    if w.once:
        return [occurrence(w, 0)]
    return [occurrence(w, y) for y in (now.year - 1, now.year, now.year + 1)]


def active(windows: Iterable[Window], now: datetime) -> Occurrence | None:
    """The occurrence holding `now` (aware); of several, the one that ends last."""
    held = [o for w in windows for o in occurrences(w, now) if o.covers(now)]
    return max(held, key=lambda o: o.end, default=None)


def current_or_next(w: Window, now: datetime) -> Occurrence | None:
    """The occurrence of `w` holding `now`, else the next one to start; None when a
    one-off window is over."""
    return next((o for o in occurrences(w, now) if now < o.end), None)


def upcoming(
    windows: Iterable[Window], now: datetime, within: timedelta | None = None
) -> list[Occurrence]:
    """Each window's current or next occurrence (starting within `within`, if given), by
    start."""
    found = [o for w in windows if (o := current_or_next(w, now)) is not None]
    if within is not None:
        found = [o for o in found if o.start < now + within]
    return sorted(found, key=lambda o: (o.start, o.window.name))


# --- saying it -----------------------------------------------------------------------------


def shown(at: datetime, z: tzinfo) -> str:
    """`2026-11-13 00:00 CST (Asia/Shanghai)`."""
    local = at.astimezone(z)
    key = getattr(z, "key", None)
    return local.strftime("%Y-%m-%d %H:%M %Z") + (f" ({key})" if key else "")


def shown_span(o: Occurrence, z: tzinfo) -> str:
    """`2026-11-01 00:00 CST .. 2026-11-13 00:00 CST (Asia/Shanghai)`."""
    start, end = o.start.astimezone(z), o.end.astimezone(z)
    key = getattr(z, "key", None)
    fmt = "%Y-%m-%d %H:%M %Z"
    return f"{start.strftime(fmt)} .. {end.strftime(fmt)}" + (f" ({key})" if key else "")


def both(at: datetime, w: Window, here: tzinfo) -> str:
    """`at` in the window's zone and, when it differs, in the user's."""
    theirs, ours = shown(at, zone(w.zone)), shown(at, here)
    return theirs if theirs == ours else f"{theirs}, {ours} here"


def view(o: Occurrence, now: datetime, here: tzinfo) -> dict[str, Any]:
    """An occurrence for `freeze list --json`."""
    return {
        **o.window.view(),
        "active": o.covers(now),
        "start_utc": o.start.isoformat(),
        "end_utc": o.end.isoformat(),
        "start_local": o.start.astimezone(here).isoformat(),
        "end_local": o.end.astimezone(here).isoformat(),
        "start_zone": o.start.astimezone(zone(o.window.zone)).isoformat(),
        "end_zone": o.end.astimezone(zone(o.window.zone)).isoformat(),
    }


def resolve_now(override: str | None, system: datetime) -> datetime:
    """`now`: ROLLWISE_NOW's value (ISO 8601 with an offset, e.g. `2026-11-11T10:00+08:00`)
    when set, else the system clock's `system`; ValueError for a value without an offset."""
    if not override:
        return system
    try:
        at = datetime.fromisoformat(override.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{NOW_ENV}={override!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ValueError(
            f"{NOW_ENV}={override!r} has no offset; write one, e.g. 2026-11-11T10:00+08:00"
        )
    return at.astimezone(UTC)
