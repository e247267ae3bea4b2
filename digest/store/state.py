"""Small state tables: day validators, the poll log, subscriber slots, meta, and status counts.

Owns: reads and writes of `days`, `polls`, `subscribers` and `meta`, the read
of `deliveries` that matching needs, and `store_stats` for `digest status`.
Does not own the outbox state machine (`outbox.py` and `claims.py` write `digests` and
`deliveries`).

Every function takes a Session. Reads leave the session as they found it; each
write commits the session before returning (one short transaction per call),
taking SQLite's write lock at BEGIN when it opens the transaction. A write of a row
that may not exist yet is one INSERT ... ON CONFLICT, never a read then an insert:
two processes (PostgreSQL) writing the same new key both succeed.

Datetimes go in as any aware value and come back as aware UTC.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func
from sqlmodel import Session, SQLModel, col, select

from digest.errors import StoreError
from digest.humanize import count
from digest.models import (
    DayRow,
    DeliveryRow,
    DigestRow,
    ListingRow,
    MetaRow,
    PaperRow,
    PollRow,
    SubscriberRow,
    as_utc,
)
from digest.store.engine import begin_write, session_url, to_db_time, upsert, wrap_db_errors

DIGEST_STATUSES = ("pending", "sent", "failed", "cancelled")
# "feed" (store/feeds.py: delivery = "feed", never mailed) is counted only where there are some
STATUS_WORDS = {"feed": "to feeds only (never mailed)"}
_DAYS: Table = SQLModel.metadata.tables["days"]
_SUBSCRIBERS: Table = SQLModel.metadata.tables["subscribers"]
_META: Table = SQLModel.metadata.tables["meta"]


def get_day(session: Session, day: dt.date) -> DayRow | None:
    """What the last fetch of `day` recorded (source, ETag, Last-Modified), if any."""
    with wrap_db_errors(f"reading the fetch state of {day}", session_url(session)):
        return session.get(DayRow, day)


def save_day(
    session: Session,
    day: dt.date,
    source: str,
    etag: str | None,
    last_modified: str | None,
    paper_count: int,
    now: dt.datetime,
) -> None:
    """Record a successful fetch of `day` and commit; call it after `upsert_listings`,
    so a crash in between refetches the day instead of trusting an ETag whose
    papers were never stored."""
    values = {"day": day, "source": source, "etag": etag, "last_modified": last_modified,
              "paper_count": paper_count, "fetched_at": to_db_time(now)}  # fmt: skip
    with wrap_db_errors(f"saving the fetch state of {day}", session_url(session)):
        begin_write(session)
        conn = session.connection()
        statement = upsert(conn.dialect.name, _DAYS, ["day"], [k for k in values if k != "day"])
        conn.execute(statement, values)
        session.commit()
        session.expire_all()  # a DayRow this session loaded before now shows the new values


def start_poll(session: Session, now: dt.datetime) -> int:
    """Log the start of a poll and commit; returns its id for `finish_poll`."""
    with wrap_db_errors("starting a poll log entry", session_url(session)):
        begin_write(session)
        row = PollRow(started_at=to_db_time(now))
        session.add(row)
        session.flush()
        poll_id = row.id
        session.commit()
    if poll_id is None:
        raise StoreError(f"the poll log of {session_url(session)} gave no id to a new poll")
    return poll_id


def finish_poll(
    session: Session,
    poll_id: int,
    *,
    now: dt.datetime,
    ok: bool,
    days: int = 0,
    new: int = 0,
    updated: int = 0,
    source: str | None = None,
    error: str | None = None,
) -> None:
    """Record a poll's outcome (days fetched, papers new/updated, source, error) and commit."""
    with wrap_db_errors(f"finishing poll {poll_id}", session_url(session)):
        begin_write(session)
        row = session.get(PollRow, poll_id)
        if row is None:
            raise StoreError(f"poll {poll_id} is not in the poll log of {session_url(session)}")
        row.finished_at = to_db_time(now)
        row.days, row.new, row.updated = days, new, updated
        row.source, row.ok, row.error = source, ok, error
        session.commit()


def last_poll(session: Session) -> PollRow | None:
    """The most recently started poll, finished or not."""
    with wrap_db_errors("reading the last poll", session_url(session)):
        query = select(PollRow).order_by(col(PollRow.started_at).desc(), col(PollRow.id).desc())
        return session.exec(query.limit(1)).first()


def delivered_ids(session: Session, subscriber: str) -> set[str]:
    """Ids of every paper already delivered to `subscriber` (a sent digest held it)."""
    with wrap_db_errors(f"reading the papers delivered to {subscriber}", session_url(session)):
        query = select(DeliveryRow.paper_id).where(DeliveryRow.subscriber == subscriber)
        return set(session.exec(query).all())


def papers_taken(session: Session, paper_ids: Collection[str]) -> dict[str, set[str]]:
    """Of `paper_ids`, the ones each subscriber already has or is about to get: delivered
    (a sent digest held them) or in a pending digest. One read for a whole planning run.

    Pending digests are read first, deliveries second: on PostgreSQL (READ COMMITTED)
    each statement sees what was committed when it began, and another process marking a
    digest sent between the two reads moves its papers from "pending" to "delivered" in
    one commit, so read in this order they are always in one of the two (read the other
    way round they fell between, and a second digest with the same papers went out)."""
    wanted = set(paper_ids)
    taken: dict[str, set[str]] = {}
    with wrap_db_errors("reading the papers already delivered", session_url(session)):
        pending = select(DigestRow.subscriber, DigestRow.paper_ids_json).where(
            DigestRow.status == "pending"
        )
        for subscriber, paper_ids_json in session.exec(pending):
            taken.setdefault(subscriber, set()).update(
                wanted.intersection(json.loads(paper_ids_json))
            )
        ids = sorted(wanted)
        for start in range(0, len(ids), 500):
            query = select(DeliveryRow.subscriber, DeliveryRow.paper_id).where(
                col(DeliveryRow.paper_id).in_(ids[start : start + 500])
            )
            for subscriber, paper_id in session.exec(query):
                taken.setdefault(subscriber, set()).add(paper_id)
    return taken


def get_subscriber_state(session: Session, email: str) -> SubscriberRow | None:
    with wrap_db_errors(f"reading the state of subscriber {email}", session_url(session)):
        return session.get(SubscriberRow, email)


def get_subscriber_states(session: Session, emails: Sequence[str]) -> dict[str, SubscriberRow]:
    """The saved state of each of `emails` that has one: one read for a planning run."""
    states: dict[str, SubscriberRow] = {}
    with wrap_db_errors("reading the subscribers' state", session_url(session)):
        for start in range(0, len(emails), 500):
            chunk = emails[start : start + 500]
            query = select(SubscriberRow).where(col(SubscriberRow.email).in_(chunk))
            states.update((row.email, row) for row in session.exec(query))
    return states


def save_subscriber_state(
    session: Session,
    email: str,
    *,
    first_seen_at: dt.datetime | None = None,
    last_slot: dt.datetime | None = None,
) -> None:
    """Set the given fields and commit; the first save of a subscriber must give
    `first_seen_at`."""
    given: dict[str, Any] = {}
    if first_seen_at is not None:
        given["first_seen_at"] = to_db_time(first_seen_at)
    if last_slot is not None:
        given["last_slot"] = to_db_time(last_slot)
    with wrap_db_errors(f"saving the state of subscriber {email}", session_url(session)):
        begin_write(session)
        conn = session.connection()
        if first_seen_at is not None:  # may be the first save: insert, or update what is given
            conn.execute(upsert(conn.dialect.name, _SUBSCRIBERS, ["email"], list(given)),
                         {"email": email, **given})  # fmt: skip
        else:
            table = _SUBSCRIBERS
            found = conn.execute(table.update().where(table.c.email == email).values(**given))
            if found.rowcount == 0:
                session.rollback()
                raise StoreError(f"subscriber {email} has no saved state yet: give first_seen_at")
        session.commit()
        session.expire_all()


def get_meta(session: Session, key: str) -> str | None:
    with wrap_db_errors(f"reading meta key {key!r}", session_url(session)):
        row = session.get(MetaRow, key)
        return None if row is None else row.value


def set_meta(session: Session, key: str, value: str) -> None:
    """Set `key` to `value` and commit."""
    with wrap_db_errors(f"saving meta key {key!r}", session_url(session)):
        begin_write(session)
        conn = session.connection()
        conn.execute(upsert(conn.dialect.name, _META, ["key"], ["value"]),
                     {"key": key, "value": value})  # fmt: skip
        session.commit()
        session.expire_all()


@dataclass(frozen=True)
class StoreStats:
    """What `digest status` shows about the database."""

    papers: int
    listings: int
    days_fetched: int  # days with a recorded fetch (the `days` table)
    first_day: dt.date | None  # earliest listing day stored
    last_day: dt.date | None  # latest listing day stored
    digests: dict[str, int]  # by status; every one of DIGEST_STATUSES present
    last_poll: PollRow | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: dates and times as ISO strings (times in UTC)."""
        poll = self.last_poll
        return {
            "papers": self.papers,
            "listings": self.listings,
            "days_fetched": self.days_fetched,
            "first_day": _iso(self.first_day),
            "last_day": _iso(self.last_day),
            "digests": dict(self.digests),
            "last_poll": None
            if poll is None
            else {
                "started_at": _iso(as_utc(poll.started_at)),
                "finished_at": _iso(as_utc(poll.finished_at) if poll.finished_at else None),
                "ok": poll.ok,
                "source": poll.source,
                "days": poll.days,
                "new": poll.new,
                "updated": poll.updated,
                "error": poll.error,
            },
        }

    def lines(self) -> list[str]:
        """The human summary `digest status` prints, one fact per line."""
        span = f", {self.first_day} to {self.last_day}" if self.first_day else ""
        counts = ", ".join(
            f"{n} {STATUS_WORDS.get(status, status)}" for status, n in self.digests.items()
        )
        return [
            _describe_poll(self.last_poll),
            f"papers: {self.papers} stored, {self.listings} listings, "
            f"{count(self.days_fetched, 'day')} fetched{span}",
            f"digests: {counts}",
        ]


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _describe_poll(poll: PollRow | None) -> str:
    if poll is None:
        return "last poll: never"
    started = f"{as_utc(poll.started_at):%Y-%m-%d %H:%M} UTC"
    if poll.finished_at is None:
        return f"last poll: started {started}, not finished"
    error = poll.error or "unknown error"
    if len(error) > 300:  # a poll of many failing days: the first of them is enough here
        error = error[:300] + "..."
    outcome = "ok" if poll.ok else f"failed: {error}"
    return (
        f"last poll: {started}, {outcome} ({poll.source or 'no source'}, "
        f"{count(poll.days, 'day')}, {poll.new} new, {poll.updated} updated)"
    )


def store_stats(session: Session) -> StoreStats:
    with wrap_db_errors("reading the store statistics", session_url(session)):
        papers = session.exec(select(func.count()).select_from(PaperRow)).one()
        listings, first_day, last_day = session.exec(
            select(func.count(), func.min(ListingRow.listed_on), func.max(ListingRow.listed_on))
        ).one()
        days = session.exec(select(func.count()).select_from(DayRow)).one()
        by_status = session.exec(
            select(DigestRow.status, func.count()).group_by(col(DigestRow.status))
        ).all()
    digests = dict.fromkeys(DIGEST_STATUSES, 0)
    digests.update({status: count for status, count in by_status})
    return StoreStats(
        papers=papers,
        listings=listings,
        days_fetched=days,
        first_day=first_day,
        last_day=last_day,
        digests=digests,
        last_poll=last_poll(session),
    )


MAIL_TROUBLE_WINDOW = dt.timedelta(days=1)  # a digest refused longer ago is history


def health_problems(session: Session, now: dt.datetime) -> list[str]:
    """What `digest status --check` fails on, one phrase each: the last poll failed (or
    none ever finished), digests waiting after failed attempts, digests refused
    permanently within the last day. Empty when all is well."""
    problems = []
    poll = last_poll(session)
    if poll is None:
        problems.append("no poll has run yet")
    elif poll.finished_at is not None and not poll.ok:
        error = (poll.error or "unknown error")[:200]
        started = f"{as_utc(poll.started_at):%Y-%m-%d %H:%M} UTC"
        problems.append(f"the last poll ({started}) failed: {error}")
    with wrap_db_errors("reading the outbox health", session_url(session)):
        retrying = session.exec(
            select(func.count(), func.max(DigestRow.last_reply)).where(
                DigestRow.status == "pending", DigestRow.attempts > 0
            )
        ).one()
        refused = session.exec(
            select(func.count()).where(
                DigestRow.status == "failed",
                DigestRow.created_at >= to_db_time(now - MAIL_TROUBLE_WINDOW),
            )
        ).one()
    if retrying[0]:
        reply = f" (last reply: {retrying[1][:200]})" if retrying[1] else ""
        problems.append(f"{count(retrying[0], 'digest')} waiting after failed attempts{reply}")
    if refused:
        problems.append(f"{count(refused, 'digest')} refused permanently in the last day")
    return problems
