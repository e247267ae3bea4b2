"""`digest send`: poll, plan, deliver, and say what stays pending and when it goes."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from digest.commands import load, open_store, utcnow
from digest.commands.fetch import fail_on_poll_errors
from digest.errors import DeliveryError, SourceError
from digest.humanize import count, duration

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest import pipeline, polling
    from digest.config import Config
    from digest.mail.drain import DrainReport

log = logging.getLogger("digest")


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    config = load(args)
    if args.dry_run:
        return dry_run(config, out)
    engine = open_store(config)
    import asyncio

    return asyncio.run(_send(config, engine, args, out))


def dry_run(config: Config, out: TextIO) -> int:
    """`digest send --dry-run`: what `digest send --no-fetch` would mail now, from what is
    stored. Changes nothing: no poll, no database file created, no slot handled."""
    from digest import pipeline, store
    from digest.store.outbox import outbox_counts

    if not store.database_exists(config.storage.url):
        out.write("would send nothing: no database yet (`digest send` or `digest fetch` make it)\n")
        return 0
    engine = open_store(config)
    now = utcnow()
    going = 0

    def would_send(p: pipeline.PlannedDigest) -> None:
        nonlocal going
        if not (p.matches or (p.subscriber.send_empty and p.subscriber.delivery != "feed")):
            return
        going += 1
        local = p.slot.astimezone(ZoneInfo(p.subscriber.timezone))
        if p.subscriber.delivery == "feed":  # never mailed
            papers = count(len(p.paper_ids), "paper")
            what = f"would add {papers} to the feed of {p.subscriber.email}"
        else:
            what = f"would send {count(len(p.matches), 'paper')} to {p.subscriber.email}"
        out.write(f"{what} (slot {local:%a %Y-%m-%d %H:%M %Z})\n")

    pipeline.plan_due(
        pipeline.Planner(config, engine), config.subscribers, now, daemon=False, write=False,
        on_planned=would_send,
    )  # fmt: skip
    pending = outbox_counts(engine).get("pending", 0)
    if pending:
        out.write(f"would send {count(pending, 'digest')} already waiting in the outbox\n")
    if not going and not pending:
        out.write("would send nothing: no digest is due with new papers\n")
    log.info("dry run: no poll, nothing written; digest send polls first")
    return 0


async def _send(config: Config, engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    from digest import pipeline, polling
    from digest.mail.delivery import make_transport
    from digest.mail.drain import drain_outbox
    from digest.sources.fetch import make_client

    poll_report = None
    if not args.no_fetch:
        days = polling.days_to_poll(utcnow(), config.source.lookback_days)
        async with make_client(config.source) as client:
            poll_report = await polling.poll(config, engine, client, days, now=utcnow)
        if poll_report.unreachable is None:  # else the one line is the error, at the end
            log.info(poll_report.summary())
        if not poll_report.fetched:  # nothing is known to be new: plan nothing, close no slot
            return await _deliver_only(config, engine, poll_report, out)
    planner = pipeline.Planner(config, engine)
    held: list[str] = []  # due slots whose days the poll failed to fetch: not closed
    planned = pipeline.plan_due(
        planner, config.subscribers, utcnow(), daemon=False,
        unfed=poll_report.failed_days if poll_report is not None else (), held=held,
    )  # fmt: skip
    pipeline.cancel_removed(config, engine, utcnow())
    async with make_transport(config.mail) as transport:
        # several sends at once (PostgreSQL): what the others are sending right now does
        # not stay pending; wait for it (at most one lease) before reporting
        report = await drain_outbox(
            engine, transport, now=utcnow, wait_for_others=transport.claim_lease
        )
    written, fed, empty = planned.written, planned.fed, planned.empty
    waiting = f", {len(held)} wait for the days the poll could not fetch" if held else ""
    to_feeds = f", {fed} to feeds only" if fed else ""
    out.write(
        f"{count(written, 'new digest')} ({count(empty, 'due slot')} had nothing new{waiting}"
        f"{to_feeds}); "
        f"{report.sent} sent, {report.failed} failed, {report.pending} pending\n"
    )
    if report.sent and config.mail.transport == "maildir":
        out.write(maildir_line(config.mail.maildir, report.sent) + "\n")
    if report.error:
        raise DeliveryError(f"mail not sent: {report.error}; {still_pending(report, utcnow())}")
    if report.failed:
        left = f"; {still_pending(report, utcnow())}" if report.pending else ""
        raise DeliveryError(
            f"{count(report.failed, 'digest')} refused permanently: see `digest status`{left}"
        )
    if report.pending:  # a backoff, a lease of a live process, a reply that never came
        raise DeliveryError(still_pending(report, utcnow()))
    if poll_report is not None:
        fail_on_poll_errors(poll_report)
    return 0


async def _deliver_only(
    config: Config, engine: Engine, poll_report: polling.PollReport, out: TextIO
) -> int:
    """The poll fetched nothing: deliver what was already waiting, then fail with the
    poll's error. Stdout speaks only of mail that went out (never of "nothing new")."""
    from digest import pipeline
    from digest.mail.delivery import make_transport
    from digest.mail.drain import drain_outbox

    pipeline.cancel_removed(config, engine, utcnow())
    async with make_transport(config.mail) as transport:
        report = await drain_outbox(engine, transport, now=utcnow)
    if report.sent or report.failed:
        out.write(
            f"nothing fetched, no digests planned; already waiting: {report.sent} sent, "
            f"{report.failed} failed, {report.pending} pending\n"
        )
    fail_on_poll_errors(poll_report)
    raise SourceError("the poll fetched nothing")  # not reached: a poll that fetched nothing failed


def still_pending(report: DrainReport, now: dt.datetime) -> str:
    """How many digests stay pending and when they go: one line for `digest send`."""

    def when(moment: dt.datetime | None) -> str:
        if moment is None or moment <= now:
            return "now"
        wait = duration(max(1, round((moment - now).total_seconds())))
        return f"{moment:%Y-%m-%d %H:%M:%S} UTC (in {wait})"

    first, last = when(report.first_due), when(report.last_due)
    due = f"due again {first}" if first == last else f"due again from {first} to {last}"
    stay = "stays" if report.pending == 1 else "stay"
    return f"{count(report.pending, 'digest')} {stay} pending, {due}: run `digest send` again then"


def maildir_line(folder: Path, sent: int) -> str:
    """Where the digests went and how to read them: '1 digest delivered to ./mail (mutt
    -f mail)'; the folder as the user would type it from here (else absolute)."""
    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve())
        typed, named = str(shown), f"./{shown}" if str(shown) != "." else "."
    except ValueError:  # not below the current folder
        typed = named = str(folder)
    plural = "" if sent == 1 else "s"
    return f"{sent} digest{plural} delivered to {named} (mutt -f {shlex.quote(typed)})"
