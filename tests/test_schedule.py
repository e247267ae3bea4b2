"""Schedules and slots: parsing, DST both ways, weekly weekdays, leap days, windows."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.schedule import (
    Schedule,
    default_window_days,
    digest_window,
    latest_slot,
    next_slot,
    parse_schedule,
    slots_between,
)

UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def iso(values: list[dt.datetime]) -> list[str]:
    return [v.strftime("%Y-%m-%d %H:%M") for v in values]


# ---------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    ("text", "kind", "weekdays", "times"),
    [
        ("daily 08:00", "daily", {0, 1, 2, 3, 4, 5, 6}, ["08:00"]),
        ("Daily   8:05", "daily", {0, 1, 2, 3, 4, 5, 6}, ["08:05"]),
        ("weekly mon 08:00", "weekly", {0}, ["08:00"]),
        ("weekly Sunday 23:59", "weekly", {6}, ["23:59"]),
        ("weekdays 07:30", "weekdays", {0, 1, 2, 3, 4}, ["07:30"]),
        ("0 8 * * 1-5", "cron", {0, 1, 2, 3, 4}, ["08:00"]),
        ("0 8 * * 0,7", "cron", {6}, ["08:00"]),
        ("*/30 9-10 * * sat", "cron", {5}, ["09:00", "09:30", "10:00", "10:30"]),
    ],
)
def test_parse_schedule_kinds(text: str, kind: str, weekdays: set[int], times: list[str]) -> None:
    s = parse_schedule(text)
    assert s.kind == kind
    assert s.weekdays == weekdays
    assert [t.strftime("%H:%M") for t in s.times] == times


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty schedule"),
        ("dayly 08:00", 'bad schedule "dayly 08:00": expected "daily HH:MM", "weekly DAY HH:MM"'),
        ("daily 24:00", 'bad time "24:00": expected HH:MM'),
        ("daily 8", 'bad time "8"'),
        ("daily", 'bad schedule "daily": expected "daily HH:MM"'),
        ("weekly 08:00", 'bad schedule "weekly 08:00": expected "weekly DAY HH:MM"'),
        ("weekly mun 08:00", 'bad day "mun": expected mon, tue'),
        ("60 8 * * *", 'bad cron schedule "60 8 * * *": minute "60" is not a number from 0 to 59'),
        ("0 8 * 13 *", 'month "13" is not a number from 1 to 12'),
        ("0 8 * * 8", 'day-of-week "8" is not a number from 0 to 7'),
        ("0 8 5-1 * *", 'day-of-month range "5-1" runs backwards'),
        ("*/0 8 * * *", 'minute step "0" is not a positive number'),
        ("0 9 30 2 *", "that day of the month never occurs"),
    ],
)
def test_parse_schedule_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_schedule(text)
    assert message in str(e.value)


def test_schedule_constructor_parses_and_compares_by_text() -> None:
    assert Schedule("daily 08:00") == parse_schedule("daily   08:00")
    assert Schedule("daily 08:00").kind == "daily"
    with pytest.raises(ValueError):
        Schedule("hourly")


# ---------------------------------------------------------------------------
# timezone tables: (schedule, zone, start, end] -> slots in UTC


@pytest.mark.parametrize(
    ("schedule", "zone", "start", "end", "expected"),
    [
        # Europe/Berlin spring forward 2026-03-29: 02:30 does not exist -> 03:30 CEST
        (
            "daily 02:30",
            "Europe/Berlin",
            "2026-03-28",
            "2026-03-31",
            ["2026-03-28 01:30", "2026-03-29 01:30", "2026-03-30 00:30"],
        ),
        # Europe/Berlin fall back 2026-10-25: 02:30 happens twice -> the first (CEST)
        (
            "daily 02:30",
            "Europe/Berlin",
            "2026-10-24",
            "2026-10-27",
            ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"],
        ),
        # America/New_York spring forward 2026-03-08: 02:30 -> 03:30 EDT
        (
            "daily 02:30",
            "America/New_York",
            "2026-03-07",
            "2026-03-10",
            ["2026-03-07 07:30", "2026-03-08 07:30", "2026-03-09 06:30"],
        ),
        # America/New_York fall back 2026-11-01: 01:30 twice -> the first (EDT)
        (
            "daily 01:30",
            "America/New_York",
            "2026-10-31",
            "2026-11-03",
            ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"],
        ),
        # Australia/Sydney: DST ends 2026-04-05 (02:30 twice), starts 2026-10-04 (02:30 absent)
        (
            "daily 02:30",
            "Australia/Sydney",
            "2026-04-03",
            "2026-04-06",
            ["2026-04-03 15:30", "2026-04-04 15:30", "2026-04-05 16:30"],
        ),
        (
            "daily 02:30",
            "Australia/Sydney",
            "2026-10-02",
            "2026-10-05",
            ["2026-10-02 16:30", "2026-10-03 16:30", "2026-10-04 15:30"],
        ),
        # Asia/Kolkata is +05:30 all year
        (
            "daily 08:00",
            "Asia/Kolkata",
            "2026-07-01",
            "2026-07-03",
            ["2026-07-01 02:30", "2026-07-02 02:30"],
        ),
        # a Monday 08:00 in Tokyo is Sunday 23:00 UTC
        (
            "weekly mon 08:00",
            "Asia/Tokyo",
            "2026-11-01",
            "2026-11-30",
            [
                "2026-11-01 23:00",
                "2026-11-08 23:00",
                "2026-11-15 23:00",
                "2026-11-22 23:00",
                "2026-11-29 23:00",
            ],
        ),
        # cron weekdays in New York across the spring-forward week end
        (
            "0 9 * * mon-fri",
            "America/New_York",
            "2026-03-06",
            "2026-03-10",
            ["2026-03-06 14:00", "2026-03-09 13:00"],
        ),
        # leap day: only 2028 and 2032 in this range
        ("0 9 29 2 *", "UTC", "2026-01-01", "2033-01-01", ["2028-02-29 09:00", "2032-02-29 09:00"]),
        # midnight in Berlin is the previous UTC day
        (
            "daily 00:00",
            "Europe/Berlin",
            "2026-06-01",
            "2026-06-03",
            ["2026-06-01 22:00", "2026-06-02 22:00"],
        ),
        # cron with two wall times that fall on one instant on the spring-forward day
        (
            "30 2,3 * * *",
            "Europe/Berlin",
            "2026-03-28 12:00",
            "2026-03-29 12:00",
            ["2026-03-29 01:30"],
        ),
    ],
)
def test_slots_between_table(
    schedule: str, zone: str, start: str, end: str, expected: list[str]
) -> None:
    slots = slots_between(parse_schedule(schedule), ZoneInfo(zone), utc(start), utc(end))
    assert iso(slots) == expected
    assert all(s.tzinfo is UTC for s in slots)


def test_slots_between_is_half_open() -> None:
    s, tz = parse_schedule("daily 08:00"), ZoneInfo("UTC")
    assert iso(slots_between(s, tz, utc("2026-01-01 08:00"), utc("2026-01-02 08:00"))) == [
        "2026-01-02 08:00"
    ]


@pytest.mark.parametrize(
    ("schedule", "zone"),
    [
        ("daily 02:30", "Europe/Berlin"),
        ("daily 01:30", "America/New_York"),
        ("daily 02:30", "Australia/Sydney"),
        ("daily 00:00", "America/Santiago"),  # DST changes at midnight there
        ("daily 08:00", "Asia/Kolkata"),
    ],
)
def test_a_year_of_daily_slots_is_one_per_local_day(schedule: str, zone: str) -> None:
    tz = ZoneInfo(zone)
    slots = slots_between(
        parse_schedule(schedule), tz, utc("2025-12-31 12:00"), utc("2026-12-31 12:00")
    )
    local_days = [s.astimezone(tz).date() for s in slots]
    assert len(slots) == 365
    assert len(set(local_days)) == 365
    assert slots == sorted(slots)


def test_weekdays_skip_weekends_in_the_local_zone() -> None:
    tz = ZoneInfo("Pacific/Auckland")
    slots = slots_between(
        parse_schedule("weekdays 07:00"), tz, utc("2026-11-01"), utc("2026-11-29")
    )
    assert [s.astimezone(tz).strftime("%a") for s in slots] == [
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
    ] * 4


@pytest.mark.parametrize(
    "expression",
    [
        "0 8 * * *",
        "15 6,18 * * mon-fri",
        "0 9 1,15 * *",
        "30 7 * jan-mar sun",
        "*/20 9 * * *",
        "0 0 29 2 *",
        "5 4 * * sat",
    ],
)
def test_cron_agrees_with_apscheduler_in_utc(expression: str) -> None:
    """APScheduler as the reference where it is right (UTC, day names, one day field)."""
    start, end = utc("2027-12-25"), utc("2028-03-10")
    trigger = CronTrigger.from_crontab(expression, timezone="UTC")
    expected: list[dt.datetime] = []
    fire = trigger.get_next_fire_time(None, start + dt.timedelta(seconds=1))
    while fire is not None and fire <= end:
        expected.append(fire.astimezone(UTC))
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(seconds=1))
    assert expected
    assert slots_between(parse_schedule(expression), ZoneInfo("UTC"), start, end) == expected


# ---------------------------------------------------------------------------
# latest / next


def test_latest_and_next_examples() -> None:
    s, tz = parse_schedule("weekly mon 08:00"), ZoneInfo("Asia/Tokyo")
    now = utc("2026-11-25 12:00")  # a Wednesday
    assert latest_slot(s, tz, now) == utc("2026-11-22 23:00")
    assert next_slot(s, tz, now) == utc("2026-11-29 23:00")
    assert latest_slot(s, tz, utc("2026-11-22 23:00")) == utc("2026-11-22 23:00")  # <= now
    assert next_slot(s, tz, utc("2026-11-22 23:00")) == utc("2026-11-29 23:00")  # > after
    leap = parse_schedule("0 9 29 2 *")
    assert latest_slot(leap, ZoneInfo("UTC"), utc("2026-11-22")) == utc("2024-02-29 09:00")
    assert next_slot(leap, ZoneInfo("UTC"), utc("2097-01-01")) == utc("2104-02-29 09:00")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_slot(parse_schedule("daily 08:00"), ZoneInfo("UTC"), dt.datetime(2026, 1, 1))


SCHEDULES = [
    "daily 02:30",
    "daily 00:00",
    "weekly sun 01:30",
    "weekdays 23:45",
    "*/45 1-3 * * *",
    "0 9 29 2 *",
    "0 8 1 * *",
]
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Santiago",
]


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    zone=st.sampled_from(ZONES),
    now=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
)
def test_latest_and_next_are_consistent(schedule: str, zone: str, now: dt.datetime) -> None:
    s, tz = parse_schedule(schedule), ZoneInfo(zone)
    latest = latest_slot(s, tz, now)
    upcoming = next_slot(s, tz, now)
    assert latest is not None
    assert latest <= now < next_slot(s, tz, latest)
    assert next_slot(s, tz, latest) == upcoming  # nothing in between
    assert latest_slot(s, tz, upcoming) == upcoming
    assert slots_between(s, tz, latest, upcoming) == [upcoming]


# ---------------------------------------------------------------------------
# windows


@pytest.mark.parametrize(
    ("schedule", "days"),
    [
        ("daily 08:00", 2),
        ("weekly mon 08:00", 8),
        ("weekdays 08:00", 4),
        ("0 8,20 * * *", 2),
        ("0 9 1 * *", 32),
        ("0 9 * * mon,thu", 5),
    ],
)
def test_default_window_days(schedule: str, days: int) -> None:
    assert default_window_days(parse_schedule(schedule)) == days


def test_digest_window_uses_the_slot_local_date() -> None:
    s, tz = parse_schedule("weekly mon 08:00"), ZoneInfo("Asia/Tokyo")
    slot = utc("2026-11-22 23:00")  # Monday 2026-11-23 in Tokyo
    assert digest_window(s, tz, slot, None) == (dt.date(2026, 11, 16), dt.date(2026, 11, 23))
    assert digest_window(s, tz, slot, 1) == (dt.date(2026, 11, 23), dt.date(2026, 11, 23))
    daily, berlin = parse_schedule("daily 00:00"), ZoneInfo("Europe/Berlin")
    midnight = utc("2026-06-01 22:00")  # 2026-06-02 00:00 in Berlin
    assert digest_window(daily, berlin, midnight, None) == (
        dt.date(2026, 6, 1),
        dt.date(2026, 6, 2),
    )
    with pytest.raises(ValueError, match="at least 1"):
        digest_window(daily, berlin, midnight, 0)


# ---------------------------------------------------------------------------
# "every N": epoch-aligned intervals, the same instants in every zone


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_every_interval_slots_are_epoch_multiples_in_any_zone(zone: str) -> None:
    every = parse_schedule("every 5s")
    tz = ZoneInfo(zone)
    now = dt.datetime(2026, 11, 22, 19, 0, 3, tzinfo=dt.UTC)
    assert latest_slot(every, tz, now) == dt.datetime(2026, 11, 22, 19, 0, 0, tzinfo=dt.UTC)
    assert next_slot(every, tz, now) == dt.datetime(2026, 11, 22, 19, 0, 5, tzinfo=dt.UTC)
    on_slot = dt.datetime(2026, 11, 22, 19, 0, 5, tzinfo=dt.UTC)
    assert latest_slot(every, tz, on_slot) == on_slot
    assert next_slot(every, tz, on_slot) == on_slot + dt.timedelta(seconds=5)
    assert slots_between(every, tz, now, now + dt.timedelta(seconds=12)) == [
        dt.datetime(2026, 11, 22, 19, 0, s, tzinfo=dt.UTC) for s in (5, 10, 15)
    ]
    assert slots_between(every, tz, now, now + dt.timedelta(seconds=1)) == []


def test_every_interval_window_and_spelling() -> None:
    assert default_window_days(parse_schedule("every 6h")) == 2
    assert default_window_days(parse_schedule("every 48h")) == 3
    assert parse_schedule("EVERY 15M").interval == dt.timedelta(minutes=15)
    for bad in ("every", "every 0s", "every 5x", "every 5 s", "every -5s"):
        with pytest.raises(ValueError, match="every N"):
            parse_schedule(bad)


@pytest.mark.parametrize(
    ("schedule", "after", "expected_next", "expected_latest"),
    [
        # 1 March that is a Sunday (Vixie: a `*`-led day-of-week ANDs): 2026, then 2037
        ("0 8 1 3 */7", dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
         dt.datetime(2037, 3, 1, 8, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)),
        # 29 February that is a Sunday: 2004, 2032, then 2060 (28 years apart)
        ("0 8 29 2 */7", dt.datetime(2033, 1, 1, tzinfo=dt.UTC),
         dt.datetime(2060, 2, 29, 8, tzinfo=dt.UTC), dt.datetime(2032, 2, 29, 8, tzinfo=dt.UTC)),
        # across 2100, which has no 29 February: 2088, then 2128 (40 years, the longest)
        ("0 8 29 2 */7", dt.datetime(2089, 1, 1, tzinfo=dt.UTC),
         dt.datetime(2128, 2, 29, 8, tzinfo=dt.UTC), dt.datetime(2088, 2, 29, 8, tzinfo=dt.UTC)),
    ],
)  # fmt: skip
def test_sparse_cron_schedules_are_searched_over_the_whole_cycle(
    schedule: str, after: dt.datetime, expected_next: dt.datetime, expected_latest: dt.datetime
) -> None:
    parsed = parse_schedule(schedule)
    utc = ZoneInfo("UTC")
    assert next_slot(parsed, utc, after) == expected_next
    assert latest_slot(parsed, utc, after) == expected_latest
    assert latest_slot(parsed, utc, expected_next) == expected_next


def test_every_calendar_date_meets_every_weekday_within_the_cycle() -> None:
    """Why refusing impossible days of the month is enough for the searches to always find
    a slot: within 400 years every date of the calendar falls on every weekday."""
    weekdays: dict[tuple[int, int], set[int]] = {}
    start = dt.date(2000, 1, 1)
    for n in range(146097):
        day = start + dt.timedelta(days=n)
        weekdays.setdefault((day.month, day.day), set()).add(day.weekday())
    assert len(weekdays) == 366
    assert all(len(days) == 7 for days in weekdays.values())
