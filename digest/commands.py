"""The bodies of the CLI commands: each reads like a recipe over `pipeline` and the edges.

Owns what each command prints (to the `out` stream it is given) and its exit code on
success or partial failure. Does not own argument parsing or turning errors into exit
codes (`cli.py`), nor any step of the pipeline itself.

Each command imports the stages it uses when it runs: `digest init` loads no
SQLAlchemy, `digest status` no Jinja, httpx or aiosmtplib.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar
from zoneinfo import ZoneInfo

from digest.config.dburl import parse_db_url
from digest.errors import DeliveryError, DigestError, SourceError, StoreError, UsageError
from digest.humanize import count, duration

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest import pipeline, polling
    from digest.config import Config, Subscriber
    from digest.mail.drain import DrainReport
    from digest.models import SubscriberRow
    from digest.records import Match, Paper
    from digest.store import peek

log = logging.getLogger("digest")
_T = TypeVar("_T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run(args: argparse.Namespace, out: TextIO) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "init": cmd_init,
        "check": cmd_check,
        "fetch": cmd_fetch,
        "match": cmd_match,
        "preview": cmd_preview,
        "send": cmd_send,
        "run": cmd_run,
        "status": cmd_status,
        "serve": cmd_serve,
        "unsubscribe": cmd_unsubscribe,
        "resubscribe": cmd_resubscribe,
    }
    try:
        return handlers[args.command](args, out)
    finally:
        close_stores()


def load(args: argparse.Namespace) -> Config:
    from digest.config import load_config

    return load_config(args.config, os.environ)


# The engines open_store made, closed by close_stores when the command ends. Not left to
# the collector: cli.py freezes what is alive at exit, so a pooled SQLite connection would
# never close, and the file's write-ahead log would stay beside it un-checkpointed (the
# file alone, copied as a backup, would miss what the command wrote).
_opened: list[Engine] = []


def open_store(config: Config) -> Engine:
    from digest import store

    engine = store.open_engine(config.storage.url)
    _opened.append(engine)
    store.migrate(engine)
    return engine


def close_stores() -> None:
    while _opened:
        _opened.pop().dispose()


def through_store(config: Config, read: Callable[[peek.Reader], _T]) -> _T:
    """`read` with a `peek.Reader` over the full store (any backend, migrated first):
    what `check` and `status` fall back to where the quick sqlite3 path cannot answer."""
    from digest.store import peek

    engine = open_store(config)  # closed with the command (close_stores)
    connection = engine.raw_connection()
    try:
        where = parse_db_url(config.storage.url).masked()
        return read(peek.Reader(connection, engine.dialect.paramstyle, where))
    finally:
        connection.close()


# --------------------------------------------------------------------------- init, check


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    from digest.config import example_config

    path = args.config
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists; use --force to overwrite it")
    path.write_text(example_config(), encoding="utf-8")
    out.write(f"wrote {path}: edit the subscribers, then run `digest check`\n")
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from digest.config import summarize_config
    from digest.render import Renderer

    config = load(args)
    Renderer(config.mail.templates)  # a broken template folder is a config problem too
    for line in summarize_config(config):
        out.write(line + "\n")
    for warning in config.warnings:
        out.write(f"warning: {warning}\n")
    if config.web is not None:
        from digest.web.pages import Pages  # a broken page template is one too

        Pages(config.mail.templates)
    for line in check_recipients(config):
        out.write(line + "\n")
    return 0


def check_recipients(config: Config) -> list[str]:
    """`digest check`'s view of the database: who unsubscribed or paused. A database
    that does not exist yet is not created here; one that fails is a line, not an exit."""
    url = parse_db_url(config.storage.url)
    file = url.database if url.backend == "sqlite" else None
    if file and file != ":memory:" and not Path(file).exists():
        return []
    try:
        return recipient_lines(config, read_choices(config), utcnow())
    except StoreError as e:
        return [f"recipients: not checked, the database failed: {e}"]


def recipient_lines(
    config: Config, choices: Mapping[str, peek.Choice], now: dt.datetime
) -> list[str]:
    """Who in the file unsubscribed, paused or muted topics: the database overrides the
    file, so `check` and `status` say whom the file lists in vain. `choices`: what
    `peek.choices` read."""
    lines = []
    for sub in config.subscribers:
        choice = choices.get(sub.email)
        if choice is None:
            continue
        if choice.suppressed_at is not None:
            when = f"{choice.suppressed_at:%Y-%m-%d}"
            lines.append(f"{sub.email}: unsubscribed {when} ({choice.how})")
            continue
        notes = []
        if choice.paused_at(now) and choice.paused_until is not None:
            local = choice.paused_until.astimezone(ZoneInfo(sub.timezone))
            notes.append(f"paused until {local:%Y-%m-%d %H:%M %Z}")
        muted = sorted(choice.muted & {t.name for t in sub.topics})
        if muted:
            notes.append("muted " + ", ".join(f'"{name}"' for name in muted))
        if notes:
            lines.append(f"{sub.email}: {'; '.join(notes)}")
    return lines


def read_choices(config: Config) -> dict[str, peek.Choice]:
    """`peek.choices` for the file's subscribers: quick on SQLite, else the full store."""
    from digest.store import peek

    emails = [s.email for s in config.subscribers]
    with peek.open_sqlite(config.storage.url) as reader:
        if reader is not None:
            return peek.choices(reader, emails)
    return through_store(config, lambda reader: peek.choices(reader, emails))


# --------------------------------------------------------------------------- fetch


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


# --------------------------------------------------------------------------- match, preview


def select_subscribers(config: Config, email: str | None) -> list[Subscriber]:
    if email is None:
        return list(config.subscribers)
    chosen = [s for s in config.subscribers if s.email == email.strip().lower()]
    if not chosen:
        raise UsageError(f"no subscriber {email!r} in {config.path}")
    return chosen


def subscriber_states(engine: Engine, chosen: list[Subscriber]) -> dict[str, SubscriberRow]:
    """The saved state of every chosen subscriber, in one batched read (never one query
    per subscriber: at 100k that was most of `digest match`)."""
    from sqlmodel import Session

    from digest import store

    with Session(engine) as session:
        return store.get_subscriber_states(session, [s.email for s in chosen])


def next_digest(
    planner: pipeline.Planner,
    subscriber: Subscriber,
    state: SubscriberRow | None,
    now: dt.datetime,
    since: dt.date | None,
    *,
    more: int = 0,
) -> tuple[dt.datetime, list[Match], int]:
    """What the subscriber's next digest would hold: the due slot if one is waiting, else
    the next one; with `since`, every paper listed from that day on. `more`: also up
    to that many matches past max_papers (the digest's title links). `state`: the
    subscriber's saved state (`subscriber_states`)."""
    from digest import pipeline
    from digest.records import as_utc
    from digest.schedule import upcoming_slot

    last_slot = as_utc(state.last_slot) if state and state.last_slot else None
    slot, _ = upcoming_slot(subscriber, now, last_slot)
    if since is not None:
        first, last = since, now.date() + dt.timedelta(days=1)
    else:
        covered_until = state.covered_until if state else None
        first, last = pipeline.digest_days(subscriber, slot, last_slot, covered_until)
    matches, total = planner.matches_for(subscriber, first, last, more=more)
    return slot, matches, total


def cmd_match(args: argparse.Namespace, out: TextIO) -> int:
    from digest import pipeline
    from digest.listmatches import write_matches

    config = load(args)
    planner = pipeline.Planner(config, open_store(config))
    now = utcnow()
    chosen = select_subscribers(config, args.subscriber)
    write_matches(planner, chosen, now, args.since, out, as_json=args.json)
    return 0


def cmd_preview(args: argparse.Namespace, out: TextIO) -> int:
    from digest import pipeline
    from digest.render import render_digest

    config = load(args)
    planner = pipeline.Planner(config, open_store(config))
    now = utcnow()
    (subscriber,) = select_subscribers(config, args.subscriber)
    state = subscriber_states(planner.engine, [subscriber]).get(subscriber.email)
    slot, found, total = next_digest(
        planner, subscriber, state, now, None, more=pipeline.MORE_LINKS
    )
    matches, more = found[: subscriber.max_papers], found[subscriber.max_papers :]
    message = render_digest(
        planner.renderer,
        subscriber=subscriber,
        slot=slot,
        matches=matches,
        mail=config.mail,
        now=now,
        total_matches=total,
        more=more,
    )
    if args.out is None:
        text = message.get_body(("plain",))
        out.write(text.get_content() if text is not None else "")
        return 0
    suffix = args.out.suffix.lower()
    if suffix == ".eml":
        args.out.write_bytes(message.as_bytes())
    elif suffix in (".html", ".htm"):
        html = message.get_body(("html",))
        args.out.write_text(html.get_content() if html is not None else "", encoding="utf-8")
    else:
        raise UsageError(f"--out {args.out}: use a .html or .eml file name")
    out.write(f"wrote {args.out}: {count(len(matches), 'paper')} for {subscriber.email}\n")
    return 0


# --------------------------------------------------------------------------- send, run, status


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


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from digest.daemon.service import run_daemon

    return run_daemon(args.config, os.environ)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """The store, the outbox and each subscriber's next digest (as `match` and `send` see
    it: the due slot if one is waiting, else the next). With `--check`, exit 1 when the
    last poll failed or mail has been failing (the container's HEALTHCHECK).

    An SQLite file at the current schema is read with sqlite3 alone (`store.peek`), so a
    status answers before SQLAlchemy could even be imported; anything else (PostgreSQL,
    no database yet, an older schema) goes through the full store, migrated first."""
    from digest.schedule import upcoming_slot
    from digest.store import peek

    config = load(args)
    now = utcnow()
    emails = [s.email for s in config.subscribers]
    with peek.open_sqlite(config.storage.url) as reader:
        read = status_reads(reader, emails, now, check=args.check) if reader else None
    if read is None:
        read = through_store(config, lambda r: status_reads(r, emails, now, check=args.check))
    stats, last_slots, choices, trouble = read
    slots: dict[str, tuple[dt.datetime, bool]] = {}
    # the same schedule, zone and last slot give the same answer: at 100k subscribers
    # a few dozen distinct ones, each worked out once
    known: dict[tuple[object, str, dt.datetime | None], tuple[dt.datetime, bool]] = {}
    for s in config.subscribers:
        key = (s.schedule, s.timezone, last_slots.get(s.email))
        answer = known.get(key)
        if answer is None:
            slot, due = upcoming_slot(s, now, key[2])
            answer = known[key] = slot.astimezone(s.zone), due
        slots[s.email] = answer
    if args.json:
        record = stats.as_dict() | {
            "subscribers": {e: t.isoformat() for e, (t, _) in slots.items()},
            "due": sorted(e for e, (_, due) in slots.items() if due),
        }
        record["recipients"] = recipient_lines(config, choices, now)
        rate = send_rate(config)
        pending = stats.digests.get("pending", 0)
        record["rate_per_second"] = rate
        record["pending_send_seconds"] = None if rate is None else pending / rate
        if args.check:
            record["problems"] = trouble
        out.write(json.dumps(record, default=str) + "\n")
    else:
        for line in stats.lines():
            out.write(line + "\n")
        pending = stats.digests.get("pending", 0)
        if pending:
            out.write(pending_line(pending, send_rate(config)) + "\n")
        shown: dict[tuple[dt.datetime, object, bool], str] = {}  # tzinfo too: equal
        for email, (when, due) in slots.items():  # instants in two zones print apart
            if (tail := shown.get((when, when.tzinfo, due))) is None:
                waiting = " (due now: `digest send` sends it)" if due else ""
                tail = shown[when, when.tzinfo, due] = f"{when:%a %Y-%m-%d %H:%M %Z}{waiting}\n"
            out.write(f"next digest for {email}: {tail}")
        for line in recipient_lines(config, choices, now):
            out.write(line + "\n")
    if trouble:
        raise DigestError("unhealthy: " + "; ".join(trouble))
    return 0


def status_reads(
    reader: peek.Reader, emails: list[str], now: dt.datetime, *, check: bool
) -> tuple[peek.StoreStats, dict[str, dt.datetime], dict[str, peek.Choice], list[str]]:
    """Everything `digest status` reads: a handful of queries, whatever the subscribers."""
    from digest.store import peek

    return (
        peek.store_stats(reader),
        peek.last_slots(reader, emails),
        peek.choices(reader, emails),
        peek.health_problems(reader, now) if check else [],
    )


def send_rate(config: Config) -> float | None:
    """The messages a second the configured transport is capped at; None: no cap (Maildir)."""
    smtp = config.mail.smtp
    return smtp.rate_per_second if config.mail.transport == "smtp" and smtp else None


def pending_line(pending: int, rate: float | None) -> str:
    """How long the digests waiting in the outbox take to go out at the configured cap
    (at the least: a slow relay or retries take longer)."""
    waiting = count(pending, "pending digest")
    if rate is None:
        return f"sending {waiting}: no rate cap (Maildir)"
    took = duration(max(1, round(pending / rate)))
    return (
        f"sending {waiting} takes at least {took} at rate_per_second = {rate:g} "
        "(the README says which rate your relay takes)"
    )


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from digest.web.server import serve

    return asyncio.run(serve(args.config, os.environ))


def cmd_unsubscribe(args: argparse.Namespace, out: TextIO) -> int:
    from digest.store import recipients

    config = load(args)
    email = parse_address_arg(args.email)
    engine = open_store(config)
    new = recipients.suppress(engine, email, "admin", utcnow())
    pending = "" if new else " (already unsubscribed)"
    note = "" if email in {s.email for s in config.subscribers} else f"; not in {config.path}"
    out.write(f"{email}: unsubscribed{pending}, gets no more digests{note}\n")
    return 0


def cmd_resubscribe(args: argparse.Namespace, out: TextIO) -> int:
    from digest.store import recipients

    config = load(args)
    email = parse_address_arg(args.email)
    engine = open_store(config)
    if not recipients.resubscribe(engine, email, utcnow()):
        raise UsageError(f"{email} is not unsubscribed")
    note = "" if email in {s.email for s in config.subscribers} else (
        f"; not in {config.path}, so nothing will be sent"
    )
    out.write(f"{email}: resubscribed, digests start again at the next slot{note}\n")
    return 0


def parse_address_arg(text: str) -> str:
    from digest.config.values import Invalid, check_address

    try:
        return check_address(text)
    except Invalid as e:
        raise UsageError(str(e)) from None
