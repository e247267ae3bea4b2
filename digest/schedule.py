"""Subscriber schedules and their slots. Pure: `now` is always passed in.

Owns: the schedule syntax (`parse_schedule`) and the arithmetic over it: which
instants are slots (`slots_between`, `latest_slot`, `next_slot`) and which listing
days a digest covers (`digest_window`, `default_window_days`). Does not own: the
daemon's timers (daemon.py asks `next_slot` and sets a timer), the config file
(config.py wraps the ValueError raised here into a ConfigError with a line number).

Syntax (keywords are case-insensitive):

- ``daily HH:MM``
- ``weekly DAY HH:MM`` with DAY in mon..sun or monday..sunday
- ``weekdays HH:MM`` (Monday to Friday)
- ``every N{s,m,h}`` (e.g. ``every 6h``): instants that are multiples of the interval
  since the Unix epoch, the same in every time zone; short ones make tests and soaks
  drive the daemon in seconds
- a 5-field cron expression ``minute hour day-of-month month day-of-week``:
  ``*``, ``a-b``, ``a,b``, ``*/n``, ``a-b/n``, month names jan..dec, day names
  sun..sat, day-of-week 0 or 7 = Sunday. As in Vixie cron, when both
  day-of-month and day-of-week are restricted (neither starts with ``*``), a day
  matches if EITHER matches.

Slots are wall-clock times in the subscriber's zone. Across DST:

- a wall time that does not exist (spring forward, e.g. 02:30 on 2026-03-29 in
  Europe/Berlin) still happens, shifted forward by the gap like the wall clock
  (03:30 local), which is what `fold=0` gives with zoneinfo;
- a wall time that happens twice (fall back, e.g. 01:30 on 2026-11-01 in
  America/New_York) happens once, at its first occurrence (`fold=0`);
- two wall times that land on the same instant (a cron with 02:30 and 03:30 on
  the spring-forward day) are one slot.

So a daily schedule gives exactly one slot per local day, always.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from digest.config import Subscriber

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
_FULL_DAY_NAMES = tuple(calendar.day_name[i].lower() for i in range(7))
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering 0..6
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_EVERY_RE = re.compile(r"^(\d{1,6})([smhSMH])$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The day pattern of every schedule repeats with the 400-year Gregorian cycle (146,097
# days, a whole number of weeks), so a schedule that has a slot at all has one within
# that many days of any date: `0 8 1 3 */7` (1 March on a Sunday) waits 11 years at
# times, `0 8 29 2 */7` 28. Every date of the calendar falls on every weekday within
# the cycle, so refusing a day of the month that no chosen month has (`_parse_cron`)
# is enough for the searches below to always find a slot.
_CYCLE_DAYS = 146097
_SEARCH_DAYS = _CYCLE_DAYS + 2


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule. ``Schedule("daily 08:00")`` parses (and validates) its text.

    Equality and hashing go by the text as written; the parsed fields below are
    derived from it.
    """

    text: str  # as written in the config: "daily 08:00", "weekly mon 08:00", "0 8 * * 1-5"
    kind: str = field(init=False, compare=False)  # daily | weekly | weekdays | cron | every
    interval: dt.timedelta | None = field(init=False, compare=False, repr=False)  # every
    minutes: frozenset[int] = field(init=False, compare=False, repr=False)
    hours: frozenset[int] = field(init=False, compare=False, repr=False)
    days: frozenset[int] = field(init=False, compare=False, repr=False)  # of the month, 1..31
    months: frozenset[int] = field(init=False, compare=False, repr=False)  # 1..12
    weekdays: frozenset[int] = field(init=False, compare=False, repr=False)  # 0 = Monday
    days_star: bool = field(init=False, compare=False, repr=False)  # day-of-month unrestricted
    weekdays_star: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kind, fields = _parse(self.text)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "interval", fields.pop("interval", None))
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def times(self) -> tuple[dt.time, ...]:
        """The wall-clock times of day, sorted."""
        return tuple(dt.time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes))

    def matches_day(self, day: dt.date) -> bool:
        """Whether `day` (a local calendar date) has slots."""
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = day.weekday() in self.weekdays
        if self.days_star or self.weekdays_star:
            return in_days and in_weekdays
        return in_days or in_weekdays  # Vixie cron: both restricted -> either


@functools.lru_cache(maxsize=4096)  # a big config repeats a few schedules many times
def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raise ValueError with a message saying what is wrong."""
    return Schedule(" ".join(text.split()))


def slots_between(
    schedule: Schedule, tz: ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[dt.datetime]:
    """The slots in (start, end], oldest first, as aware UTC instants."""
    _check_aware(start, end)
    if schedule.interval is not None:
        first_slot = next_slot(schedule, tz, start)
        count = max(0, (end - first_slot) // schedule.interval + 1)
        return [first_slot + n * schedule.interval for n in range(count)]
    first = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date() + dt.timedelta(days=1)
    out: list[dt.datetime] = []
    day = first
    while day <= last:
        out.extend(s for s in _day_slots(schedule, tz, day) if start < s <= end)
        day += dt.timedelta(days=1)
    return out


def latest_slot(schedule: Schedule, tz: ZoneInfo, now: dt.datetime) -> dt.datetime | None:
    """The latest slot at or before `now` (UTC), or None if there is none (year 1)."""
    _check_aware(now)
    if schedule.interval is not None:
        return _EPOCH + ((now - _EPOCH) // schedule.interval) * schedule.interval
    for day in _days(now.astimezone(tz).date() + dt.timedelta(days=1), step=-1):
        earlier = [s for s in _day_slots(schedule, tz, day) if s <= now]
        if earlier:
            return earlier[-1]
    return None


def next_slot(schedule: Schedule, tz: ZoneInfo, after: dt.datetime) -> dt.datetime:
    """The first slot strictly after `after` (UTC)."""
    _check_aware(after)
    if schedule.interval is not None:
        return _EPOCH + ((after - _EPOCH) // schedule.interval + 1) * schedule.interval
    for day in _days(after.astimezone(tz).date() - dt.timedelta(days=1), step=1):
        later = [s for s in _day_slots(schedule, tz, day) if s > after]
        if later:
            return later[0]
    raise ValueError(f"schedule {schedule.text!r} has no slot after {after.isoformat()}")


@functools.lru_cache(maxsize=1024)
def due_slot(
    schedule: Schedule,
    tz: ZoneInfo,
    now: dt.datetime,
    *,
    last_slot: dt.datetime | None,
    not_before: dt.datetime | None = None,
    catch_up: dt.timedelta | None = None,
) -> dt.datetime | None:
    """The slot a digest is due for now, or None. Pure.

    The latest slot at or before `now`, if it is later than `last_slot` (the last slot
    already handled) and than `not_before` (the daemon's first sight of a subscriber), and,
    with `catch_up`, no older than that. Older missed slots are not sent one by one: the
    next digest's window reaches back to `last_slot` instead (see `digest_days`).
    """
    slot = latest_slot(schedule, tz, now)
    if slot is None:
        return None
    if last_slot is not None and slot <= last_slot:
        return None
    if not_before is not None and slot < not_before:
        return None
    if catch_up is not None and now - slot > catch_up:
        return None
    return slot


def upcoming_slot(
    subscriber: Subscriber, now: dt.datetime, last_slot: dt.datetime | None
) -> tuple[dt.datetime, bool]:
    """The subscriber's next digest, the one notion `status`, `match` and `send` share:
    (the due slot, True) if one is waiting, else (the next slot, False). Pure."""
    tz = ZoneInfo(subscriber.timezone)
    due = due_slot(subscriber.schedule, tz, now, last_slot=last_slot)
    if due is not None:
        return due, True
    return next_slot(subscriber.schedule, tz, now), False


def default_window_days(schedule: Schedule) -> int:
    """How many listing days a digest covers when the subscriber does not say.

    The longest gap between two consecutive slots, in days, rounded up, plus one
    (the slot's own day): 2 for a daily schedule, 8 for a weekly one, 4 for
    weekdays (Friday to Monday). Computed on the wall clock, ignoring DST, over a
    whole 400-year Gregorian cycle when the schedule depends on the calendar.
    """
    if schedule.interval is not None:
        return math.ceil(schedule.interval / dt.timedelta(days=1)) + 1
    matching, span = _matching_days_in_cycle(schedule)
    times = schedule.times
    first, last = times[0], times[-1]
    wrapped = [*matching[1:], matching[0] + dt.timedelta(days=span)]  # the cycle repeats
    day_gap = max(b - a for a, b in zip(matching, wrapped, strict=True))
    # the gap from the last slot of a day to the first slot of the next matching day
    wall = day_gap + (
        dt.datetime.combine(dt.date.min, first) - dt.datetime.combine(dt.date.min, last)
    )
    longest = max(wall, _longest_gap_within_day(times))
    return math.ceil(longest / dt.timedelta(days=1)) + 1


def digest_window(
    schedule: Schedule, tz: ZoneInfo, slot: dt.datetime, window_days: int | None
) -> tuple[dt.date, dt.date]:
    """The listing days (first, last), inclusive, that the digest at `slot` covers.

    The `window_days` local calendar days ending on the slot's local date;
    None means `default_window_days(schedule)`.
    """
    _check_aware(slot)
    days = default_window_days(schedule) if window_days is None else window_days
    if days < 1:
        raise ValueError(f"window_days must be at least 1, not {days}")
    last = slot.astimezone(tz).date()
    return last - dt.timedelta(days=days - 1), last


# ---------------------------------------------------------------------------
# slot arithmetic


def _day_slots(schedule: Schedule, tz: ZoneInfo, day: dt.date) -> list[dt.datetime]:
    """The slots on one local date, as sorted, distinct UTC instants."""
    if not schedule.matches_day(day):
        return []
    instants = {
        dt.datetime.combine(day, t, tzinfo=tz).astimezone(dt.UTC)  # fold=0: see module doc
        for t in schedule.times
    }
    return sorted(instants)


def _days(start: dt.date, step: int) -> Iterator[dt.date]:
    """Up to _SEARCH_DAYS dates from `start`, forward (step 1) or backward (-1)."""
    day = start
    delta = dt.timedelta(days=step)
    for _ in range(_SEARCH_DAYS):
        yield day
        try:
            day += delta
        except OverflowError:
            return


def _check_aware(*values: dt.datetime) -> None:
    for value in values:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"expected an aware datetime, got naive {value.isoformat()}")


def _matching_days_in_cycle(schedule: Schedule) -> tuple[list[dt.date], int]:
    """The matching days over one period of the schedule's day pattern, and the period."""
    if schedule.days_star and schedule.weekdays_star and len(schedule.months) == 12:
        start, span = dt.date(2000, 1, 3), 1  # every day
    elif len(schedule.months) == 12 and schedule.days_star:
        start, span = dt.date(2000, 1, 3), 7  # a weekly pattern
    else:
        start, span = dt.date(2000, 1, 1), _CYCLE_DAYS  # leap days and weekdays repeat
    days = [d for i in range(span) if schedule.matches_day(d := start + dt.timedelta(i))]
    return days, span


def _longest_gap_within_day(times: tuple[dt.time, ...]) -> dt.timedelta:
    stamps = [dt.datetime.combine(dt.date.min, t) for t in times]
    return max((b - a for a, b in itertools.pairwise(stamps)), default=dt.timedelta(0))


# ---------------------------------------------------------------------------
# parsing


def _parse(text: str) -> tuple[str, dict[str, object]]:
    words = text.split()
    if not words:
        raise ValueError('empty schedule; expected e.g. "daily 08:00" or "weekly mon 08:00"')
    head = words[0].lower()
    every_day = frozenset(range(7))
    if head == "every":
        return "every", _parse_every(text, words)
    if head in ("daily", "weekdays") and len(words) == 2:
        hour, minute = _parse_time(words[1])
        weekdays = every_day if head == "daily" else frozenset(range(5))
        return head, _fields({minute}, {hour}, weekdays=weekdays, weekdays_star=head == "daily")
    if head == "weekly" and len(words) == 3:
        day = _parse_day_name(words[1])
        hour, minute = _parse_time(words[2])
        return "weekly", _fields({minute}, {hour}, weekdays=frozenset({day}), weekdays_star=False)
    if head in ("daily", "weekdays", "weekly"):
        shape = "weekly DAY HH:MM" if head == "weekly" else f"{head} HH:MM"
        raise ValueError(f'bad schedule "{text}": expected "{shape}"')
    if len(words) != 5:
        raise ValueError(
            f'bad schedule "{text}": expected "daily HH:MM", "weekly DAY HH:MM", '
            '"weekdays HH:MM" or a 5-field cron expression "M H DOM MON DOW"'
        )
    return "cron", _parse_cron(text, words)


def _fields(
    minutes: set[int], hours: set[int], *, weekdays: frozenset[int], weekdays_star: bool
) -> dict[str, object]:
    return {
        "minutes": frozenset(minutes),
        "hours": frozenset(hours),
        "days": frozenset(range(1, 32)),
        "months": frozenset(range(1, 13)),
        "weekdays": weekdays,
        "days_star": True,
        "weekdays_star": weekdays_star,
    }


def _parse_every(text: str, words: list[str]) -> dict[str, object]:
    m = _EVERY_RE.match(words[1]) if len(words) == 2 else None
    if not m or int(m.group(1)) == 0:
        raise ValueError(f'bad schedule "{text}": expected "every N" with N like 30s, 15m or 6h')
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2).lower()]
    fields = _fields(set(), set(), weekdays=frozenset(range(7)), weekdays_star=True)
    return fields | {"interval": dt.timedelta(seconds=seconds)}


def _parse_time(word: str) -> tuple[int, int]:
    m = _TIME_RE.match(word)
    if not m:
        raise ValueError(f'bad time "{word}": expected HH:MM from 00:00 to 23:59')
    return int(m.group(1)), int(m.group(2))


def _parse_day_name(word: str) -> int:
    name = word.lower()
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    if name in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(name)
    raise ValueError(f'bad day "{word}": expected mon, tue, wed, thu, fri, sat or sun')


def _parse_cron(text: str, words: list[str]) -> dict[str, object]:
    minute, hour, dom, month, dow = words
    try:
        minutes = _cron_field(minute, 0, 59, "minute")
        hours = _cron_field(hour, 0, 23, "hour")
        days = _cron_field(dom, 1, 31, "day-of-month")
        months = _cron_field(month, 1, 12, "month", _MONTH_NAMES)
        cron_dows = _cron_field(dow, 0, 7, "day-of-week", _CRON_DOW_NAMES)
    except ValueError as e:
        raise ValueError(f'bad cron schedule "{text}": {e}') from None
    fields: dict[str, object] = {
        "minutes": minutes,
        "hours": hours,
        "days": days,
        "months": months,
        "weekdays": frozenset((d - 1) % 7 for d in cron_dows),  # cron 0/7 = Sunday = 6
        "days_star": dom.startswith("*"),
        "weekdays_star": dow.startswith("*"),
    }
    if dom.startswith("*") or not dow.startswith("*"):
        return fields
    # only the day of the month restricts: it must exist in one of the months
    longest = max(calendar.monthrange(2000, m)[1] for m in months)  # 2000: a leap year
    if min(days) > longest:
        raise ValueError(f'bad cron schedule "{text}": that day of the month never occurs')
    return fields


def _cron_field(
    text: str, low: int, high: int, what: str, names: tuple[str, ...] = ()
) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f'{what} step "{step_text}" is not a positive number')
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = (
                _cron_value(a, low, high, what, names),
                _cron_value(b, low, high, what, names),
            )
            if first > last:
                raise ValueError(f'{what} range "{body}" runs backwards')
        else:
            first = _cron_value(body, low, high, what, names)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _cron_value(word: str, low: int, high: int, what: str, names: tuple[str, ...]) -> int:
    offset = 1 if what == "month" else 0
    if word.lower() in names:
        return names.index(word.lower()) + offset
    if not word.isdigit() or not low <= int(word) <= high:
        raise ValueError(f'{what} "{word}" is not a number from {low} to {high}')
    return int(word)
