"""Freeze windows as pure functions of the clock: when each one applies, in its own zone,
across DST changes, the new year and leap days; what is written wrongly is refused with
what to write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rollwise import freeze as f


def utc(*parts: int) -> datetime:
    year, month, day, hour, minute = (*parts, 0, 0)[:5]
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def span(w: f.Window, year: int) -> tuple[datetime, datetime]:
    o = f.occurrence(w, year)
    return o.start, o.end


DOUBLE_11 = f.window("double-11", "Asia/Shanghai", "11-01", "11-12")
CYBER_WEEKEND = f.window("cyber-weekend", "America/New_York", "11/4thu+1", "11/4thu+4")
HOLIDAYS = f.window("holidays", "Europe/Berlin", "12-20", "01-05")


def test_given_double_11_then_it_covers_whole_days_in_shanghai_time():
    assert span(DOUBLE_11, 2026) == (utc(2026, 10, 31, 16), utc(2026, 11, 12, 16))


@pytest.mark.parametrize(
    ("year", "friday", "tuesday"),
    [(2025, 28, (12, 2)), (2026, 27, (12, 1)), (2027, 26, (11, 30)), (2030, 29, (12, 3))],
)
def test_given_black_friday_to_cyber_monday_then_it_follows_thanksgiving_each_year(
    year, friday, tuesday
):
    # New York is on EST (UTC-5) in late November: local midnight is 05:00 UTC
    assert span(CYBER_WEEKEND, year) == (utc(year, 11, friday, 5), utc(year, *tuesday, 5))


def test_given_an_end_with_a_time_then_the_window_ends_at_that_minute():
    w = f.window("cyber", "America/New_York", "11/4thu+1", "11/4thu+4 23:59")
    assert span(w, 2026) == (utc(2026, 11, 27, 5), utc(2026, 12, 1, 4, 59))


def test_given_the_last_weekday_of_a_month_then_it_is_found():
    w = f.window("memorial-day", "America/Chicago", "05/lastmon-3", "05/lastmon")
    assert span(w, 2026) == (utc(2026, 5, 22, 5), utc(2026, 5, 26, 5))  # CDT, UTC-5


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (utc(2026, 12, 25), utc(2026, 12, 19, 23), utc(2027, 1, 5, 23)),
        (utc(2027, 1, 3), utc(2026, 12, 19, 23), utc(2027, 1, 5, 23)),
        (utc(2026, 12, 19, 23), utc(2026, 12, 19, 23), utc(2027, 1, 5, 23)),
    ],
)
def test_given_a_window_across_the_new_year_then_it_holds_on_both_sides(now, start, end):
    o = f.active([HOLIDAYS], now)
    assert o is not None and (o.window.name, o.start, o.end) == ("holidays", start, end)


def test_given_the_end_of_a_window_across_the_new_year_then_the_next_is_a_year_later():
    assert f.active([HOLIDAYS], utc(2027, 1, 5, 23)) is None
    nxt = f.current_or_next(HOLIDAYS, utc(2027, 1, 5, 23))
    assert nxt is not None and (nxt.start, nxt.end) == (utc(2027, 12, 19, 23), utc(2028, 1, 5, 23))


def test_given_a_window_over_the_autumn_dst_change_then_it_is_an_hour_longer():
    w = f.window("fall", "America/New_York", "11-01", "11-03")  # EDT -> EST on 2026-11-01
    start, end = span(w, 2026)
    assert (start, end, end - start) == (
        utc(2026, 11, 1, 4),
        utc(2026, 11, 4, 5),
        timedelta(days=3, hours=1),
    )


def test_given_a_window_over_the_spring_dst_change_then_it_is_an_hour_shorter():
    w = f.window("spring", "Europe/London", "03-28", "03-29")  # GMT -> BST on 2027-03-28
    start, end = span(w, 2027)
    assert (start, end, end - start) == (
        utc(2027, 3, 28, 0),
        utc(2027, 3, 29, 23),
        timedelta(days=1, hours=23),
    )


def test_given_a_time_the_clocks_skip_then_it_is_read_with_the_offset_before_the_change():
    w = f.window("gap", "America/New_York", "03-08 02:30", "03-08 04:00")
    assert span(w, 2026) == (utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8))


def test_given_a_time_the_clocks_pass_twice_then_it_is_the_first_of_the_two():
    w = f.window("fold", "America/New_York", "11-01 01:30", "11-01 03:00")
    assert span(w, 2026) == (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 8))


@pytest.mark.parametrize(
    ("year", "start", "end"),
    [
        (2028, utc(2028, 2, 29), utc(2028, 3, 1)),  # a leap year: the day itself
        (2027, utc(2027, 2, 28), utc(2027, 3, 1)),  # otherwise February's last day
    ],
)
def test_given_a_leap_day_then_years_without_one_use_the_last_day_of_february(year, start, end):
    assert span(f.window("leap", "UTC", "02-29", "02-29"), year) == (start, end)


def test_given_windows_in_several_zones_then_the_same_wall_time_is_a_different_instant():
    shanghai = f.window("cn-sale", "Asia/Shanghai", "11-11", "11-11")
    new_york = f.window("us-sale", "America/New_York", "11-11", "11-11")
    at = utc(2026, 11, 11, 2)  # 10:00 in Shanghai, 21:00 the day before in New York
    held = f.active([shanghai, new_york], at)
    assert held is not None and held.window.name == "cn-sale"
    later = f.active([shanghai, new_york], utc(2026, 11, 11, 18))  # 02:00 on the 12th there
    assert later is not None and later.window.name == "us-sale"


def test_given_overlapping_windows_then_active_is_the_one_that_ends_last():
    short = f.window("launch-day", "America/Los_Angeles", "11-11", "11-11")
    o = f.active([short, DOUBLE_11], utc(2026, 11, 11, 12))
    assert o is not None and (o.window.name, o.end) == ("double-11", utc(2026, 11, 12, 16))


def test_given_the_edges_of_a_window_then_its_start_is_inside_and_its_end_is_not():
    start, end = span(DOUBLE_11, 2026)
    seen = [f.active([DOUBLE_11], t) is not None for t in (start - timedelta(seconds=1), start)]
    seen += [f.active([DOUBLE_11], t) is not None for t in (end - timedelta(seconds=1), end)]
    assert seen == [False, True, True, False]


def test_given_a_one_off_window_then_it_applies_once_and_is_then_over():
    w = f.window("migration", "Europe/Paris", "2026-12-24 18:00", "2026-12-27")
    assert span(w, 1999) == (utc(2026, 12, 24, 17), utc(2026, 12, 27, 23))
    assert f.active([w], utc(2026, 12, 26)) is not None
    assert f.current_or_next(w, utc(2026, 12, 28)) is None
    assert f.active([w], utc(2027, 12, 26)) is None


def test_given_several_windows_then_upcoming_lists_each_next_occurrence_by_start():
    now = utc(2026, 11, 28)  # inside the cyber weekend, after 11.11
    names = [
        (o.window.name, o.start) for o in f.upcoming([HOLIDAYS, DOUBLE_11, CYBER_WEEKEND], now)
    ]
    assert names == [
        ("cyber-weekend", utc(2026, 11, 27, 5)),
        ("holidays", utc(2026, 12, 19, 23)),
        ("double-11", utc(2027, 10, 31, 16)),
    ]
    soon = f.upcoming([HOLIDAYS, DOUBLE_11, CYBER_WEEKEND], now, within=timedelta(days=30))
    assert [o.window.name for o in soon] == ["cyber-weekend", "holidays"]


def test_given_an_end_then_it_is_shown_in_the_windows_zone_and_the_users():
    end = f.occurrence(DOUBLE_11, 2026).end
    assert f.both(end, DOUBLE_11, ZoneInfo("America/New_York")) == (
        "2026-11-13 00:00 CST (Asia/Shanghai), 2026-11-12 11:00 EST (America/New_York) here"
    )
    assert f.both(end, DOUBLE_11, ZoneInfo("Asia/Shanghai")) == (
        "2026-11-13 00:00 CST (Asia/Shanghai)"
    )


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        ("13-01", "12-02", "no such day"),
        ("02-30", "03-01", "no such day"),
        ("2026-02-29", "2026-03-01", "no such day"),
        ("11/5thu", "11/4thu+4", "is not a date this understands"),
        ("11/4xyz", "11/4thu+4", "is not a date this understands"),
        ("13/4thu", "11/4thu+4", "month 13 is not 1-12"),
        ("11-01 25:00", "11-12", "is not a time of day"),
        ("11.11", "11-12", "MM-DD[ HH:MM]"),
        ("2026-11-01", "11-12", "must both be dates with a year"),
        ("2026-11-12", "2026-11-01", "is not after start"),
    ],
)
def test_given_a_bad_start_or_end_then_the_error_says_what_to_write(start, end, says):
    with pytest.raises(ValueError, match=r".") as e:
        f.window("sale", "UTC", start, end)
    assert says in str(e.value)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Asia/Shangai", "did you mean Asia/Shanghai"),
        ("America/NewYork", "did you mean America/New_York"),
        ("Mars/Olympus", "unknown time zone 'Mars/Olympus' (an IANA name"),
        ("../etc/passwd", "unknown time zone"),
        ("", "unknown time zone"),
    ],
)
def test_given_an_unknown_zone_then_the_error_names_close_ones(name, says):
    with pytest.raises(ValueError, match=r".") as e:
        f.window("sale", name, "11-01", "11-12")
    assert says in str(e.value)


def test_given_rollwise_now_then_it_replaces_the_system_clock_and_needs_an_offset():
    system = utc(2030, 1, 1)
    assert f.resolve_now(None, system) == system
    assert f.resolve_now("2026-11-11T10:00+08:00", system) == utc(2026, 11, 11, 2)
    assert f.resolve_now("2026-11-11T02:00Z", system) == utc(2026, 11, 11, 2)
    with pytest.raises(ValueError, match="has no offset"):
        f.resolve_now("2026-11-11T10:00", system)
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        f.resolve_now("tomorrow", system)
