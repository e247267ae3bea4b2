"""`digest fetch`: poll the listings and print what was new or updated."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from digest.commands import load, open_store, utcnow
from digest.errors import SourceError
from digest.humanize import count

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest import polling
    from digest.config import Config
    from digest.records import Paper

log = logging.getLogger("digest")


def cmd_fetch(args: argparse.Namespace, out: TextIO) -> int:
    from digest import polling

    config = load(args)
    engine = open_store(config)
    now = utcnow()
    if args.date:
        days = [args.date]
    elif args.since:
        days = polling.days_between(args.since, args.until or now.date())
    else:
        days = polling.days_to_poll(now, config.source.lookback_days)
    progress = Progress(len(days)) if len(days) > 1 else None

    def on_day(outcome: polling.DayOutcome) -> None:
        for paper in outcome.new:
            write_paper(out, paper, "new", args.json)
        for paper in outcome.updated:
            write_paper(out, paper, "updated", args.json)
        if progress:
            progress.step(outcome)

    import asyncio

    report = asyncio.run(_poll(config, engine, days, on_day))
    if progress:
        progress.close()
    if report.unreachable is None:  # else the one line is the error itself
        log.info(report.summary())
    fail_on_poll_errors(report)
    return 0


async def _poll(
    config: Config,
    engine: Engine,
    days: list[dt.date],
    on_day: Callable[[polling.DayOutcome], None] | None = None,
) -> polling.PollReport:
    from digest import polling
    from digest.sources.fetch import make_client

    async with make_client(config.source) as client:
        return await polling.poll(config, engine, client, days, now=utcnow, on_day=on_day)


def fail_on_poll_errors(report: polling.PollReport) -> None:
    if report.unreachable is not None:
        raise SourceError(report.unreachable)
    if report.errors:
        first = report.errors[0]
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise SourceError(
            f"fetch failed for {len(report.errors)} of {count(len(report.days), 'day')}: "
            f"{first}{more}"
        )


def write_paper(out: TextIO, paper: Paper, status: str, as_json: bool) -> None:
    if as_json:
        record = {
            "id": paper.id,
            "title": paper.title,
            "listed_on": paper.listed_on.isoformat(),
            "status": status,
            "upvotes": paper.upvotes,
            "url": paper.url,
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        out.write(
            f"{status:<8} {paper.listed_on} {paper.id:<12} {paper.upvotes:>4}  {paper.title}\n"
        )


class Progress:
    """A one-line progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.new = 0
        self.tty = sys.stderr.isatty()

    def step(self, outcome: polling.DayOutcome) -> None:
        self.done += 1
        self.new += len(outcome.new)
        state = outcome.error or (
            "unchanged"
            if outcome.not_modified
            else f"{len(outcome.new)} new, {len(outcome.updated)} updated"
        )
        if not self.tty:
            log.info("fetched %s (%d/%d): %s", outcome.day, self.done, self.total, state)
            return
        width = 30
        filled = width * self.done // self.total
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"days, {self.new} new  {outcome.day}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
