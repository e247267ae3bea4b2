"""The recipes: every command and every daemon job is one of these, composed from the layers.

    poll:  polling.py: fetch_day (sources.fetch) | upsert_listings (store)   -> PollReport
    plan:  due_slot (pure) | recipients_of (store: unsubscribed, paused, muted topics)
             | candidate_papers, papers_taken (store, once per window)
             | match_subscriber (match) | render_digest_bytes (render, with the signed
             links of web/tokens) | sign_message (mail/dkim)
             | add_digests (outbox, with the handled slots, 200 at a time)    -> PlanReport
           PLAN_CHUNK subscribers at a time: nothing per subscriber outlives its chunk
    cancel: cancel_pending_except (outbox): digests of people no longer in the file
    send:  drain_outbox (drain.py)                                            -> DrainReport

Owns the order of the steps and what counts as due; owns no parsing, matching, rendering
or SMTP. Each step takes `now` from its caller.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session

from digest import store
from digest.config import Config, Subscriber, Topics
from digest.humanize import count
from digest.mail.dkim import sign_message
from digest.records import Match, Paper, as_utc
from digest.render import RecipientLinks, Renderer, message_id_for, render_digest_bytes
from digest.schedule import (  # due_slot, upcoming_slot: pure, there for `digest status`
    default_window_days,
    digest_window,
)
from digest.schedule import (
    due_slot as due_slot,  # re-exported: callers and tests know it as pipeline.due_slot
)
from digest.store import feeds, outbox, recipients
from digest.topics import match
from digest.web.tokens import Links

log = logging.getLogger(__name__)

MAX_FOLD_DAYS = 31  # a digest covers at most this many listing days, however long the gap


# --------------------------------------------------------------------------- plan


def digest_days(
    subscriber: Subscriber,
    slot: dt.datetime,
    last_slot: dt.datetime | None,
    covered_until: dt.date | None = None,
) -> tuple[dt.date, dt.date]:
    """The listing days a digest at `slot` covers: its window, stretched back to where the
    previous digest's coverage stopped (`covered_until`, the subscriber's watermark: that
    day again, since lists keep growing), so no listing day falls between two digests
    whatever the schedule, downtime, failed polls or catch-up; at most MAX_FOLD_DAYS
    days in all. The first digest covers its window. A database from before the
    watermark gives only `last_slot`: its local date stands in."""
    tz = ZoneInfo(subscriber.timezone)
    window = subscriber.window_days or default_window_days(subscriber.schedule)
    first, last = digest_window(subscriber.schedule, tz, slot, window)
    if covered_until is None and last_slot is not None:
        covered_until = last_slot.astimezone(tz).date()
    if covered_until is not None:
        first = max(min(first, covered_until), last - dt.timedelta(days=MAX_FOLD_DAYS - 1))
    return first, last


PLAN_CHUNK = 1000  # subscribers whose state is read, and digests planned, at a time
SAVE_EVERY = 100  # digests rendered and held in memory (~26 KB each) before one transaction
# writes them: at 200, the batch and the heap it fragments made planning's peak at 100k
# subscribers 8 MB higher (194 against 186 MB); write speed at 100 not yet measured in cycle.py
MORE_LINKS = 50  # matches past max_papers listed as title links at a digest's end
MAX_MATCHES = 1_000_000  # "every match" (a window holds at most a few thousand papers)


@dataclass(frozen=True)
class PlannedDigest:
    subscriber: Subscriber
    slot: dt.datetime
    matches: tuple[Match, ...]
    total_matches: int
    window: tuple[dt.date, dt.date]  # the listing days it covers
    digest_id: int | None = None  # None: not written (dry run, empty, or it existed already)
    more: tuple[Match, ...] = ()  # the next best past max_papers (up to MORE_LINKS): links

    @property
    def paper_ids(self) -> tuple[str, ...]:
        """Every paper the digest shows, in full or as a title link: once it is sent,
        each counts as delivered."""
        return tuple(m.paper.id for m in (*self.matches, *self.more))
    skipped: str | None = None  # "unsubscribed" | "paused": the slot is handled, nothing sent


@dataclass
class PlanReport:
    """What a planning run did, in counts: nothing per subscriber is kept past its chunk."""

    due: int = 0  # due slots planned: a digest written, or nothing new, or skipped
    written: int = 0  # digests put in the outbox (fed ones included)
    fed: int = 0  # of those, to feeds only (delivery = "feed": never mailed)
    held: int = 0  # due slots whose days the poll failed to fetch: not planned, not closed

    @property
    def empty(self) -> int:
        """Due slots that made no digest (nothing new, already queued, or skipped)."""
        return self.due - self.written


class Planner:
    """Matches and renders digests, caching what many subscribers share: the candidate
    index per window (windows with the same candidates share one). Nothing per
    subscriber: their topics are compiled when they are matched (once per run; a cache
    of them cost ~2 KB a subscriber, 200 MB at 100k), and the papers each already has
    are read per chunk of subscribers (`taken_by`).

    One Planner serves one planning run: its index of a window is a snapshot of the
    store's papers (a poll after it is not seen)."""

    def __init__(self, config: Config, engine: Engine, renderer: Renderer | None = None) -> None:
        self.config = config
        self.engine = engine
        self._renderer = renderer
        self._windows: dict[tuple[dt.date, dt.date], tuple[match.PaperIndex, tuple[str, ...]]]
        self._windows = {}
        # windows with the very same candidates (a daily and a weekly one ending on the
        # same day, before a week of lists exists) share one index and its memos
        self._indexes: dict[tuple[Paper, ...], match.PaperIndex] = {}
        self._everyone: dict[tuple[dt.date, dt.date], dict[str, set[str]]] = {}
        self._links: Links | None = None

    @property
    def renderer(self) -> Renderer:
        """Loaded on first use: `digest match` never renders."""
        if self._renderer is None:
            self._renderer = Renderer(self.config.mail.templates)
        return self._renderer

    def forget_chunk(self) -> None:
        """What only the chunk just planned needed: the indexes' shared explanations."""
        for index in self._indexes.values():
            index.forget_explanations()

    def index_for(self, first: dt.date, last: dt.date) -> match.PaperIndex:
        return self._window(first, last)[0]

    def _window(
        self, first: dt.date, last: dt.date
    ) -> tuple[match.PaperIndex, tuple[str, ...]]:
        """The candidate papers of a window, indexed once, and their ids."""
        key = (first, last)
        if key not in self._windows:
            with Session(self.engine) as session:
                papers = store.candidate_papers(session, first, last)
            index = self._indexes.get(tuple(papers))
            if index is None:
                index = self._indexes[tuple(papers)] = match.PaperIndex.build(papers)
            self._windows[key] = (index, tuple(p.id for p in papers))
        return self._windows[key]

    def taken_by(
        self, window: tuple[dt.date, dt.date], emails: Collection[str]
    ) -> dict[str, set[str]]:
        """Of the window's papers, the ones each of `emails` already has or is about to
        get (delivered or pending): a fresh read, so it sees the digests just written."""
        ids = self._window(*window)[1]
        with Session(self.engine) as session:
            return store.papers_taken(session, ids, emails)

    def matches_for(
        self,
        subscriber: Subscriber,
        first: dt.date,
        last: dt.date,
        *,
        more: int = 0,
        exclude: AbstractSet[str] | None = None,
    ) -> tuple[list[Match], int]:
        """The subscriber's best matches in the window (max_papers of them, and up to
        `more` after those), and how many matched in all, leaving out `exclude` (the
        papers they have; by default read once for everyone in the window)."""
        compiled = match.compile_topics(subscriber.topics)
        if exclude is None:
            key = (first, last)
            if key not in self._everyone:
                with Session(self.engine) as session:
                    ids = self._window(first, last)[1]
                    self._everyone[key] = store.papers_taken(session, ids)
            exclude = self._everyone[key].get(subscriber.email, set())
        index = self.index_for(first, last)
        return match.match_and_count(
            index,
            compiled,
            min_upvotes=subscriber.min_upvotes,
            max_papers=subscriber.max_papers + more,
            exclude=exclude,
        )

    def plan(
        self,
        subscriber: Subscriber,
        slot: dt.datetime,
        *,
        last_slot: dt.datetime | None,
        covered_until: dt.date | None = None,
        window: tuple[dt.date, dt.date] | None = None,
        exclude: AbstractSet[str] | None = None,
    ) -> PlannedDigest:
        """What the digest for one (subscriber, slot) holds. Writes nothing."""
        window = window or digest_days(subscriber, slot, last_slot, covered_until)
        # with [web] the web copy lists every match: all of them past max_papers
        more = MAX_MATCHES if self.config.web is not None else MORE_LINKS
        found, total = self.matches_for(subscriber, *window, more=more, exclude=exclude)
        cut = subscriber.max_papers
        return PlannedDigest(
            subscriber, slot, tuple(found[:cut]), total, window, more=tuple(found[cut:])
        )

    def links_for(
        self, digests: Sequence[tuple[str, dt.datetime]], now: dt.datetime
    ) -> dict[tuple[str, dt.datetime], RecipientLinks]:
        """Each (address, slot)'s signed links, the digest's web copy among them (with
        [web]; none without): the random link keys are made in the database on first use."""
        web = self.config.web
        if web is None or not digests:
            return {}
        if self._links is None:
            self._links = Links(web)
        keys = recipients.ensure_recipients(self.engine, [email for email, _ in digests], now)
        return {(email, slot): self._links.for_key(keys[email], slot) for email, slot in digests}

    def save(
        self, planned: Sequence[PlannedDigest], now: dt.datetime, *, seen: Sequence[str] = ()
    ) -> list[PlannedDigest]:
        """Render the planned digests that have something to say (or whose subscriber wants
        them empty) and put them in the outbox, recording every planned slot as handled and
        each `seen` subscriber's first sight, all in one transaction. A skipped slot
        (unsubscribed, paused) is recorded as handled with no digest. A subscriber with
        delivery = "feed" gets no message: their digest is written, delivered to their
        feed, just before (store/feeds.py); a crash between leaves the slot due, and
        planning it again writes nothing twice."""
        mail = self.config.mail
        sender = envelope_sender(mail.from_addr)
        chosen = [
            p for p in planned if p.skipped is None and (p.matches or p.subscriber.send_empty)
        ]
        fed = [p for p in chosen if p.subscriber.delivery == "feed" and p.matches]
        chosen = [p for p in chosen if p.subscriber.delivery != "feed"]
        links = self.links_for([(p.subscriber.email, p.slot) for p in chosen], now)
        new = []
        for p in chosen:
            subject, message = render_digest_bytes(
                self.renderer,
                subscriber=p.subscriber,
                slot=p.slot,
                matches=p.matches,
                mail=mail,
                now=now,
                total_matches=p.total_matches,
                more=p.more,
                links=links.get((p.subscriber.email, p.slot)),
            )
            message = sign_message(message, mail.dkim)
            new.append(
                outbox.NewDigest(
                    subscriber=p.subscriber.email,
                    slot=p.slot,
                    recipient=p.subscriber.email,
                    sender=sender,
                    message_id=message_id_for(p.subscriber.email, p.slot, mail.from_addr),
                    subject=subject,
                    paper_ids=p.paper_ids,
                    message=message,
                )
            )
        handled = [outbox.Handled(p.subscriber.email, p.slot, p.window[1]) for p in planned]
        handled += [outbox.Handled(email, None) for email in seen]
        # first, so a crash in between leaves the slots due: planned again, written once
        fed_ids = feeds.add_fed_digests(self.engine, [feed_digest(p, sender) for p in fed], now)
        ids = outbox.add_digests(self.engine, new, now=now, handled=handled)
        # an unsubscribe that came while these were rendering: cancel what it missed
        recipients.cancel_suppressed(
            self.engine, [p.subscriber.email for p, i in zip(chosen, ids, strict=True) if i], now
        )
        written = {id(p): digest_id for p, digest_id in zip(chosen, ids, strict=True)}
        written.update((id(p), digest_id) for p, digest_id in zip(fed, fed_ids, strict=True))
        for p in (*chosen, *fed):  # a whole-window snapshot (`digest match`): on their way
            everyone = self._everyone.get(p.window)
            if everyone is not None:
                everyone.setdefault(p.subscriber.email, set()).update(p.paper_ids)
        return [replace(p, digest_id=written.get(id(p))) for p in planned]


def feed_digest(p: PlannedDigest, sender: str) -> outbox.NewDigest:
    """A digest of a subscriber with delivery = "feed": no message is rendered or kept
    (it is never mailed); its papers go to their feed."""
    return outbox.NewDigest(
        subscriber=p.subscriber.email, slot=p.slot, recipient=p.subscriber.email,
        sender=sender, message_id="", subject="", paper_ids=p.paper_ids, message=b"",
    )  # fmt: skip


def _plan_one(
    planner: Planner,
    subscriber: Subscriber,
    slot: dt.datetime,
    last_slot: dt.datetime | None,
    choices: dict[str, recipients.Recipient],
    *,
    covered_until: dt.date | None,
    window: tuple[dt.date, dt.date],
    exclude: AbstractSet[str],
) -> PlannedDigest:
    """The digest at `slot`, as the recipient's own choices (which override the file)
    allow: nothing for an unsubscribed or paused address (the slot is handled and its
    window counted as covered: skipped, never caught up), the muted topics left out."""
    choice = choices.get(subscriber.email)
    if choice is not None and (choice.suppressed or choice.paused_at(slot)):
        skipped = "unsubscribed" if choice.suppressed else "paused"
        return PlannedDigest(subscriber, slot, (), 0, window, skipped=skipped)
    if choice is not None and choice.muted:
        topics = tuple(t for t in subscriber.topics if t.name not in choice.muted)
        subscriber = subscriber.replace(topics=Topics(topics))
    return planner.plan(
        subscriber, slot, last_slot=last_slot, covered_until=covered_until, window=window,
        exclude=exclude,
    )  # fmt: skip


def envelope_sender(from_addr: str) -> str:
    """The bare address of a From header value ("Digest <d@x.org>" -> "d@x.org")."""
    return parseaddr(from_addr)[1] or from_addr


def plan_due(
    planner: Planner,
    subscribers: Sequence[Subscriber],
    now: dt.datetime,
    *,
    daemon: bool,
    write: bool = True,
    unfed: Collection[dt.date] = (),
    held: list[str] | None = None,
    on_planned: Callable[[PlannedDigest], None] | None = None,
) -> PlanReport:
    """Plan every digest that is due at `now`, PLAN_CHUNK subscribers at a time: read
    their state, match, render and write their digests (SAVE_EVERY to a transaction,
    with the slots they handle), then let go of them. Returns the counts;
    `on_planned` sees each planned digest (with its `digest_id` once written).

    `digest send` (daemon=False) takes each subscriber's latest slot at or before now that
    has not been handled, new subscribers included. The daemon starts a subscriber it has
    never seen with their next slot, and sends a missed slot only within `catch_up`.

    `unfed`: listing days the latest poll failed to fetch. A slot whose digest would
    cover one of them is neither planned nor closed: it stays due, and is planned once a
    poll fetches those days (the daemon: while still within `catch_up`; after that the
    next slot's digest covers them, from the watermark). Such subscribers' emails are
    appended to `held`.
    """
    report = PlanReport()
    for first in range(0, len(subscribers), PLAN_CHUNK):
        chunk = subscribers[first : first + PLAN_CHUNK]
        _plan_chunk(planner, chunk, now, daemon=daemon, write=write, unfed=unfed,
                    held=held, on_planned=on_planned, report=report)  # fmt: skip
    return report


def _plan_chunk(
    planner: Planner,
    subscribers: Sequence[Subscriber],
    now: dt.datetime,
    *,
    daemon: bool,
    write: bool,
    unfed: Collection[dt.date],
    held: list[str] | None,
    on_planned: Callable[[PlannedDigest], None] | None,
    report: PlanReport,
) -> None:
    """`plan_due` for one chunk of subscribers: three reads of their state (slots,
    preferences, and per window the papers they have), then matching and writing."""
    emails = [s.email for s in subscribers]
    with Session(planner.engine) as session:
        states = store.get_subscriber_states(session, emails)
    choices = recipients.recipients_of(planner.engine, emails)
    due: list[tuple[Subscriber, dt.datetime, dt.datetime | None, dt.date | None,
                    tuple[dt.date, dt.date]]] = []  # fmt: skip
    seen: list[str] = []  # subscribers met for the first time
    for subscriber in subscribers:
        state = states.get(subscriber.email)
        if state is None:
            seen.append(subscriber.email)
        last_slot = as_utc(state.last_slot) if state and state.last_slot else None
        not_before = None
        if daemon:
            not_before = as_utc(state.first_seen_at) if state else now
        slot = due_slot(
            subscriber.schedule,
            ZoneInfo(subscriber.timezone),
            now,
            last_slot=last_slot,
            not_before=not_before,
            catch_up=planner.config.daemon.catch_up if daemon else None,
        )
        if slot is None:
            continue
        covered_until = state.covered_until if state else None
        window = digest_days(subscriber, slot, last_slot, covered_until)
        if any(window[0] <= day <= window[1] for day in unfed):
            report.held += 1
            if held is not None:
                held.append(subscriber.email)
        else:
            due.append((subscriber, slot, last_slot, covered_until, window))
    del states
    by_window: dict[tuple[dt.date, dt.date], list[str]] = {}
    for subscriber, *_, window in due:
        by_window.setdefault(window, []).append(subscriber.email)
    taken = {window: planner.taken_by(window, group) for window, group in by_window.items()}
    del by_window
    # a new subscriber's first sight goes in the transaction of their digest (a crash
    # between batches must not record them seen, in daemon mode after their slot, without
    # it); the ones with nothing due go with the first batch
    new = set(seen)
    due_emails = {s.email for s, *_ in due}
    seen = [email for email in seen if email not in due_emails]
    del due_emails
    planned: list[PlannedDigest] = []

    def save() -> None:
        nonlocal planned, seen
        seen += [p.subscriber.email for p in planned if p.subscriber.email in new]
        done = planner.save(planned, now, seen=seen) if write else planned
        report.due += len(done)
        report.written += sum(p.digest_id is not None for p in done)
        report.fed += sum(p.digest_id is not None and p.subscriber.delivery == "feed"
                          for p in done)  # fmt: skip
        if on_planned is not None:
            for p in done:
                on_planned(p)
        planned, seen = [], []

    for subscriber, slot, last_slot, covered_until, window in due:
        exclude = taken[window].get(subscriber.email, set())
        planned.append(_plan_one(planner, subscriber, slot, last_slot, choices,
                                 covered_until=covered_until, window=window,
                                 exclude=exclude))  # fmt: skip
        if len(planned) >= SAVE_EVERY:
            save()
    if planned or (seen and write):
        save()
    planner.forget_chunk()


# --------------------------------------------------------------------------- cancel


def cancel_removed(config: Config, engine: Engine, now: dt.datetime) -> int:
    """Cancel the pending digests of everyone the file no longer lists: they are never
    sent (``cancelled``, kept for the record). Returns how many."""
    cancelled = outbox.cancel_pending_except(
        engine,
        {s.email for s in config.subscribers},
        f"the subscriber is no longer in {config.path}",
        now,
    )
    if cancelled:
        gone = count(cancelled, "pending digest")
        log.info("cancelled %s of people no longer in %s", gone, config.path)
    return cancelled
