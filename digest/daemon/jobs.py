"""The daemon's pure pieces: the slot trigger, subscriber groups, reload diffs, run stats.

Owns: `SlotTrigger` (an APScheduler trigger whose fire times come from our
`schedule.next_slot`, so DST semantics are ours), grouping subscribers that share
(schedule, timezone) into one job, what a reload changed, the summary line's text, and
the text of log lines (a refused reload in one line, APScheduler's busy-skip warnings
filtered out).
Does not own: the scheduler, signals or any I/O (daemon.py), what a slot is (schedule.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

from digest.config import Subscriber
from digest.errors import ConfigError, DigestError
from digest.humanize import count
from digest.schedule import Schedule, latest_slot, next_slot

MAX_JITTER = dt.timedelta(minutes=5)

GroupKey = tuple[str, str]  # (schedule text, timezone): subscribers that share one job


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """Fires at the slots of one schedule in one timezone, as `schedule.next_slot` says."""

    __slots__ = ("schedule", "tz")

    def __init__(self, schedule: Schedule, tz: ZoneInfo) -> None:
        self.schedule = schedule
        self.tz = tz

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        if previous_fire_time is None:
            return next_slot(self.schedule, self.tz, now)
        following = next_slot(self.schedule, self.tz, previous_fire_time)
        if following < now:
            # several slots were missed (the machine slept): go straight to the latest
            # one; APScheduler would coalesce them anyway, this skips walking them all
            latest = latest_slot(self.schedule, self.tz, now)
            if latest is not None and latest > following:
                return latest
        return following

    def __str__(self) -> str:
        return f"slots of {self.schedule.text!r} in {self.tz.key}"

    def __repr__(self) -> str:
        return f"<SlotTrigger {self.schedule.text!r} {self.tz.key}>"


def group_subscribers(subscribers: Iterable[Subscriber]) -> dict[GroupKey, tuple[Subscriber, ...]]:
    """Subscribers sharing (schedule, timezone), in file order: one slot job per group."""
    groups: dict[GroupKey, list[Subscriber]] = {}
    for s in subscribers:
        groups.setdefault((s.schedule.text, s.timezone), []).append(s)
    return {key: tuple(members) for key, members in groups.items()}


def slot_job_id(key: GroupKey) -> str:
    text, tz = key
    return f"slot:{tz}:{text}"


def poll_jitter(interval: dt.timedelta) -> float:
    """Seconds of random delay added to each poll: a tenth of the interval, at most 5 min."""
    return min(interval / 10, MAX_JITTER).total_seconds()


@dataclass(frozen=True)
class ConfigChange:
    """What a reload changes about the subscribers."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]


def diff_subscribers(old: Sequence[Subscriber], new: Sequence[Subscriber]) -> ConfigChange:
    before = {s.email: s for s in old}
    after = {s.email: s for s in new}
    return ConfigChange(
        added=tuple(e for e in after if e not in before),
        removed=tuple(e for e in before if e not in after),
        changed=tuple(e for e in after if e in before and after[e] != before[e]),
    )


@dataclass
class Stats:
    """What this process did, for the summary line at exit."""

    polls: int = 0
    failed_polls: int = 0
    planned: int = 0
    sent: int = 0
    failed: int = 0

    def summary(self, uptime: float, pending: int | None) -> str:
        left = f", {pending} pending" if pending is not None else ""
        return (
            f"stopped after {format_uptime(uptime)}: {count(self.polls, 'poll')} "
            f"({self.failed_polls} failed), {count(self.planned, 'digest')} planned, "
            f"{self.sent} sent, {self.failed} failed{left}"
        )


def format_uptime(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def one_line(error: DigestError) -> str:
    """Every problem of an error on one line (a config error may list several, and a
    query problem adds a caret line)."""
    problems = error.problems if isinstance(error, ConfigError) else [str(error)]
    return " | ".join(" ".join(p.split()) for p in problems)


class QuietBusySkips(logging.Filter):
    """Drops APScheduler's warning for a fire skipped because the job is still running
    (max_instances=1): with short slots it would come every second, and nothing is lost,
    since the next fire plans whatever is due by then."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


QUIET_BUSY_SKIPS = QuietBusySkips()
