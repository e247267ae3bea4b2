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
from typing import Any

from sqlalchemy import Table
from sqlmodel import Session, SQLModel, col, select

from digest.errors import StoreError
from digest.models import (
    DayRow,
    DeliveryRow,
    DigestRow,
    MetaRow,
    PollRow,
    SubscriberRow,
)
from digest.store import peek
from digest.store.engine import (
    begin_write,
    mask_url,
    session_url,
    to_db_time,
    upsert,
    wrap_db_errors,
)
from digest.store.peek import DIGEST_STATUSES as DIGEST_STATUSES  # re-exported: lives there now
from digest.store.peek import STATUS_WORDS as STATUS_WORDS  # as above
from digest.store.peek import StoreStats as StoreStats  # as above

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


def papers_taken(
    session: Session, paper_ids: Collection[str], subscribers: Collection[str] | None = None
) -> dict[str, set[str]]:
    """Of `paper_ids`, the ones each subscriber (each of `subscribers`, or everyone)
    already has or is about to get: delivered (a sent digest held them) or in a pending
    digest. One read for a planning run, or for a chunk of its subscribers.

    Pending digests are read first, deliveries second: on PostgreSQL (READ COMMITTED)
    each statement sees what was committed when it began, and another process marking a
    digest sent between the two reads moves its papers from "pending" to "delivered" in
    one commit, so read in this order they are always in one of the two (read the other
    way round they fell between, and a second digest with the same papers went out)."""
    wanted = set(paper_ids)
    taken: dict[str, set[str]] = {}
    groups: list[list[str] | None] = [None]
    if subscribers is not None:
        names = sorted(set(subscribers))
        groups = [names[start : start + 500] for start in range(0, len(names), 500)]
    with wrap_db_errors("reading the papers already delivered", session_url(session)):
        for group in groups:
            pending = select(DigestRow.subscriber, DigestRow.paper_ids_json).where(
                DigestRow.status == "pending"
            )
            if group is not None:
                pending = pending.where(col(DigestRow.subscriber).in_(group))
            for subscriber, paper_ids_json in session.exec(pending):
                taken.setdefault(subscriber, set()).update(
                    wanted.intersection(json.loads(paper_ids_json))
                )
        ids = sorted(wanted)
        for group in groups:
            for start in range(0, len(ids), 500):
                query = select(DeliveryRow.subscriber, DeliveryRow.paper_id).where(
                    col(DeliveryRow.paper_id).in_(ids[start : start + 500])
                )
                if group is not None:
                    query = query.where(col(DeliveryRow.subscriber).in_(group))
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


def session_reader(session: Session) -> peek.Reader:
    """The session's own DB-API connection, for the plain-SQL reads of `peek.py`."""
    conn = session.connection()
    return peek.Reader(conn.connection, conn.dialect.paramstyle, mask_url(session_url(session)))


def store_stats(session: Session) -> StoreStats:
    """The counts `digest status` shows (the same reads its quick path makes)."""
    return peek.store_stats(session_reader(session))


def health_problems(session: Session, now: dt.datetime) -> list[str]:
    """What `digest status --check` fails on (see `peek.health_problems`)."""
    return peek.health_problems(session_reader(session), now)
