"""The poll recipe: fetch the listing days, store each as it arrives, record the poll.

    poll:  fetch_day (sources.fetch, a few days at a time, one deadline for all)
             | upsert_listings, save_day (store)                          -> PollReport

Owns the order of those steps, what a day's outcome is (`DayOutcome`) and which days a
poll asks for (`days_to_poll`, `days_between`); owns no HTTP or parsing (`sources`) and
no SQL (`store`). The rest of the cycle (plan, cancel, send) is `pipeline.py`'s. Each
step takes `now` from its caller.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine
from sqlmodel import Session

from digest import store
from digest.config import Config
from digest.errors import SourceError, UnreachableError
from digest.humanize import count
from digest.models import DayRow
from digest.records import Paper
from digest.sources.fetch import DayFetch, Deadline, Validators, fetch_day

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DayOutcome:
    day: dt.date
    source: str | None = None
    not_modified: bool = False
    new: tuple[Paper, ...] = ()
    updated: tuple[Paper, ...] = ()
    error: str | None = None


@dataclass
class PollReport:
    days: list[DayOutcome] = field(default_factory=list)
    seconds: float = 0.0
    unreachable: str | None = None  # the source could not be reached: the poll stopped
    requested: tuple[dt.date, ...] = ()  # the days this poll was asked to fetch

    @property
    def failed_days(self) -> frozenset[dt.date]:
        """The requested days this poll did not fetch (an error, or never reached after
        the source turned out unreachable): digests covering them must wait."""
        fetched = {d.day for d in self.days if d.error is None}
        return frozenset(self.requested) - fetched

    @property
    def fetched(self) -> bool:
        """Whether any day was fetched (a 304 counts): else nothing is known to be new."""
        return any(d.error is None for d in self.days)

    @property
    def new(self) -> list[Paper]:
        return [p for d in self.days for p in d.new]

    @property
    def updated(self) -> list[Paper]:
        return [p for d in self.days for p in d.updated]

    @property
    def errors(self) -> list[str]:
        """One line per failed day, each naming its day; just the one line when the
        source could not be reached."""
        if self.unreachable is not None:
            return [self.unreachable]
        return [
            d.error if d.error.startswith(str(d.day)) else f"{d.day}: {d.error}"
            for d in self.days
            if d.error
        ]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def sources(self) -> str:
        used = sorted({d.source for d in self.days if d.source})
        return "+".join(used) if used else "-"

    def summary(self) -> str:
        if self.unreachable is not None:
            return f"poll stopped after {self.seconds:.1f}s: {self.unreachable}"
        return (
            f"poll: {count(len(self.days), 'day')}, {len(self.new)} new, "
            f"{len(self.updated)} updated, "
            f"{sum(d.not_modified for d in self.days)} unchanged (304), "
            f"{len(self.errors)} failed, source {self.sources}, {self.seconds:.1f}s"
        )


def days_to_poll(now: dt.datetime, lookback_days: int) -> list[dt.date]:
    """Today (UTC) and the `lookback_days` before it, oldest first: lists keep growing."""
    today = now.astimezone(dt.UTC).date()
    return [today - dt.timedelta(days=n) for n in range(lookback_days, -1, -1)]


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


async def poll(
    config: Config,
    engine: Engine,
    client: httpx.AsyncClient,
    days: Sequence[dt.date],
    *,
    now: Callable[[], dt.datetime],
    on_day: Callable[[DayOutcome], None] | None = None,
) -> PollReport:
    """Fetch `days` (a few at a time), store each as it arrives, and record the poll.

    The whole poll has `source.poll_deadline` seconds. A source that cannot be reached
    at all stops the poll at the first such failure, with that one error."""
    started = time.monotonic()
    report = PollReport(requested=tuple(days))
    with Session(engine) as session:
        poll_id = store.start_poll(session, now())
        validators = {d: _validators(store.get_day(session, d)) for d in days}
    gate = asyncio.Semaphore(max(1, config.source.concurrency))
    deadline = Deadline.after(config.source.poll_deadline)

    async def fetch_one(day: dt.date) -> DayFetch | SourceError:
        async with gate:
            try:
                return await fetch_day(
                    client, config.source, day, validators=validators[day], deadline=deadline
                )
            except SourceError as e:
                return e

    tasks = [asyncio.create_task(fetch_one(d)) for d in days]
    try:
        for day, task in zip(days, tasks, strict=True):
            result = await task
            if isinstance(result, UnreachableError):  # the caller reports it, once
                report.unreachable = str(result)
                break
            outcome = _store_day(engine, day, result, now())
            if outcome.error:
                log.warning("fetch failed: %s", outcome.error)
            report.days.append(outcome)
            if on_day is not None:
                on_day(outcome)
    finally:
        for task in tasks:
            task.cancel()
        report.seconds = time.monotonic() - started
        with Session(engine) as session:
            store.finish_poll(
                session,
                poll_id,
                now=now(),
                days=len(report.days),
                new=len(report.new),
                updated=len(report.updated),
                source=report.sources,
                ok=report.ok and len(report.days) == len(days),
                error="; ".join(report.errors)[:2000] or None,
            )
    return report


def _validators(row: DayRow | None) -> Validators | None:
    """What the last fetch of a day returned, for a conditional GET (None: fetch it all)."""
    if row is None or not (row.etag or row.last_modified):
        return None
    return Validators(etag=row.etag, last_modified=row.last_modified, source=row.source)


def _store_day(
    engine: Engine, day: dt.date, result: DayFetch | SourceError, now: dt.datetime
) -> DayOutcome:
    if isinstance(result, SourceError):
        return DayOutcome(day=day, error=str(result))
    if result.not_modified:
        return DayOutcome(day=day, source=result.source, not_modified=True)
    upserted = store.upsert_listings(engine, day, result.papers, now)
    with Session(engine) as session:
        store.save_day(
            session,
            day,
            source=result.source,
            etag=result.etag,
            last_modified=result.last_modified,
            paper_count=len(result.papers),
            now=now,
        )
    return DayOutcome(
        day=day,
        source=result.source,
        new=tuple(upserted.new),
        updated=tuple(upserted.updated),
    )
